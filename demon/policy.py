"""Policy files: YAML → frozen, validated pydantic models (see policies/README.md).

``load_policy_set(directory)`` reads every ``*.yaml``/``*.yml`` file (one policy
as a mapping, or a list of them) plus the optional ``_global.yaml`` (limits and
named capture destinations), and either returns the whole set or raises one
``PolicyError`` listing *every* problem, each as
``<file>: policy '<name>': field '<field>': <what is wrong>``.
``load_policies(directory)`` is the same, returning only the policies.

Rates are stored in bits/s and durations in seconds (``demon.units``). A policy
speaks sFlow-RT terms and knows the engine objects it needs: ``flow_spec()``
for ``PUT /flow/{flow_name}/json`` and ``threshold_spec()`` for
``PUT /threshold/{flow_name}/json`` (None for top talkers).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal, Mapping

import yaml
from pydantic import (BaseModel, BeforeValidator, ConfigDict, Field, ValidationError,
                      ValidationInfo, field_validator)

from demon.flowmatch import FlowMatchError, check_keys, split_keys
from demon.sflowterms import TermError, check_filter, check_key_name
from demon.units import UnitError, format_rate, parse_duration, parse_percent, parse_rate

GLOBAL_FILE = "_global.yaml"
FLOW_PREFIX = "demon_"


class PolicyError(ValueError):
    """A bad policy set; ``errors`` holds one line per problem."""

    def __init__(self, errors: list[str]) -> None:
        self.errors = list(errors)
        super().__init__("\n".join(self.errors))


def _rate(value: Any) -> float:
    return parse_rate(value)


def _duration(value: Any) -> float:
    return parse_duration(value)


Rate = Annotated[float, BeforeValidator(_rate)]
Duration = Annotated[float, BeforeValidator(_duration)]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Destination(_Strict):
    """Where copies go: the aggregation switch's capture port, tagged with ``vlan``
    (so the capture host can tell taps apart), or untagged."""

    vlan: int | None = Field(default=None, ge=1, le=4094)
    description: str = ""


class GlobalLimits(_Strict):
    """``_global.yaml``: limits over all policies and the core's retry timing."""

    max_taps: int = Field(default=32, ge=1, le=10000)
    capture_capacity: Rate | None = None
    destinations: dict[str, Destination] = Field(default_factory=dict)
    max_attempts: int = Field(default=3, ge=1, le=100)
    retry_backoff: Duration = 1.0
    retry_backoff_max: Duration = 60.0
    failure_holddown: Duration = 10.0
    placement_wait: Duration = 30.0
    hard_timeout_grace: Duration = 10.0
    retain: Duration = 600.0
    history_retain: Duration = 30 * 86400.0
    max_waiting: int = Field(default=1000, ge=0)


class Policy(_Strict):
    """Fields common to both kinds (see policies/README.md for each one)."""

    name: str = Field(pattern=r"^[A-Za-z][A-Za-z0-9_]{0,39}$")
    kind: Literal["elephant", "top_talkers"]
    description: str = ""
    enabled: bool = True
    keys: list[str]
    value: Literal["bytes", "bps"] = "bytes"
    filter: str | None = None
    t: Duration = 2.0
    fs: str = Field(default=",", min_length=1)
    interval: Duration = 2.0
    duration: Duration = 60.0
    max_duration: Duration = Field(default=300.0, validate_default=True)
    bidirectional: bool = False
    capture: Destination | str = Field(default_factory=Destination)
    max_taps: int = Field(default=4, ge=1, le=10000)
    holddown: Duration = 30.0
    priority: int = Field(default=100, ge=0, le=1000)
    idle_timeout: Duration = 30.0

    @field_validator("keys", mode="before")
    @classmethod
    def _split_keys(cls, value: Any) -> Any:
        return split_keys(value) if isinstance(value, str) else value

    @field_validator("keys")
    @classmethod
    def _check_keys(cls, keys: list[str]) -> list[str]:
        for key in keys:
            try:
                check_key_name(key)
            except TermError as exc:
                raise ValueError(str(exc)) from None
        try:
            check_keys(keys)
        except FlowMatchError as exc:
            raise ValueError(str(exc)) from None
        return keys

    @field_validator("filter")
    @classmethod
    def _check_filter(cls, text: str | None) -> str | None:
        if text is not None:
            try:
                check_filter(text)
            except TermError as exc:
                raise ValueError(f"does not parse: {exc}") from None
        return text

    @field_validator("t")
    @classmethod
    def _check_t(cls, t: float) -> float:
        if not 0.2 <= t <= 600:
            raise ValueError(f"{t:g}s outside sFlow-RT's 0.2s..600s smoothing range")
        return t

    @field_validator("interval", "duration")
    @classmethod
    def _positive(cls, value: float, info: ValidationInfo) -> float:
        if value <= 0:
            raise ValueError("must be greater than 0s")
        return value

    @field_validator("max_duration")
    @classmethod
    def _max_duration(cls, value: float, info: ValidationInfo) -> float:
        duration = info.data.get("duration")
        if duration is not None and value < duration:
            raise ValueError(f"{value:g}s is shorter than duration ({duration:g}s)")
        return value

    @field_validator("bidirectional")
    @classmethod
    def _bidirectional(cls, value: bool, info: ValidationInfo) -> bool:
        if value and "inputifindex" in (info.data.get("keys") or []):
            raise ValueError("a bidirectional tap cannot match inputifindex (the reverse "
                             "direction enters by another port)")
        return value

    @field_validator("idle_timeout")
    @classmethod
    def _idle(cls, value: float) -> float:
        if value != int(value) or value > 65535:
            raise ValueError("must be whole seconds, 0..65535 (0 = none)")
        return value

    # -- what the engine and the core need -------------------------------------------

    @property
    def flow_name(self) -> str:
        return f"{FLOW_PREFIX}{self.name}"

    @property
    def vlan_tag(self) -> int | None:
        return self.capture.vlan if isinstance(self.capture, Destination) else None

    @property
    def stale_after(self) -> float:
        """A candidate not seen again for this long is forgotten."""
        return max(3 * self.interval, 2 * self.t, 2.0)

    @property
    def sustain_s(self) -> float:
        return 0.0

    @property
    def max_flows(self) -> int:
        return 100

    @property
    def min_value(self) -> float:
        """``minValue`` for ``/activeflows`` polls, in the flow's units."""
        return 0.0

    def to_bps(self, value: float) -> float:
        """A flow value (the flow definition's units) → bits/s."""
        return value * 8 if self.value == "bytes" else value

    def from_bps(self, bps: float) -> float:
        return bps / 8 if self.value == "bytes" else bps

    def flow_spec(self) -> dict[str, Any]:
        spec: dict[str, Any] = {"keys": ",".join(self.keys), "value": self.value,
                                "t": self.t, "fs": self.fs}
        if self.filter:
            spec["filter"] = self.filter
        return spec

    def threshold_spec(self) -> dict[str, Any] | None:
        return None


