"""The policy kinds (see policies/README.md for every field).

* ``elephant``: tap each flow whose rate crosses ``threshold``;
* ``top_talkers``: every ``interval``, tap the ``top`` largest flows;
* ``watch_list``: tap any flow matching ``filter`` the first time it is seen,
  however small, at most ``max_new_taps`` new taps per ``new_taps_window``;
* ``fan_in``: tap a destination (address or prefix) that receives more than
  ``threshold`` from at least ``min_sources`` distinct sources; the mirror
  matches the destination, not each source's flow;
* ``scheduled``: tap one flow at the times a cron expression or a start time
  gives, for ``duration`` each time; no engine involved.

Each kind says what it asks of the engine (``flow_spec``/``threshold_spec``)
and how the rows of its ``/activeflows`` poll become sightings
(``sightings``); the decision core does the rest the same way for all.
"""

from __future__ import annotations

import math
from functools import cached_property
from datetime import datetime, timezone
from typing import Annotated, Any, Iterable, Literal, Sequence

from pydantic import Field, ValidationInfo, field_validator, model_validator

from demon.flowmatch import FlowMatchError, check_keys, flow_key_to_match, split_keys
from demon.model import FlowSighting
from demon.policy_base import (FieldProblem, Policy, Rate, ValueKind, bounded, _rate)
from demon.schedule import Schedule, ScheduleError, zone
from demon.sflowterms import TermError, check_definition, check_filter
from demon.sflowterms import check_keys as check_key_terms
from demon.units import UnitError, format_rate, parse_percent
from sflow.flowdef import MAX_FS_LENGTH

#: The watch list's threshold: above 0 so that the very first sample fires it
#: (a rate is never below one sample's impulse, bytes x sampling rate / t).
WATCH_THRESHOLD = 1e-3


def _check_key_list(keys: list[str]) -> list[str]:
    if len(keys) > 16:
        raise ValueError(f"{len(keys)} keys (at most 16)")
    try:
        check_key_terms(keys)
    except TermError as exc:
        raise ValueError(str(exc)) from None
    try:
        check_keys(keys)
    except FlowMatchError as exc:
        raise ValueError(str(exc)) from None
    return keys


def _threshold_bps(value: Any, link_speed: float | None) -> float:
    """``50Mbps``, ``125000`` (bytes/s) or ``10%`` of ``link_speed`` → bits/s."""
    try:
        fraction = parse_percent(value) if isinstance(value, str) else None
        if fraction is None:
            bps = _rate(value)
        else:
            if not link_speed:
                raise ValueError(f"{value!r} is a fraction of link speed: set link_speed too")
            bps = fraction * link_speed
    except UnitError as exc:
        raise ValueError(str(exc)) from None
    if bps <= 0:
        raise ValueError("must be above 0")
    return bps


def _where(row: FlowSighting) -> str:
    return f"{row.agent}/{row.data_source}"


class EnginePolicy(Policy):
    """A kind driven by an engine flow definition (all but ``scheduled``)."""

    value: ValueKind = "bytes"
    filter: str | None = None
    t: Annotated[float, bounded(0.2, 600, "sFlow-RT's smoothing range")] = 2.0
    fs: str = Field(default=",", min_length=1, max_length=MAX_FS_LENGTH)
    interval: Annotated[float, bounded(0.2, 3600)] = 2.0

    @field_validator("filter")
    @classmethod
    def _check_filter(cls, text: str | None) -> str | None:
        if text is not None:
            try:
                check_filter(text)
            except TermError as exc:
                raise ValueError(f"does not parse: {exc}") from None
        return text

    @model_validator(mode="after")
    def _engine_takes_it(self) -> "EnginePolicy":
        """The definitions exactly as the daemon will send them, through the engine's
        parser (the fields were checked one by one above; this catches the rest)."""
        try:
            check_definition(self.flow_name, self.flow_spec(), self.threshold_spec())
        except TermError as exc:
            raise FieldProblem(exc.field or "(policy)", str(exc)) from None
        return self

    def flow_spec(self) -> dict[str, Any]:
        keys: list[str] = getattr(self, "keys")  # a field, or derived by the kind
        spec: dict[str, Any] = {"keys": ",".join(keys), "value": self.value,
                                "t": self.t, "fs": self.fs}
        if self.filter:
            spec["filter"] = self.filter
        return spec


