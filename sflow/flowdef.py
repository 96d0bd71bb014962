"""Flow and threshold definitions: parse, validate, fill defaults, compile.

The JSON bodies are sFlow-RT's (``PUT /flow/{name}/json``,
``PUT /threshold/{name}/json``). ``to_json()`` echoes the stored definition
with every default filled in, as sFlow-RT does (InMon's clients read ``fs``
from it even when they never set it). Errors are ``DefinitionError`` whose
message starts with the offending field: ``filter: unexpected ')' at 12``.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping

from sflow.filterexpr import ExprError, KeyFn, Predicate, as_text, compile_filter, compile_key

__all__ = ["DefinitionError", "FlowDef", "ThresholdDef", "parse_flow", "parse_threshold",
           "check_name", "T_DEFAULT", "T_MIN", "T_MAX", "N_DEFAULT", "N_MIN", "N_MAX",
           "THRESHOLD_TIMEOUT_DEFAULT"]

T_DEFAULT, T_MIN, T_MAX = 2.0, 0.2, 600.0
N_DEFAULT, N_MIN, N_MAX = 5, 5, 20
#: sFlow-RT does not document its default; 2 s is what InMon's recipes set.
THRESHOLD_TIMEOUT_DEFAULT = 2.0

_NAME = re.compile(r"[A-Za-z0-9_.-]{1,100}\Z")

#: Size limits of a definition (issue 14 #7: a 100 kB ``fs`` cost ~100 kB per
#: tracked flow). sFlow-RT documents none beyond its clamps of ``t`` and ``n``;
#: these are far above what its published recipes use.
MAX_KEYS_LENGTH = 1000     # the ``keys`` text
MAX_KEYS = 32              # keys in one definition
MAX_FILTER_LENGTH = 2000   # the ``filter`` text (nesting: filterexpr.MAX_DEPTH)
MAX_FS_LENGTH = 16         # the flow-key separator
MAX_VALUE_LENGTH = 100     # the ``value`` name
MAX_METRIC_LENGTH = 100    # a threshold's ``metric``
MAX_FILTER_ATTRIBUTES = 16  # a threshold filter's attributes ...
MAX_FILTER_VALUES = 100     # ... values per attribute ...
MAX_FILTER_VALUE_LENGTH = 255  # ... and characters per value
_PLAIN_KEY = re.compile(r"[A-Za-z_][A-Za-z0-9_.]*\Z")
#: value name -> (key in the sample dict, multiplier)
_VALUES = {"bytes": ("bytes", 1.0), "frames": ("frames", 1.0),
           "bps": ("bytes", 8.0), "fps": ("frames", 1.0)}
_FLOW_ATTRS = {"keys", "value", "filter", "t", "n", "fs", "log", "flowStart",
               "activeTimeout", "dropped", "values", "ipfixCollectors", "aggMode"}
_THRESHOLD_ATTRS = {"metric", "value", "byFlow", "timeout", "filter"}

ValueFn = Callable[[Mapping[str, Any]], "float | None"]


class DefinitionError(ValueError):
    """A flow or threshold definition the engine refuses; the message names the field."""


def check_name(name: str, what: str) -> str:
    if not _NAME.match(name):
        raise DefinitionError(f"name: {what} name {name!r} must be 1-100 of A-Z a-z 0-9 _ . -")
    return name


def _number(body: Mapping[str, Any], name: str, default: float) -> float:
    value = body.get(name, default)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise DefinitionError(f"{name}: expected a number, got {value!r}")
    try:
        number = float(value)
    except ValueError:
        raise DefinitionError(f"{name}: expected a number, got {value!r}") from None
    if not math.isfinite(number):
        raise DefinitionError(f"{name}: expected a finite number, got {value!r}")
    return number


def _bool(body: Mapping[str, Any], name: str) -> bool:
    value = body.get(name, False)
    if value in (None, False, "false", "no"):
        return False
    if value in (True, "true", "yes"):
        return True
    raise DefinitionError(f"{name}: expected true or false, got {value!r}")


def _unknown(body: Mapping[str, Any], allowed: set[str], what: str) -> None:
    extra = sorted(set(body) - allowed)
    if extra:
        raise DefinitionError(f"{extra[0]}: unknown {what} attribute "
                              f"(known: {', '.join(sorted(allowed))})")


@dataclass(frozen=True)
class FlowDef:
    """A validated flow definition plus its compiled key, value and filter functions."""

    name: str
    keys: tuple[str, ...]
    value: str
    filter: str | None
    t: float
    n: int
    fs: str
    key_fns: tuple[KeyFn, ...] = field(repr=False, compare=False)
    value_fn: ValueFn = field(repr=False, compare=False)
    predicate: Predicate | None = field(repr=False, compare=False)
    #: the key names when every key is a plain name (no key function): a faster join
    plain_keys: tuple[str, ...] | None = field(default=None, repr=False, compare=False)
    #: the sample key ``value`` reads and its multiplier (bps: bytes x 8), for the fast path
    value_key: str = field(default="bytes", repr=False, compare=False)
    value_factor: float = field(default=1.0, repr=False, compare=False)
    #: the flow log (``/flows/json``, sflow.flowlog): write this definition's flows
    log: bool = False
    flow_start: bool = False
    active_timeout: float = 60.0

    def to_json(self) -> dict[str, Any]:
        active = int(self.active_timeout) if float(self.active_timeout).is_integer() \
            else self.active_timeout
        return {"keys": ",".join(self.keys), "value": self.value, "filter": self.filter,
                "t": self.t, "n": self.n, "fs": self.fs, "log": self.log,
                "flowStart": self.flow_start, "activeTimeout": active, "dropped": False}

    def flow_key(self, keys: Mapping[str, Any]) -> str | None:
        """The sample's flow key (key values joined with ``fs``), None if a key is missing."""
        plain = self.plain_keys
        if plain is not None:  # fast path: plain key names, string values (sflow.keys)
            try:
                return self.fs.join([keys[name] for name in plain])
            except KeyError:
                return None
            except TypeError:
                pass  # a non-string value: format it below
        parts = []
        for fn in self.key_fns:
            part = fn(keys)
            if part is None:
                return None
            parts.append(part)
        return self.fs.join(parts)