class ElephantPolicy(Policy):
    """Tap each flow whose rate crosses ``threshold`` (optionally ``sustain`` s long)."""

    kind: Literal["elephant"] = "elephant"
    link_speed: Rate | None = None
    threshold: float
    sustain: Duration = 0.0

    @field_validator("threshold", mode="before")
    @classmethod
    def _threshold(cls, value: Any, info: ValidationInfo) -> float:
        try:
            fraction = parse_percent(value) if isinstance(value, str) else None
            if fraction is None:
                bps = parse_rate(value)
            else:
                speed = info.data.get("link_speed")
                if not speed:
                    raise ValueError(f"{value!r} is a fraction of link speed: set link_speed too")
                bps = fraction * speed
        except UnitError as exc:
            raise ValueError(str(exc)) from None
        if bps <= 0:
            raise ValueError("must be above 0")
        return bps

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


class TopTalkersPolicy(Policy):
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


KINDS: dict[str, type[Policy]] = {"elephant": ElephantPolicy, "top_talkers": TopTalkersPolicy}


@dataclass(frozen=True)
class PolicySet:
    policies: dict[str, Policy]
    limits: GlobalLimits


# -- loading -----------------------------------------------------------------------


def _field_name(loc: tuple[Any, ...]) -> str:
    return ".".join(str(part) for part in loc)


def _message(err: Mapping[str, Any], model: type[BaseModel]) -> str:
    kind = err.get("type")
    if kind == "extra_forbidden":
        allowed = ", ".join(model.model_fields)
        return f"unknown field (allowed: {allowed})"
    if kind == "missing":
        return "required"
    msg = str(err.get("msg", ""))
    return msg.removeprefix("Value error, ")


def _validation_errors(prefix: str, exc: ValidationError, model: type[BaseModel]) -> list[str]:
    out = []
    errors = exc.errors()
    for err in errors:
        loc = tuple(err.get("loc", ()))
        # a union (Destination | str) reports each alternative: given a mapping, the
        # "not a string" alternative is noise
        if loc[:1] == ("capture",):
            if loc[1:2] == ("str",) and any(e["loc"][1:2] == ("Destination",) for e in errors
                                            if e is not err and e["loc"][:1] == ("capture",)):
                continue
            loc = tuple(p for p in loc if p not in ("Destination", "str"))
        field = _field_name(loc) if loc else "(policy)"
        out.append(f"{prefix}field '{field}': {_message(err, model)}")
    return out


def _read_yaml(path: Path, shown: str) -> tuple[Any, list[str]]:
    try:
        return yaml.safe_load(path.read_text(encoding="utf-8")), []
    except yaml.YAMLError as exc:
        return None, [f"{shown}: not valid YAML: {' '.join(str(exc).split())}"]
    except (OSError, UnicodeDecodeError) as exc:
        return None, [f"{shown}: cannot read: {exc}"]