class KeyedPolicy(EnginePolicy):
    """Tap single flows, identified by ``keys``."""

    keys: list[str]

    @field_validator("keys", mode="before")
    @classmethod
    def _split_keys(cls, value: Any) -> Any:
        return split_keys(value) if isinstance(value, str) else value

    @field_validator("keys")
    @classmethod
    def _check_keys(cls, keys: list[str]) -> list[str]:
        return _check_key_list(keys)

    @model_validator(mode="after")
    def _bidirectional(self) -> "KeyedPolicy":
        if self.bidirectional and "inputifindex" in self.keys:
            raise FieldProblem("bidirectional", "a bidirectional tap cannot match inputifindex "
                                                "(the reverse direction enters by another port)")
        return self


class ElephantPolicy(KeyedPolicy):
    """Tap each flow whose rate crosses ``threshold`` (optionally ``sustain`` s long)."""

    kind: Literal["elephant"] = "elephant"
    link_speed: Rate | None = None
    threshold: float
    sustain: Annotated[float, bounded(0, 3600)] = 0.0

    @field_validator("threshold", mode="before")
    @classmethod
    def _threshold(cls, value: Any, info: ValidationInfo) -> float:
        return _threshold_bps(value, info.data.get("link_speed"))

    @property
    def sustain_s(self) -> float:
        return self.sustain

    @property
    def min_value(self) -> float:
        return self.from_bps(self.threshold)

    def threshold_spec(self) -> dict[str, Any]:
        # timeout: re-arm hysteresis per flow key; tap lifetime is the core's business.
        return {"metric": self.flow_name, "value": self.from_bps(self.threshold),
                "byFlow": True, "timeout": max(1, math.ceil(self.t))}

    def sightings(self, rows: Iterable[FlowSighting]) -> list[tuple[FlowSighting, str]]:
        """Rows above the threshold keep their taps alive (the engine fires a
        byFlow threshold once per crossing, not while a flow stays above it)."""
        out = []
        for row in sorted(rows, key=lambda r: -r.value):
            if row.value > self.min_value:
                out.append((row, f"{self.flow_name} {format_rate(self.to_bps(row.value))} "
                                 f"above the threshold in activeflows at {_where(row)}"))
        return out[:self.max_flows]


class TopTalkersPolicy(KeyedPolicy):
    """Every ``interval``, tap the ``top`` largest flows above ``min_rate``."""

    kind: Literal["top_talkers"] = "top_talkers"
    top: int = Field(default=5, ge=1, le=100)
    min_rate: Rate = 0.0

    @property
    def max_flows(self) -> int:
        return self.top

    @property
    def min_value(self) -> float:
        return self.from_bps(self.min_rate)

    def flow_spec(self) -> dict[str, Any]:
        spec = super().flow_spec()
        spec["n"] = max(5, min(20, self.top))
        return spec

    def sightings(self, rows: Iterable[FlowSighting]) -> list[tuple[FlowSighting, str]]:
        ranked = [r for r in sorted(rows, key=lambda r: -r.value)
                  if r.value > self.min_value][:self.top]
        return [(row, f"top {rank} of {self.flow_name}: {format_rate(self.to_bps(row.value))}"
                      f" at {_where(row)}") for rank, row in enumerate(ranked, 1)]


