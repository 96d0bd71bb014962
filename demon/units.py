"""Rates, durations and percentages as people write them in policy files.

Rates are returned in **bits per second**. A lower-case ``b`` means bits and an
upper-case ``B`` bytes: ``100Mbps``, ``100 Mbit/s``, ``100Mb/s`` are bits;
``12.5MB/s``, ``12.5MBps``, ``12.5 MiB/s`` are bytes. Decimal prefixes
(k, M, G, T) are powers of 1000, binary ones (Ki, Mi, Gi, Ti) powers of 1024.
A plain number (``125000`` or ``"125000"``) is **bytes per second**, the unit
sFlow-RT uses for a ``value: bytes`` flow. Durations: ``500ms``, ``5s``,
``2m``, ``1h``, ``1d``, or a plain number of seconds. Sizes (``max_bytes``):
``1500``, ``10MB``, ``1.5GiB`` (bytes; decimal or binary prefixes).
"""

from __future__ import annotations

import math
import re

_PREFIX = {"": 1, "k": 1e3, "K": 1e3, "M": 1e6, "G": 1e9, "T": 1e12,
           "Ki": 1024, "Mi": 1024**2, "Gi": 1024**3, "Ti": 1024**4}
_BITS = {"bps", "bit/s", "b/s", "bits/s", "bit"}
_BYTES = {"Bps", "B/s", "byte/s", "bytes/s"}
_RATE_RE = re.compile(
    r"^\s*(?P<num>[+-]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?)\s*"
    r"(?P<prefix>Ki|Mi|Gi|Ti|[kKMGT])?(?P<unit>bps|Bps|bits/s|bit/s|bytes/s|byte/s|b/s|B/s|bit)?\s*$")
_DURATION_RE = re.compile(
    r"^\s*(?P<num>[+-]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?)\s*(?P<unit>ms|s|m|min|h|d)?\s*$")
_DURATION_UNIT = {None: 1.0, "ms": 0.001, "s": 1.0, "m": 60.0, "min": 60.0, "h": 3600.0, "d": 86400.0}
_SIZE_RE = re.compile(
    r"^\s*(?P<num>[+-]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?)\s*"
    r"(?P<prefix>Ki|Mi|Gi|Ti|[kKMGT])?(?P<unit>B|bytes)?\s*$")
_PERCENT_RE = re.compile(r"^\s*(?P<num>(?:\d+(?:\.\d*)?|\.\d+))\s*%\s*$")


class UnitError(ValueError):
    """A rate, duration or percentage that does not parse (or is negative)."""


def _finite(value: float, text: object) -> float:
    if not math.isfinite(value):
        raise UnitError(f"{text!r} is not a finite number")
    if value < 0:
        raise UnitError(f"{text!r} is negative")
    return value


def parse_rate(text: str | int | float) -> float:
    """``"100Mbps"`` → 1e8 (bits/s). Plain numbers are bytes/s (× 8)."""
    if isinstance(text, bool):
        raise UnitError(f"{text!r} is not a rate")
    if isinstance(text, (int, float)):
        return _finite(float(text), text) * 8
    if not isinstance(text, str):
        raise UnitError(f"{text!r} is not a rate")
    m = _RATE_RE.match(text)
    if not m:
        raise UnitError(f"{text!r} is not a rate (write e.g. 100Mbps, 12.5MB/s, 1.5Gbit/s or bytes/s)")
    num = _finite(float(m["num"]), text)
    prefix, unit = m["prefix"] or "", m["unit"]
    if unit is None:
        if prefix:
            raise UnitError(f"{text!r}: say bits or bytes (e.g. {m['num']}{prefix}bps or {m['num']}{prefix}B/s)")
        return num * 8
    scale = _PREFIX[prefix]
    return num * scale if unit in _BITS else num * scale * 8


def parse_duration(text: str | int | float) -> float:
    """``"5s"`` → 5.0, ``"2m"`` → 120.0, ``"500ms"`` → 0.5; plain numbers are seconds."""
    if isinstance(text, bool):
        raise UnitError(f"{text!r} is not a duration")
    if isinstance(text, (int, float)):
        return _finite(float(text), text)
    if not isinstance(text, str):
        raise UnitError(f"{text!r} is not a duration")
    m = _DURATION_RE.match(text)
    if not m:
        raise UnitError(f"{text!r} is not a duration (write e.g. 500ms, 5s, 2m, 1h)")
    return _finite(float(m["num"]), text) * _DURATION_UNIT[m["unit"]]


def parse_size(text: str | int | float) -> float:
    """``"10MB"`` → 1e7, ``"1KiB"`` → 1024.0; plain numbers are bytes."""
    if isinstance(text, bool):
        raise UnitError(f"{text!r} is not a size")
    if isinstance(text, (int, float)):
        return _finite(float(text), text)
    if not isinstance(text, str):
        raise UnitError(f"{text!r} is not a size")
    m = _SIZE_RE.match(text)
    if not m or (m["prefix"] and not m["unit"]):
        raise UnitError(f"{text!r} is not a size (write e.g. 1500, 10MB, 1.5GiB)")
    return _finite(float(m["num"]) * _PREFIX[m["prefix"] or ""], text)


def parse_percent(text: str) -> float | None:
    """``"10%"`` → 0.1; None when ``text`` is not a percentage at all."""
    if not isinstance(text, str):
        return None
    m = _PERCENT_RE.match(text)
    if not m:
        if text.strip().endswith("%"):
            raise UnitError(f"{text!r} is not a percentage")
        return None
    value = float(m["num"]) / 100
    if not 0 < value <= 1:
        raise UnitError(f"{text!r}: a fraction of link speed must be above 0% and at most 100%")
    return value


def format_rate(bps: float) -> str:
    """1.5e8 → ``"150Mbps"`` (for messages and records)."""
    for scale, name in ((1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k")):
        if bps >= scale:
            return f"{bps / scale:.4g}{name}bps"
    return f"{bps:.4g}bps"
