"""The sFlow-RT flow-key expression and filter languages, compiled to closures.

Key expressions (used in a flow's ``keys`` and on the left of a filter
comparison) are a key name (``ipsource``) or a key function, with arguments
separated by ``:`` and nested expressions written in ``[...]``:

``or:k1:k2[:...]``     first argument that is present
``null:key:value``     the key, or ``value`` when it is missing
``mask:key:bits``      IPv4/IPv6 address masked to its network address
``range:key:lo:hi``    ``true`` / ``false``: lo <= numeric value <= hi
``eq:k1:k2``           ``true`` / ``false``: both present and equal
``prefix:key:delim:n`` the first ``n`` ``delim``-separated parts of the value
``suffix:key:delim:n`` the last ``n`` parts

Every compiled expression maps a sample's key dict (``sflow.keys.sample_keys``)
to the value as text, or None when it is missing.

Filters::

    expr       := term { ('&' | '|') term }      (& binds tighter than |)
    term       := '(' expr ')' | comparison
    comparison := keyexpr op value { ',' value }
    op         := '=' | '!=' | '~' | '!~'        (~ is a full regular-expression match)

``=`` with a list is "any of", ``!=`` "none of". A comparison whose key is
missing from the sample is false for ``=``/``~`` and true for ``!=``/``!~``.
Errors are ``ExprError`` whose message names the position (0-based character
offset): ``unexpected ')' at 12``.
"""

from __future__ import annotations

import contextlib
import contextvars
import ipaddress
import re
from typing import Any, Callable, Iterable, Iterator, Mapping

__all__ = ["ExprError", "KeyFn", "Predicate", "compile_key", "compile_filter", "as_text",
           "register_key_function", "unregister_key_function", "implicit_reads",
           "KeyFunctionBuilder", "MAX_DEPTH", "compile_regex", "recording_key_names"]

KeyFn = Callable[[Mapping[str, Any]], "str | None"]
Predicate = Callable[[Mapping[str, Any]], bool]
#: builds a key function from its arguments: (args as (text, offset) pairs, offset of the
#: function name, compile_key) -> KeyFn; raises ExprError for bad arguments
KeyFunctionBuilder = Callable[[list[tuple[str, int]], int, Callable[..., KeyFn]], KeyFn]

_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_.]*\Z")
_UNSUPPORTED = {"group", "country", "asn", "oui", "host", "link", "node", "map",
                "if", "dns", "bgp"}
#: nesting of parentheses in a filter and of [...] in key expressions
MAX_DEPTH = 32
_PLUGINS: dict[str, tuple[KeyFunctionBuilder, frozenset[str]]] = {}


def register_key_function(name: str, build: KeyFunctionBuilder,
                          reads: Iterable[str] = ()) -> None:
    """Add a key function ``name:arg:...`` (``group:``, ``map:``, ``link:``...).

    ``build(args, offset, compile_key)`` returns the function, which maps a
    sample's keys to text or None; key-expression arguments are compiled with the
    ``compile_key`` it is given. ``reads``: the sample keys it reads beyond the key
    expressions in its arguments (``link:`` reads ``agent``), so the engine knows what
    the value depends on: flow keys are memoised per distinct header (and, when a
    context key such as ``agent`` or ``inputifindex`` is read, per context). When the
    data it consults changes, call ``Engine.key_functions_changed()``.
    """
    _PLUGINS[name] = (build, frozenset(reads))


def unregister_key_function(name: str) -> None:
    _PLUGINS.pop(name, None)


def implicit_reads(text: str) -> set[str]:
    """Keys the registered key functions named in ``text`` read implicitly."""
    names: set[str] = set()
    for fname, (_, reads) in _PLUGINS.items():
        if reads and f"{fname}:" in text:
            names |= reads
    return names


class ExprError(ValueError):
    """A malformed key expression or filter; the message says what and where."""


def as_text(value: Any) -> str:
    """A key value as sFlow-RT prints it (booleans lower-case)."""
    if isinstance(value, str):
        return value
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


