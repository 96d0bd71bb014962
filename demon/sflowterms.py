"""sFlow-RT vocabulary for validating policies: flow key names and a light filter check.

Not a full sFlow-RT filter parser: it checks the shape (``key op value`` terms
joined by ``&``/``|``, balanced parentheses) and that every key exists, which
catches the typos that would otherwise only show as an HTTP 400 from the engine
at start-up.
"""

from __future__ import annotations

import difflib
import re

KNOWN_KEYS: frozenset[str] = frozenset("""
agent inputifindex outputifindex direction stack bytes frames stripped ip_offset
vlansource vlandestination prioritysource prioritydestination ipnexthoprouter
ipsourcemaskbits ipdestinationmaskbits bgpnexthop bgpas bgpsourceas bgpsourcepeeras
bgpdestinationas bgpdestinationaspath bgpcommunities bgplocalpref
queueindex queuedepth transitdelay reason
macsource macdestination ethernetprotocol vlan priority isbroadcast ismulticast isunicast
ipsource ipdestination ipprotocol iptos ipdscp ipdscpname ipbytes ipttl
ip6source ip6destination ip6nexthdr ip6tos ip6dscpname ip6fragm ip6fragoffset
tcpsourceport tcpdestinationport tcpflags udpsourceport udpdestinationport
icmptype icmpcode icmp6type icmpseqno icmpunreachablenet icmpunreachablehost
icmpunreachableprotocol icmpunreachableport
vxlanvni genevevni grevsid dnsqname dnsqtypename dnsqr arpoperation arpipsender
requests duration tcprtt
""".split())

# key function → positions (after the function name) that hold key names.
KEY_FUNCTIONS: dict[str, tuple[int, ...]] = {
    "group": (0,), "country": (0,), "asn": (0,), "oui": (0,), "host": (0,),
    "prefix": (0,), "suffix": (0,), "mask": (0,), "null": (0,), "range": (0,),
    "map": (0,), "eq": (0, 1), "or": (), "link": (0,), "node": (0,),
}

_SUFFIX = re.compile(r"\.\d+$")
#: Bounds on a filter (a policy file is operator input: a filter nested a thousand
#: levels deep must be one error line, not a RecursionError).
MAX_FILTER_LENGTH = 4096
MAX_FILTER_DEPTH = 32
_OPS = ("!=", "!~", "=", "~")


class TermError(ValueError):
    """An sFlow-RT key or filter that cannot be right."""


def check_key_name(key: str) -> None:
    """Raise TermError unless ``key`` is a known flow key or key function over known keys."""
    key = key.strip()
    if not key:
        raise TermError("empty key")
    if ":" in key:
        func, *args = key.split(":")
        if func not in KEY_FUNCTIONS:
            raise TermError(f"unknown key function {func!r} in {key!r}")
        positions = range(len(args)) if func == "or" else KEY_FUNCTIONS[func]
        if not args:
            raise TermError(f"key function {key!r} has no arguments")
        for pos in positions:
            if pos >= len(args):
                raise TermError(f"key function {key!r} misses an argument")
            check_key_name(args[pos].strip("[]"))
        return
    base = _SUFFIX.sub("", key)
    if base not in KNOWN_KEYS:
        close = difflib.get_close_matches(base, KNOWN_KEYS, n=1)
        hint = f" (did you mean {close[0]}?)" if close else ""
        raise TermError(f"{key!r} is not an sFlow-RT flow key{hint}")


def _split_top(text: str) -> list[str]:
    """Split on top-level ``&``/``|`` (outside parentheses)."""
    parts, depth, start = [], 0, 0
    for i, ch in enumerate(text):
        if ch == "(":
            depth += 1
        elif ch == ")":
            depth -= 1
            if depth < 0:
                raise TermError(f"unbalanced ')' at position {i + 1}")
        elif ch in "&|" and depth == 0:
            parts.append(text[start:i])
            start = i + 1
    if depth != 0:
        raise TermError("unbalanced '(': missing ')'")
    parts.append(text[start:])
    return parts


def _depth(text: str) -> int:
    depth = deepest = 0
    for ch in text:
        if ch == "(":
            depth += 1
            deepest = max(deepest, depth)
        elif ch == ")":
            depth -= 1
    return deepest


def check_filter(text: str) -> None:
    """Raise TermError when ``text`` is not a plausible sFlow-RT filter expression."""
    if len(text) > MAX_FILTER_LENGTH:
        raise TermError(f"{len(text)} characters long (at most {MAX_FILTER_LENGTH})")
    deepest = _depth(text)
    if deepest > MAX_FILTER_DEPTH:
        raise TermError(f"parentheses nest {deepest} deep (at most {MAX_FILTER_DEPTH})")
    _check_terms(text)


def _check_terms(text: str) -> None:
    if not text.strip():
        raise TermError("empty filter")
    for part in _split_top(text):
        term = part.strip()
        if not term:
            raise TermError(f"empty term in {text!r} (a dangling '&' or '|')")
        if term.startswith("(") and term.endswith(")"):
            _check_terms(term[1:-1])
            continue
        positions = [(term.find(op), op) for op in _OPS if term.find(op) > 0]
        if not positions:
            raise TermError(f"term {term!r} has no operator (=, !=, ~, !~)")
        index, op = min(positions, key=lambda p: (p[0], -len(p[1])))
        lhs, rhs = term[:index].strip(), term[index + len(op):].strip()
        if not rhs:
            raise TermError(f"term {term!r} has no value after {op!r}")
        check_key_name(lhs)
