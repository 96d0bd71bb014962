"""What every policy kind shares: units as field types, bounds, the common fields,
and the hooks the decision core calls (``demon.policy_kinds`` fills them in).

A policy is a frozen pydantic model. Every number a file can hold is bounded
(rates, durations, counts): a value that passes ``--check`` must be one the
daemon can run with (``threshold: 1e300Tbps`` would never fire, ``interval:
1e-9`` would poll without end, ``interval: 1e300`` overflows the scheduler).
Cross-field checks that must name a field raise :class:`FieldProblem`, which the
loader reports under that field.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated, Any, Iterable, Literal, Sequence

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationInfo, field_validator

from demon.units import UnitError, format_rate, parse_duration, parse_rate, parse_size

if TYPE_CHECKING:
    from demon.model import FlowSighting

FLOW_PREFIX = "demon_"
#: 100 Tbit/s: no link is faster; above it a rate is a typo (or inf).
MAX_RATE = 1e14
#: OpenFlow's hard_timeout is 16 bits: a mirror can live at most this long.
OFP_MAX_TIMEOUT = 65535
DAY = 86400.0


class FieldProblem(ValueError):
    """A cross-field check that belongs to ``field`` (reported under its name)."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field = field


def _rate(value: Any) -> float:
    bps = parse_rate(value)
    if bps > MAX_RATE:
        raise UnitError(f"{value!r} is above {format_rate(MAX_RATE)}: no link is that fast")
    return bps


def _duration(value: Any) -> float:
    return parse_duration(value)


def _size(value: Any) -> float:
    return parse_size(value)


def bounded(low: float, high: float, what: str = "") -> Any:
    """A duration field bounded to ``low..high`` seconds (message names both)."""

    def check(value: Any) -> float:
        seconds = parse_duration(value)
        if not low <= seconds <= high:
            raise UnitError(f"{seconds:g}s is outside {_span(low)}..{_span(high)}"
                            + (f" ({what})" if what else ""))
        return seconds

    return BeforeValidator(check)


def _span(seconds: float) -> str:
    for unit, size in (("d", DAY), ("h", 3600.0), ("m", 60.0), ("s", 1.0)):
        if seconds >= size and seconds % size == 0:
            return f"{seconds / size:g}{unit}"
    return f"{seconds * 1000:g}ms" if 0 < seconds < 1 else f"{seconds:g}s"


Rate = Annotated[float, BeforeValidator(_rate)]
Duration = Annotated[float, BeforeValidator(_duration)]
Size = Annotated[float, BeforeValidator(_size)]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Destination(_Strict):
    """Where copies go: the aggregation switch's capture port, tagged with ``vlan``
    (so the capture host can tell taps apart), or untagged."""

    vlan: int | None = Field(default=None, ge=1, le=4094)
    description: str = Field(default="", max_length=1000)


class GlobalLimits(_Strict):
    """``_global.yaml``: limits over all policies and the core's retry timing."""

    max_taps: int = Field(default=32, ge=1, le=10000)
    capture_capacity: Rate | None = None
    destinations: dict[str, Destination] = Field(default_factory=dict)
    max_attempts: int = Field(default=3, ge=1, le=100)
    retry_backoff: Annotated[float, bounded(0.1, 3600)] = 1.0
    retry_backoff_max: Annotated[float, bounded(0.1, DAY)] = 60.0
    failure_holddown: Annotated[float, bounded(0, 7 * DAY)] = 10.0
    placement_wait: Annotated[float, bounded(0, 3600)] = 30.0
    hard_timeout_grace: Annotated[float, bounded(1, 3600)] = 10.0
    retain: Annotated[float, bounded(0, 30 * DAY)] = 600.0
    history_retain: Annotated[float, bounded(0, 3650 * DAY)] = 30 * DAY
    max_waiting: int = Field(default=1000, ge=0, le=1_000_000)
    #: How stale a switch's mirror counters can be (Open vSwitch refreshes its OpenFlow
    #: statistics about every 500 ms): budgets extrapolate that far (demon.budget).
    counter_refresh: Annotated[float, bounded(0, 10)] = 0.5
    #: An explicit yes to a directory with no policy (a reload to it deletes every
    #: engine definition of ours); without it an empty set is an error.
    allow_empty: bool = False