# --- key expressions ----------------------------------------------------------------

def _split_args(text: str, base: int) -> list[tuple[str, int]]:
    """Split on ':' outside brackets; returns (part, offset) pairs."""
    parts: list[tuple[str, int]] = []
    depth = 0
    start = 0
    for i, ch in enumerate(text):
        if ch == "[":
            depth += 1
            if depth > MAX_DEPTH:
                raise ExprError(f"key expression nested deeper than {MAX_DEPTH} at {base + i}")
        elif ch == "]":
            depth -= 1
            if depth < 0:
                raise ExprError(f"unexpected ']' at {base + i}")
        elif ch == ":" and depth == 0:
            parts.append((text[start:i], base + start))
            start = i + 1
    if depth:
        raise ExprError(f"missing ']' at {base + len(text)}")
    parts.append((text[start:], base + start))
    return parts


_RECORDING: contextvars.ContextVar[set[str] | None] = contextvars.ContextVar(
    "sflow_key_names", default=None)


@contextlib.contextmanager
def recording_key_names() -> Iterator[set[str]]:
    """Collect the key names that expressions compiled within this block read.

    The engine takes any well-formed name (a key a sample lacks is missing); a
    validator that knows the vocabulary (the daemon's policy loader) checks the
    names this collects, so that it needs no parser of its own.
    """
    names: set[str] = set()
    token = _RECORDING.set(names)
    try:
        yield names
    finally:
        _RECORDING.reset(token)


def _plain(name: str) -> KeyFn:
    seen = _RECORDING.get()
    if seen is not None:
        seen.add(name)

    def get(keys: Mapping[str, Any]) -> str | None:
        value = keys.get(name)
        return None if value is None else as_text(value)
    return get


def compile_key(text: str, base: int = 0) -> KeyFn:
    """Compile one key expression (``ipsource``, ``or:tcpsourceport:udpsourceport``)."""
    text = text.strip()
    if text.startswith("[") and text.endswith("]"):
        return compile_key(text[1:-1], base + 1)
    parts = _split_args(text, base)
    if len(parts) == 1:
        if not _NAME.match(text):
            raise ExprError(f"bad key name {text!r} at {base}")
        return _plain(text)
    func, _ = parts[0]
    args = parts[1:]
    if func == "or":
        if len(args) < 2:
            raise ExprError(f"or: needs two or more keys at {base}")
        fns = [compile_key(a, off) for a, off in args]

        def first(keys: Mapping[str, Any]) -> str | None:
            for fn in fns:
                value = fn(keys)
                if value is not None:
                    return value
            return None
        return first
    if func == "null":
        if len(args) != 2:
            raise ExprError(f"null: takes a key and a value at {base}")
        fn = compile_key(*args[0])
        default = args[1][0]
        return lambda keys: v if (v := fn(keys)) is not None else default
    if func == "mask":
        if len(args) != 2 or not args[1][0].isdigit():
            raise ExprError(f"mask: takes a key and a prefix length at {base}")
        fn = compile_key(*args[0])
        bits = int(args[1][0])

        def mask(keys: Mapping[str, Any]) -> str | None:
            value = fn(keys)
            if value is None:
                return None
            try:
                return str(ipaddress.ip_network(f"{value}/{bits}", strict=False).network_address)
            except ValueError:
                return None
        return mask
    if func == "range":
        if len(args) != 3:
            raise ExprError(f"range: takes a key, a low and a high bound at {base}")
        fn = compile_key(*args[0])
        try:
            low, high = float(args[1][0]), float(args[2][0])
        except ValueError:
            raise ExprError(f"range: bounds must be numbers at {args[1][1]}") from None

        def in_range(keys: Mapping[str, Any]) -> str | None:
            value = fn(keys)
            if value is None:
                return None
            try:
                return "true" if low <= float(value) <= high else "false"
            except ValueError:
                return "false"
        return in_range
    if func == "eq":
        if len(args) != 2:
            raise ExprError(f"eq: takes two keys at {base}")
        f1, f2 = compile_key(*args[0]), compile_key(*args[1])

        def equal(keys: Mapping[str, Any]) -> str | None:
            a, b = f1(keys), f2(keys)
            if a is None or b is None:
                return None
            return "true" if a == b else "false"
        return equal
    if func in ("prefix", "suffix"):
        if len(args) != 3 or not args[2][0].isdigit():
            raise ExprError(f"{func}: takes a key, a delimiter and a count at {base}")
        fn = compile_key(*args[0])
        delim, count = args[1][0], int(args[2][0])
        if not delim:
            raise ExprError(f"{func}: empty delimiter at {args[1][1]}")
        head = func == "prefix"

        def affix(keys: Mapping[str, Any]) -> str | None:
            value = fn(keys)
            if value is None:
                return None
            pieces = value.split(delim)
            return delim.join(pieces[:count] if head else pieces[-count:] if count else [])
        return affix
    plugin = _PLUGINS.get(func)
    if plugin is not None:
        return plugin[0](args, base, compile_key)
    if func in _UNSUPPORTED:
        raise ExprError(f"key function '{func}:' is not supported by the embedded engine at {base}")
    raise ExprError(f"unknown key function '{func}:' at {base}")