class WatchListPolicy(KeyedPolicy):
    """Tap every flow ``filter`` matches on its first sighting, however small."""

    kind: Literal["watch_list"] = "watch_list"
    filter: str  # type: ignore[assignment]  # required: the watch list *is* the filter
    min_rate: Rate = 0.0
    max_new_taps: int = Field(default=10, ge=1, le=10000)
    new_taps_window: Annotated[float, bounded(1, 86400)] = 60.0
    max_rows: int = Field(default=1000, ge=1, le=100000)

    @property
    def max_flows(self) -> int:
        return self.max_rows

    @property
    def min_value(self) -> float:
        return self.from_bps(self.min_rate)

    @property
    def new_taps_limit(self) -> tuple[int, float] | None:
        return (self.max_new_taps, self.new_taps_window)

    def threshold_spec(self) -> dict[str, Any]:
        return {"metric": self.flow_name, "value": max(WATCH_THRESHOLD, self.min_value),
                "byFlow": True, "timeout": max(1, math.ceil(self.t))}

    def event_trigger(self, event_id: int, value: float, threshold: float, where: str) -> str:
        return (f"event {event_id}: first sighting in {self.flow_name} ({self.filter}) at "
                f"{where}, {format_rate(self.to_bps(value))}")

    def sightings(self, rows: Iterable[FlowSighting]) -> list[tuple[FlowSighting, str]]:
        return [(row, f"seen in {self.flow_name} ({self.filter}) at {_where(row)}, "
                      f"{format_rate(self.to_bps(row.value))}")
                for row in rows if row.value > self.min_value or self.min_value == 0]


_TARGETS = ("ipdestination", "ip6destination")
_SOURCES = ("ipsource", "ip6source")


def _address_key(key: str, allowed: tuple[str, ...]) -> str:
    base = key.split(":")[1] if key.startswith("mask:") else key
    if base not in allowed:
        raise ValueError(f"{key!r}: one of {', '.join(allowed)} or mask:<one of them>:<bits>")
    try:
        check_keys([key])
    except FlowMatchError as exc:
        raise ValueError(str(exc)) from None
    return key


class FanInPolicy(EnginePolicy):
    """Tap a destination receiving more than ``threshold`` from at least
    ``min_sources`` distinct sources (the sum over sources: an attack target)."""

    kind: Literal["fan_in"] = "fan_in"
    target: str = "ipdestination"
    source: str = "ipsource"
    link_speed: Rate | None = None
    threshold: float
    min_sources: int = Field(default=10, ge=2, le=1_000_000)
    min_source_rate: Rate = 0.0
    sources_scanned: int = Field(default=1000, ge=10, le=100000)
    sustain: Annotated[float, bounded(0, 3600)] = 0.0

    @field_validator("target")
    @classmethod
    def _target(cls, key: str) -> str:
        return _address_key(key, _TARGETS)

    @field_validator("source")
    @classmethod
    def _source(cls, key: str) -> str:
        return _address_key(key, _SOURCES)

    @field_validator("threshold", mode="before")
    @classmethod
    def _threshold(cls, value: Any, info: ValidationInfo) -> float:
        return _threshold_bps(value, info.data.get("link_speed"))

    @model_validator(mode="after")
    def _family(self) -> "FanInPolicy":
        if ("ip6" in self.target) != ("ip6" in self.source):
            raise FieldProblem("source", f"{self.source!r} and target {self.target!r} mix "
                                         "IPv4 and IPv6")
        if self.fs in self.target or self.fs in self.source:
            raise FieldProblem("fs", f"{self.fs!r} occurs in the keys' own text")
        return self

    @property
    def keys(self) -> list[str]:
        return [self.target, self.source]

    @property
    def match_keys(self) -> Sequence[str]:
        return [self.target]

    @property
    def pins_in_port(self) -> bool:
        return False  # the sources enter by many ports: match the destination alone

    @property
    def sustain_s(self) -> float:
        return self.sustain

    @property
    def max_flows(self) -> int:
        return self.sources_scanned

    @property
    def min_value(self) -> float:
        return self.from_bps(self.min_source_rate)

    def sightings(self, rows: Iterable[FlowSighting]) -> list[tuple[FlowSighting, str]]:
        """Sum the (target, source) rows per target; a target above the threshold
        with enough distinct sources is one sighting, at the port where most of
        its rate enters."""
        per: dict[str, list[Any]] = {}  # target -> [total, {sources}, {(agent, ds): rate}]
        minimum = self.min_value
        for row in rows:
            if row.value <= minimum and minimum > 0:
                continue
            target, sep, source = row.key.partition(self.fs)
            if not sep:
                continue
            rec = per.setdefault(target, [0.0, set(), {}])
            rec[0] += row.value
            rec[1].add(source)
            where = (row.agent, row.data_source)
            rec[2][where] = rec[2].get(where, 0.0) + row.value
        out = []
        limit = self.from_bps(self.threshold)
        for target, (total, sources, places) in sorted(per.items(), key=lambda kv: -kv[1][0]):
            if total <= limit or len(sources) < self.min_sources:
                continue
            (agent, ds), _ = max(places.items(), key=lambda kv: kv[1])
            row = FlowSighting(target, total, agent, ds)
            out.append((row, f"fan-in to {target}: {len(sources)} sources, "
                             f"{format_rate(self.to_bps(total))} > "
                             f"{format_rate(self.threshold)} (most at {agent}/{ds})"))
        return out