class Policy(_Strict):
    """The fields every kind has (see policies/README.md for each one) and the
    hooks the decision core and the runtime call. Kinds: ``demon.policy_kinds``."""

    name: str = Field(pattern=r"^[A-Za-z][A-Za-z0-9_]{0,39}$")
    kind: str
    description: str = Field(default="", max_length=1000)
    enabled: bool = True
    duration: Annotated[float, bounded(1, OFP_MAX_TIMEOUT)] = 60.0
    max_duration: Annotated[float, bounded(1, OFP_MAX_TIMEOUT,
                                           "a switch's hard_timeout is 16 bits")] = Field(
        default=300.0, validate_default=True)
    bidirectional: bool = False
    capture: Destination | str = Field(default_factory=Destination)
    max_taps: int = Field(default=4, ge=1, le=10000)
    holddown: Annotated[float, bounded(0, 7 * DAY)] = 30.0
    priority: int = Field(default=100, ge=0, le=1000)
    idle_timeout: Duration = 30.0
    max_packets: int | None = Field(default=None, ge=1, le=10**12)
    max_bytes: Annotated[float | None, BeforeValidator(
        lambda v: None if v is None else _size(v))] = None

    @field_validator("max_duration")
    @classmethod
    def _max_duration(cls, value: float, info: ValidationInfo) -> float:
        duration = info.data.get("duration")
        if duration is not None and value < duration:
            raise ValueError(f"{value:g}s is shorter than duration ({duration:g}s)")
        return value

    @field_validator("idle_timeout")
    @classmethod
    def _idle(cls, value: float) -> float:
        if value != int(value) or value > OFP_MAX_TIMEOUT:
            raise ValueError("must be whole seconds, 0..65535 (0 = none)")
        return value

    @field_validator("max_bytes")
    @classmethod
    def _max_bytes(cls, value: float | None) -> float | None:
        if value is not None and not 1 <= value <= 1e15:
            raise ValueError(f"{value:g} bytes is outside 1..1PB")
        return value

    # -- what the engine needs (``None``: nothing to define or poll) -----------------

    @property
    def flow_name(self) -> str:
        return f"{FLOW_PREFIX}{self.name}"

    @property
    def uses_engine(self) -> bool:
        """False for kinds the engine plays no part in (scheduled taps)."""
        return True

    def flow_spec(self) -> dict[str, Any] | None:
        return None

    def threshold_spec(self) -> dict[str, Any] | None:
        return None

    @property
    def max_flows(self) -> int:
        """``maxFlows`` of the policy's ``/activeflows`` poll."""
        return 100

    @property
    def min_value(self) -> float:
        """``minValue`` of the policy's ``/activeflows`` poll, in the flow's units."""
        return 0.0

    def to_bps(self, value: float) -> float:
        """A flow value (the flow definition's units) → bits/s."""
        return value * 8 if getattr(self, "value", "bytes") == "bytes" else value

    def from_bps(self, bps: float) -> float:
        return bps / 8 if getattr(self, "value", "bytes") == "bytes" else bps

    # -- what the decision core needs -------------------------------------------------

    @property
    def vlan_tag(self) -> int | None:
        return self.capture.vlan if isinstance(self.capture, Destination) else None

    @property
    def stale_after(self) -> float:
        """A candidate not seen again for this long is forgotten."""
        interval = float(getattr(self, "interval", 2.0))
        return max(3 * interval, 2 * float(getattr(self, "t", 2.0)), 2.0)

    @property
    def sustain_s(self) -> float:
        return 0.0

    @property
    def condition_driven(self) -> bool:
        """True: a tap is released ``duration`` after its last trigger. False
        (scheduled): it lives until its window closes."""
        return True

    @property
    def match_keys(self) -> Sequence[str]:
        """The keys a flow key of this policy is split into to build the match."""
        return list(getattr(self, "keys", ()))

    @property
    def pins_in_port(self) -> bool:
        """Whether the match names the port the flow enters by (one-directional
        taps of a single flow do; a bidirectional tap or a fan-in does not)."""
        return not self.bidirectional

    def sightings(self, rows: Iterable["FlowSighting"]) -> list[tuple["FlowSighting", str]]:
        """The ``/activeflows`` rows of a poll → (sighting, trigger sentence) pairs."""
        return []

    def event_trigger(self, event_id: int, value: float, threshold: float, where: str) -> str:
        """The trigger sentence of a threshold event of this policy."""
        return (f"event {event_id}: {self.flow_name} {format_rate(self.to_bps(value))} > "
                f"{format_rate(self.to_bps(threshold))} at {where}")

    def budget_text(self) -> str:
        parts = []
        if self.max_packets:
            parts.append(f"{self.max_packets} packets")
        if self.max_bytes:
            parts.append(f"{self.max_bytes:.0f} bytes")
        return " or ".join(parts)


ValueKind = Literal["bytes", "bps"]