# --- filters -------------------------------------------------------------------------

_OPS = ("!=", "!~", "=", "~")


class _Parser:
    def __init__(self, text: str) -> None:
        self.text = text
        self.pos = 0
        self.depth = 0

    def error(self, what: str) -> ExprError:
        """``what`` at the current position; empty ``what``: the character found there."""
        if what:
            return ExprError(f"{what} at {self.pos}")
        if self.pos >= len(self.text):
            return ExprError(f"unexpected end at {self.pos}")
        return ExprError(f"unexpected {self.text[self.pos]!r} at {self.pos}")

    def skip_space(self) -> None:
        while self.pos < len(self.text) and self.text[self.pos] in " \t":
            self.pos += 1

    def peek(self) -> str:
        self.skip_space()
        return self.text[self.pos] if self.pos < len(self.text) else ""

    def parse(self) -> Predicate:
        pred = self.parse_or()
        if self.peek():
            raise self.error("")
        return pred

    def parse_or(self) -> Predicate:
        terms = [self.parse_and()]
        while self.peek() == "|":
            self.pos += 1
            terms.append(self.parse_and())
        if len(terms) == 1:
            return terms[0]
        return lambda keys: any(t(keys) for t in terms)

    def parse_and(self) -> Predicate:
        terms = [self.parse_term()]
        while self.peek() == "&":
            self.pos += 1
            terms.append(self.parse_term())
        if len(terms) == 1:
            return terms[0]
        return lambda keys: all(t(keys) for t in terms)

    def parse_term(self) -> Predicate:
        ch = self.peek()
        if ch == "(":
            self.depth += 1
            if self.depth > MAX_DEPTH:
                raise self.error(f"parentheses nested deeper than {MAX_DEPTH}")
            self.pos += 1
            pred = self.parse_or()
            self.depth -= 1
            if self.peek() != ")":
                raise self.error("missing ')'")
            self.pos += 1
            return pred
        if ch in ("", ")", "&", "|", ","):
            raise self.error("expected a comparison" if not ch else "")
        return self.parse_comparison()

    def parse_comparison(self) -> Predicate:
        start = self.pos
        depth = 0
        while self.pos < len(self.text):
            ch = self.text[self.pos]
            if ch == "[":
                depth += 1
            elif ch == "]":
                depth -= 1
            elif depth == 0 and (ch in "=~&|()," or self.text.startswith("!=", self.pos)
                                 or self.text.startswith("!~", self.pos)):
                break
            self.pos += 1
        lhs = self.text[start:self.pos].strip()
        op = next((o for o in _OPS if self.text.startswith(o, self.pos)), None)
        if op is None:
            raise self.error("expected = != ~ or !~")
        if not lhs:
            raise ExprError(f"missing key before {op!r} at {self.pos}")
        key = compile_key(lhs, start)
        self.pos += len(op)
        if op in ("~", "!~"):
            return self.regex(key, op)
        values = self.values()
        if op == "=":
            if len(values) == 1:
                only = values[0]
                return lambda keys: key(keys) == only
            wanted = frozenset(values)
            return lambda keys: key(keys) in wanted
        unwanted = frozenset(values)

        def not_in(keys: Mapping[str, Any]) -> bool:
            value = key(keys)
            return value is None or value not in unwanted
        return not_in

    def values(self) -> list[str]:
        values = []
        while True:
            start = self.pos
            while self.pos < len(self.text) and self.text[self.pos] not in "&|(),":
                self.pos += 1
            value = self.text[start:self.pos].strip()
            if not value:
                raise self.error("missing value")
            values.append(value)
            if self.pos < len(self.text) and self.text[self.pos] == ",":
                self.pos += 1
                continue
            return values

    def regex(self, key: KeyFn, op: str) -> Predicate:
        # A regex may hold '|' and '(...)': it runs to the next '&' or '|' outside
        # its own parentheses, or to a ')' that closes an enclosing group.
        start = self.pos
        depth = 0
        while self.pos < len(self.text):
            ch = self.text[self.pos]
            if ch == "\\":
                self.pos += 2
                continue
            if ch == "(":
                depth += 1
            elif ch == ")":
                if depth == 0:
                    break
                depth -= 1
            elif ch in "&|" and depth == 0:
                break
            self.pos += 1
        pattern = self.text[start:self.pos].strip()
        if not pattern:
            raise self.error("missing regular expression")
        match = compile_regex(pattern, start)
        if op == "~":
            return lambda keys: (v := key(keys)) is not None and match(v) is not None
        return lambda keys: (v := key(keys)) is None or match(v) is None