def _parse_at(value: Any) -> tuple[int, int | None]:
    """``"1/3"`` (dpid 1, port 3), ``1`` or ``"1"`` (all of switch 1's ports)."""
    text = str(value).strip() if not isinstance(value, bool) else ""
    dpid_text, _, port_text = text.partition("/")
    try:
        dpid = int(dpid_text, 0)
        port = int(port_text) if port_text else None
    except ValueError:
        raise ValueError(f"{value!r} is not DPID/PORT or DPID (e.g. 1/3, or 1 for every "
                         "port of switch 1)") from None
    if dpid <= 0 or (port is not None and not 0 < port < 0xFF00):
        raise ValueError(f"{value!r}: the dpid and port must be positive")
    return dpid, port


class ScheduledPolicy(Policy):
    """Tap ``flow`` at ``at`` during each window the schedule gives."""

    kind: Literal["scheduled"] = "scheduled"
    keys: list[str]
    fs: str = Field(default=",", min_length=1, max_length=16)
    flow: str = Field(min_length=1, max_length=1000)
    at: str | int
    cron: str | None = Field(default=None, max_length=200)
    start: datetime | None = None
    timezone: str = "UTC"
    rate: Rate = 0.0

    @field_validator("keys", mode="before")
    @classmethod
    def _split_keys(cls, value: Any) -> Any:
        return split_keys(value) if isinstance(value, str) else value

    @field_validator("keys")
    @classmethod
    def _check_keys(cls, keys: list[str]) -> list[str]:
        if "inputifindex" in keys:
            raise ValueError("a scheduled tap names its port with 'at', not inputifindex")
        return _check_key_list(keys)

    @field_validator("at")
    @classmethod
    def _at(cls, value: str | int) -> str | int:
        _parse_at(value)
        return value

    @field_validator("timezone")
    @classmethod
    def _zone(cls, name: str) -> str:
        try:
            zone(name)
        except ScheduleError as exc:
            raise ValueError(str(exc)) from None
        return name

    @model_validator(mode="after")
    def _whole(self) -> "ScheduledPolicy":
        try:
            flow_key_to_match(self.flow, self.keys, self.fs)
        except FlowMatchError as exc:
            raise FieldProblem("flow", str(exc)) from None
        if (self.cron is None) == (self.start is None):
            raise FieldProblem("cron", "give either cron (e.g. '0 2 * * *') or start "
                                       "(e.g. 2025-06-01T02:00:00Z), not both nor neither")
        try:
            self.schedule  # noqa: B018
        except ScheduleError as exc:
            raise FieldProblem("cron" if self.cron else "start", str(exc)) from None
        return self

    @cached_property
    def schedule(self) -> Schedule:
        start = None
        if self.start is not None:
            when = self.start if self.start.tzinfo else self.start.replace(
                tzinfo=zone(self.timezone))
            start = when.astimezone(timezone.utc).timestamp()
        return Schedule(duration=self.duration, cron=self.cron, start=start, tz=self.timezone)

    @cached_property
    def location(self) -> tuple[int, int | None]:
        return _parse_at(self.at)

    @property
    def uses_engine(self) -> bool:
        return False

    @property
    def condition_driven(self) -> bool:
        return False

    @property
    def pins_in_port(self) -> bool:
        return not self.bidirectional and self.location[1] is not None

    def window_at(self, now: float) -> tuple[float, float] | None:
        return self.schedule.window_at(now)


KINDS: dict[str, type[Policy]] = {
    "elephant": ElephantPolicy, "top_talkers": TopTalkersPolicy, "watch_list": WatchListPolicy,
    "fan_in": FanInPolicy, "scheduled": ScheduledPolicy,
}