def parse_policy(raw: Any, shown: str, default_name: str | None = None,
                 index: int | None = None) -> tuple[Policy | None, list[str]]:
    """Validate one policy mapping; errors are prefixed with ``shown`` (the file)."""
    label = f"policy #{index + 1}" if index is not None else "policy"
    if not isinstance(raw, Mapping):
        return None, [f"{shown}: {label}: must be a mapping of fields, not {type(raw).__name__}"]
    data = dict(raw)
    if "name" not in data and default_name is not None:
        data["name"] = default_name
    name = data.get("name")
    prefix = f"{shown}: policy {name!r}: " if isinstance(name, str) else f"{shown}: {label}: "
    kind = data.get("kind")
    model = KINDS.get(kind) if isinstance(kind, str) else None
    if model is None:
        what = "required" if kind is None else f"{kind!r} is not a policy kind"
        return None, [f"{prefix}field 'kind': {what} (one of: {', '.join(KINDS)})"]
    try:
        return model.model_validate(data), []
    except ValidationError as exc:
        return None, _validation_errors(prefix, exc, model)


def _load_limits(directory: Path) -> tuple[GlobalLimits, list[str]]:
    path = directory / GLOBAL_FILE
    shown = str(path)
    if not path.exists():
        return GlobalLimits(), []
    raw, errors = _read_yaml(path, shown)
    if errors:
        return GlobalLimits(), errors
    if raw is None:
        return GlobalLimits(), []
    if not isinstance(raw, Mapping):
        return GlobalLimits(), [f"{shown}: must be a mapping of settings"]
    try:
        return GlobalLimits.model_validate(raw), []
    except ValidationError as exc:
        errors = _validation_errors(f"{shown}: global: ", exc, GlobalLimits)
        return _salvage_limits(dict(raw), exc), errors


def _salvage_limits(raw: dict[str, Any], exc: ValidationError) -> GlobalLimits:
    """The settings of a bad ``_global.yaml`` that are fine, so that the policies
    are still checked against them (their errors are reported as well)."""
    for err in exc.errors():
        loc = err.get("loc", ())
        if not loc:
            return GlobalLimits()
        if loc[0] == "destinations" and len(loc) > 1 and isinstance(raw.get("destinations"), Mapping):
            raw["destinations"] = {k: v for k, v in raw["destinations"].items() if k != loc[1]}
        else:
            raw.pop(str(loc[0]), None)
    try:
        return GlobalLimits.model_validate(raw)
    except ValidationError:
        return GlobalLimits()


def _policy_files(directory: Path) -> list[Path]:
    return sorted(p for p in directory.iterdir()
                  if p.is_file() and p.suffix in (".yaml", ".yml") and not p.name.startswith("."))


def load_policy_set(directory: str | Path) -> PolicySet:
    """Load and cross-check every policy file and ``_global.yaml`` in ``directory``."""
    directory = Path(directory)
    if not directory.is_dir():
        raise PolicyError([f"{directory}: not a directory"])
    limits, errors = _load_limits(directory)
    policies: dict[str, Policy] = {}
    origin: dict[str, str] = {}
    for path in _policy_files(directory):
        shown = str(path)
        if path.name == GLOBAL_FILE:
            continue
        if path.name.startswith("_"):
            errors.append(f"{shown}: unknown special file (only {GLOBAL_FILE} may start with '_')")
            continue
        raw, file_errors = _read_yaml(path, shown)
        errors += file_errors
        if file_errors:
            continue
        if raw is None:
            errors.append(f"{shown}: holds no policy (empty file)")
            continue
        items = [(raw, path.stem.replace("-", "_"), None)] if isinstance(raw, Mapping) else \
            [(item, None, i) for i, item in enumerate(raw)] if isinstance(raw, list) else None
        if items is None:
            errors.append(f"{shown}: must hold a policy mapping or a list of them")
            continue
        for item, default_name, index in items:
            policy, item_errors = parse_policy(item, shown, default_name, index)
            errors += item_errors
            if policy is None:
                continue
            prefix = f"{shown}: policy {policy.name!r}: "
            if policy.name in origin:
                errors.append(f"{prefix}field 'name': also defined in {origin[policy.name]}")
                continue
            if isinstance(policy.capture, str):
                dest = limits.destinations.get(policy.capture)
                if dest is None:
                    known = ", ".join(limits.destinations) or f"none defined in {GLOBAL_FILE}"
                    errors.append(f"{prefix}field 'capture': unknown destination "
                                  f"{policy.capture!r} (known: {known})")
                    continue
                policy = policy.model_copy(update={"capture": dest})
            cap = limits.capture_capacity
            if cap is not None and isinstance(policy, ElephantPolicy) and policy.threshold > cap:
                errors.append(f"{prefix}field 'threshold': {format_rate(policy.threshold)} "
                              f"exceeds capture_capacity {format_rate(cap)}: no flow it "
                              "fires on could ever be tapped")
                continue
            origin[policy.name] = shown
            policies[policy.name] = policy
    if errors:
        raise PolicyError(errors)
    return PolicySet(policies=policies, limits=limits)


def load_policies(directory: str | Path) -> dict[str, Policy]:
    """The policies of ``directory`` by name (raises ``PolicyError`` listing all errors)."""
    return load_policy_set(directory).policies