def compile_regex(pattern: str, at: int = 0) -> Callable[[str], Any]:
    """A full-match function of ``pattern`` that runs in time linear in its input.

    RE2 (``google-re2``): no backtracking, so no pattern can stall ingest
    (``macsource~((.*)*)*Z`` took Python's ``re`` 5 s per sample); its syntax is
    Python's less backreferences and lookaround, which are refused here with the
    reason. Compilation memory is bounded too. Without the package (it is a
    dependency; a broken install) Python's ``re`` is used and a warning logged.
    """
    if _re2 is None:
        _warn_no_re2()
        try:
            return re.compile(pattern).fullmatch
        except re.error as exc:
            raise ExprError(f"bad regular expression at {at}: {exc}") from None
    try:
        return _re2.compile(pattern, _RE2_OPTIONS).fullmatch
    except Exception as exc:  # noqa: BLE001 - re2 raises its own error type (and bytes)
        reason = exc.args[0] if exc.args else exc
        if isinstance(reason, bytes):
            reason = reason.decode("utf-8", "replace")
        raise ExprError(f"bad regular expression at {at}: {reason} "
                        "(RE2 syntax: no backreferences or lookaround)") from None


try:
    import re2 as _re2

    _RE2_OPTIONS = _re2.Options()
    _RE2_OPTIONS.log_errors = False
    _RE2_OPTIONS.max_mem = 1 << 20  # per pattern
except ImportError:  # pragma: no cover - google-re2 is a dependency
    _re2 = None  # type: ignore[assignment]
    _RE2_OPTIONS = None
_warned: list[bool] = []


def _warn_no_re2() -> None:
    if not _warned:
        _warned.append(True)
        import logging
        logging.getLogger(__name__).warning(
            "google-re2 is not installed: filter regular expressions use Python's re, "
            "whose worst case is exponential")


def compile_filter(text: str) -> Predicate:
    """Compile a filter expression into a predicate over a sample's key dict."""
    if not text.strip():
        raise ExprError("empty filter at 0")
    return _Parser(text).parse()