def _split_keys(text: str) -> list[tuple[str, int]]:
    """Split a ``keys`` string on ',' outside brackets; (key, offset) pairs."""
    out: list[tuple[str, int]] = []
    depth = start = 0
    for i, ch in enumerate(text):
        if ch == "[":
            depth += 1
        elif ch == "]":
            depth -= 1
        elif ch == "," and depth == 0:
            out.append((text[start:i], start))
            start = i + 1
    out.append((text[start:], start))
    return out


def _value_source(spec: str) -> tuple[str, float]:
    return _VALUES.get(spec, (spec, 1.0))


def _value_fn(spec: str) -> ValueFn:
    if spec in _VALUES:
        key, factor = _VALUES[spec]
    else:
        if ":" in spec:
            raise DefinitionError(f"value: {spec!r} is not supported by the embedded engine "
                                  "(use bytes, frames, bps, fps or a numeric key)")
        if not re.fullmatch(r"[a-z][a-z0-9_.]*", spec):
            raise DefinitionError(f"value: bad value name {spec!r}")
        key, factor = spec, 1.0

    def value(keys: Mapping[str, Any]) -> float | None:
        raw = keys.get(key)
        if raw is None or isinstance(raw, bool):
            return None
        try:
            return float(raw) * factor
        except (TypeError, ValueError):
            return None
    return value


def parse_flow(name: str, body: Any) -> FlowDef:
    """Validate a ``PUT /flow/{name}/json`` body."""
    check_name(name, "flow")
    if not isinstance(body, dict):
        raise DefinitionError("body: expected a JSON object")
    _unknown(body, _FLOW_ATTRS, "flow")
    keys_raw = body.get("keys", "")
    if keys_raw is None:
        keys_raw = ""
    if isinstance(keys_raw, list):
        if not all(isinstance(k, str) for k in keys_raw):
            raise DefinitionError("keys: expected a list of strings")
        keys_raw = ",".join(keys_raw)
    if not isinstance(keys_raw, str):
        raise DefinitionError(f"keys: expected a string, got {keys_raw!r}")
    if len(keys_raw) > MAX_KEYS_LENGTH:
        raise DefinitionError(f"keys: longer than {MAX_KEYS_LENGTH} characters")
    keys: list[str] = []
    key_fns: list[KeyFn] = []
    if keys_raw.strip():
        for text, offset in _split_keys(keys_raw):
            if not text.strip():
                raise DefinitionError(f"keys: empty key at {offset}")
            try:
                key_fns.append(compile_key(text, offset))
            except ExprError as exc:
                raise DefinitionError(f"keys: {exc}") from None
            keys.append(text.strip())
            if len(keys) > MAX_KEYS:
                raise DefinitionError(f"keys: more than {MAX_KEYS} keys")
    value = body.get("value", "bytes")
    if not isinstance(value, str) or not value:
        raise DefinitionError(f"value: expected a value name such as bytes, got {value!r}")
    if len(value) > MAX_VALUE_LENGTH:
        raise DefinitionError(f"value: longer than {MAX_VALUE_LENGTH} characters")
    value_fn = _value_fn(value)
    filt = body.get("filter")
    predicate = None
    if filt is not None and filt != "":
        if not isinstance(filt, str):
            raise DefinitionError(f"filter: expected a string, got {filt!r}")
        if len(filt) > MAX_FILTER_LENGTH:
            raise DefinitionError(f"filter: longer than {MAX_FILTER_LENGTH} characters")
        try:
            predicate = compile_filter(filt)
        except ExprError as exc:
            raise DefinitionError(f"filter: {exc}") from None
    else:
        filt = None
    t = min(max(_number(body, "t", T_DEFAULT), T_MIN), T_MAX)
    n = int(min(max(_number(body, "n", N_DEFAULT), N_MIN), N_MAX))
    fs = body.get("fs", ",")
    if not isinstance(fs, str) or not fs:
        raise DefinitionError(f"fs: expected a non-empty string, got {fs!r}")
    if len(fs) > MAX_FS_LENGTH:
        raise DefinitionError(f"fs: longer than {MAX_FS_LENGTH} characters")
    if _bool(body, "dropped"):
        raise DefinitionError("dropped: not supported by the embedded engine "
                              "(no drop-notification flows)")
    for ignored in ("values", "ipfixCollectors", "aggMode"):
        if body.get(ignored) not in (None, "", []):
            raise DefinitionError(f"{ignored}: not supported by the embedded engine")
    log, flow_start = _bool(body, "log"), _bool(body, "flowStart")
    active_timeout = _number(body, "activeTimeout", 60)
    if not 0 <= active_timeout <= 86_400:
        raise DefinitionError(f"activeTimeout: expected 0-86400 s, got {active_timeout:g}")
    plain = tuple(keys) if all(_PLAIN_KEY.match(k) for k in keys) else None
    return FlowDef(name=name, keys=tuple(keys), value=value, filter=filt, t=t, n=n, fs=fs,
                   key_fns=tuple(key_fns), value_fn=value_fn, predicate=predicate,
                   plain_keys=plain, value_key=_value_source(value)[0],
                   value_factor=_value_source(value)[1],
                   log=log, flow_start=flow_start, active_timeout=active_timeout)


@dataclass(frozen=True)
class ThresholdDef:
    """A validated threshold. ``filter`` selects data sources by attribute (``ifspeed``...)."""

    name: str
    metric: str
    value: float
    by_flow: bool
    timeout: float
    filter: dict[str, tuple[str, ...]] | None

    def to_json(self) -> dict[str, Any]:
        body: dict[str, Any] = {"metric": self.metric, "value": self.value,
                                "byFlow": self.by_flow, "timeout": self.timeout}
        if self.filter is not None:
            body["filter"] = {k: list(v) for k, v in self.filter.items()}
        return body

    def matches(self, attributes: Mapping[str, Any]) -> bool:
        """Whether a data source with these attributes passes the threshold's filter."""
        if not self.filter:
            return True
        for attr, wanted in self.filter.items():
            have = attributes.get(attr)
            if have is None or as_text(have) not in wanted:
                return False
        return True


def parse_threshold(name: str, body: Any) -> ThresholdDef:
    """Validate a ``PUT /threshold/{name}/json`` body."""
    check_name(name, "threshold")
    if not isinstance(body, dict):
        raise DefinitionError("body: expected a JSON object")
    _unknown(body, _THRESHOLD_ATTRS, "threshold")
    metric = body.get("metric")
    if not isinstance(metric, str) or not metric:
        raise DefinitionError("metric: required, the name of a flow definition")
    if len(metric) > MAX_METRIC_LENGTH:
        raise DefinitionError(f"metric: longer than {MAX_METRIC_LENGTH} characters")
    if "value" not in body or body["value"] is None:
        raise DefinitionError("value: required, a number in the metric's unit")
    value = _number(body, "value", 0.0)
    timeout = _number(body, "timeout", THRESHOLD_TIMEOUT_DEFAULT)
    if timeout < 0:
        raise DefinitionError(f"timeout: must be >= 0, got {timeout}")
    filt_raw = body.get("filter")
    filt: dict[str, tuple[str, ...]] | None = None
    if filt_raw is not None:
        if not isinstance(filt_raw, dict):
            raise DefinitionError("filter: expected an object {attribute: [values]}")
        if len(filt_raw) > MAX_FILTER_ATTRIBUTES:
            raise DefinitionError(f"filter: more than {MAX_FILTER_ATTRIBUTES} attributes")
        filt = {}
        for attr, values in filt_raw.items():
            if not isinstance(values, list):
                values = [values]
            if len(values) > MAX_FILTER_VALUES:
                raise DefinitionError(f"filter: more than {MAX_FILTER_VALUES} values for {attr!r}")
            texts = tuple(as_text(v) for v in values)
            if len(str(attr)) > MAX_FILTER_VALUE_LENGTH or any(
                    len(t) > MAX_FILTER_VALUE_LENGTH for t in texts):
                raise DefinitionError(f"filter: attribute names and values are at most "
                                      f"{MAX_FILTER_VALUE_LENGTH} characters")
            filt[str(attr)] = texts
    # Echo what was given: an int stays an int (clients compare the echo with their body).
    raw_value = body["value"]
    echo_value = raw_value if isinstance(raw_value, (int, float)) and not isinstance(raw_value, bool) else value
    raw_timeout = body.get("timeout", THRESHOLD_TIMEOUT_DEFAULT)
    echo_timeout = raw_timeout if isinstance(raw_timeout, (int, float)) else timeout
    return ThresholdDef(name=name, metric=metric, value=echo_value, by_flow=_bool(body, "byFlow"),
                        timeout=echo_timeout, filter=filt)
