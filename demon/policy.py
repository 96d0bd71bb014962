"""Policy files: YAML → frozen, validated pydantic models (see policies/README.md).

``load_policy_set(directory)`` reads every ``*.yaml``/``*.yml`` file (one policy
as a mapping, or a list of them) plus the optional ``_global.yaml`` (limits and
named capture destinations), and either returns the whole set or raises one
``PolicyError`` listing *every* problem, each as
``<file>: policy '<name>': field '<field>': <what is wrong>``.
``load_policies(directory)`` is the same, returning only the policies.

Loading is total: whatever a file holds (duplicate keys, YAML nested a thousand
levels, a filter nested as deep, numbers that overflow), the answer is the set
or a ``PolicyError``, never another exception, so a bad file can neither crash a
reload nor print a traceback on ``--check``.

Rates are stored in bits/s and durations in seconds (``demon.units``). The
models and their kinds live in ``demon.policy_base`` and ``demon.policy_kinds``
(re-exported here).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import yaml
from pydantic import BaseModel, ValidationError

from demon.policy_base import (FLOW_PREFIX, OFP_MAX_TIMEOUT, Destination, FieldProblem,
                               GlobalLimits, Policy)
from demon.policy_kinds import (KINDS, ElephantPolicy, FanInPolicy, ScheduledPolicy,
                                TopTalkersPolicy, WatchListPolicy)
from demon.units import format_rate

__all__ = ["PolicyError", "PolicySet", "Policy", "GlobalLimits", "Destination", "KINDS",
           "ElephantPolicy", "TopTalkersPolicy", "WatchListPolicy", "FanInPolicy",
           "ScheduledPolicy", "FLOW_PREFIX", "GLOBAL_FILE", "load_policy_set", "load_policies",
           "parse_policy", "engine_policies"]

GLOBAL_FILE = "_global.yaml"
MAX_FILE_BYTES = 1 << 20


class PolicyError(ValueError):
    """A bad policy set; ``errors`` holds one line per problem."""

    def __init__(self, errors: list[str]) -> None:
        self.errors = list(errors)
        super().__init__("\n".join(self.errors))


@dataclass(frozen=True)
class PolicySet:
    policies: dict[str, Policy]
    limits: GlobalLimits


def engine_policies(policies: Mapping[str, Any]) -> dict[str, Any]:
    """The enabled policies that get engine definitions and polls (not the
    scheduled ones: the engine plays no part in them)."""
    return {name: pol for name, pol in policies.items()
            if getattr(pol, "enabled", True) and getattr(pol, "uses_engine", True)}


# -- loading -----------------------------------------------------------------------


def _field_name(loc: tuple[Any, ...]) -> str:
    return ".".join(str(part) for part in loc)


_FIRST = ("name", "kind", "description", "enabled", "keys", "target", "source", "flow", "at",
          "cron", "start", "timezone", "value", "filter", "t", "fs", "interval")


def _reading_order(model: type[BaseModel]) -> list[str]:
    """A model's fields as the docs list them: what to watch, then the kind's own."""
    fields = list(model.model_fields)
    return [f for f in _FIRST if f in fields] + [f for f in fields if f not in _FIRST]


def _message(err: Mapping[str, Any], model: type[BaseModel]) -> str:
    kind = err.get("type")
    if kind == "extra_forbidden":
        return f"unknown field (allowed: {', '.join(_reading_order(model))})"
    if kind == "missing":
        return "required"
    # one line, but the operator's own text (a filter quoted in the message) keeps its spacing
    msg = " ".join(line.strip() for line in str(err.get("msg", "")).splitlines() if line.strip())
    return msg.removeprefix("Value error, ")


def _validation_errors(prefix: str, exc: ValidationError, model: type[BaseModel]) -> list[str]:
    out = []
    errors = exc.errors()
    order = {name: n for n, name in enumerate(_reading_order(model))}
    for err in sorted(errors, key=lambda e: order.get(str((e.get("loc") or ("",))[0]),
                                                      len(order))):
        loc = tuple(err.get("loc", ()))
        problem = (err.get("ctx") or {}).get("error")
        if not loc and isinstance(problem, FieldProblem):
            out.append(f"{prefix}field '{problem.field}': {problem}")
            continue
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


class _DuplicateKey(yaml.YAMLError):
    def __init__(self, key: Any, line: int, first: int) -> None:
        super().__init__(f"line {line}: duplicate key {key!r} (first at line {first}; YAML "
                         "would silently keep the last one)")


class _StrictLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` that refuses a key given twice in one mapping."""

    def construct_mapping(self, node: Any, deep: bool = False) -> Any:
        if isinstance(node, yaml.MappingNode):
            seen: dict[Any, int] = {}
            for key_node, _ in node.value:
                if key_node.tag == "tag:yaml.org,2002:merge":
                    continue
                key = self.construct_object(key_node, deep=deep)
                try:
                    first = seen.get(key)
                except TypeError:
                    continue  # an unhashable key: the base class reports it
                if first is not None:
                    raise _DuplicateKey(key, key_node.start_mark.line + 1, first)
                seen[key] = key_node.start_mark.line + 1
        return super().construct_mapping(node, deep)


def _read_yaml(path: Path, shown: str) -> tuple[Any, list[str]]:
    try:
        size = path.stat().st_size
        if size > MAX_FILE_BYTES:
            return None, [f"{shown}: {size} bytes: a policy file holds at most "
                          f"{MAX_FILE_BYTES} bytes"]
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        return None, [f"{shown}: cannot read: {exc}"]
    try:
        return yaml.load(text, Loader=_StrictLoader), []  # noqa: S506 - a safe loader
    except _DuplicateKey as exc:
        return None, [f"{shown}: {exc}"]
    except yaml.YAMLError as exc:
        return None, [f"{shown}: not valid YAML: {' '.join(str(exc).split())}"]
    except RecursionError:
        return None, [f"{shown}: not valid YAML: nested too deeply"]
    except Exception as exc:  # noqa: BLE001 - whatever the parser hits is one line
        return None, [f"{shown}: cannot be read as YAML: {type(exc).__name__}: {exc}"]


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
    except RecursionError:
        return None, [f"{prefix}nested too deeply"]
    except Exception as exc:  # noqa: BLE001 - a bad file must stay one line, never a crash
        return None, [f"{prefix}cannot be checked: {type(exc).__name__}: {exc}"]


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
    except Exception as exc:  # noqa: BLE001 - one line, whatever it is
        return GlobalLimits(), [f"{shown}: global: cannot be checked: {type(exc).__name__}"]


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
    """Load and cross-check every policy file and ``_global.yaml`` in ``directory``.

    Raises ``PolicyError`` (one line per problem) and nothing else.
    """
    directory = Path(directory)
    try:
        return _load(directory)
    except PolicyError:
        raise
    except RecursionError:
        raise PolicyError([f"{directory}: nested too deeply to be checked"]) from None
    except Exception as exc:  # noqa: BLE001 - the caller gets lines, never a traceback
        raise PolicyError([f"{directory}: cannot be loaded: {type(exc).__name__}: "
                           f"{' '.join(str(exc).split())}"]) from None


def _load(directory: Path) -> PolicySet:
    try:
        if not directory.is_dir():
            raise PolicyError([f"{directory}: not a directory"])
        files = _policy_files(directory)
    except OSError as exc:
        raise PolicyError([f"{directory}: cannot list: {exc}"]) from None
    limits, errors = _load_limits(directory)
    policies: dict[str, Policy] = {}
    origin: dict[str, str] = {}
    for path in files:
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
            problems = _against_limits(policy, limits)
            if problems:
                errors += [prefix + line for line in problems]
                continue
            origin[policy.name] = shown
            policies[policy.name] = policy
    if not errors and not policies and not limits.allow_empty:
        errors.append(f"{directory}: holds no policy: running it would delete every engine "
                      f"definition of ours; if that is what you want, set allow_empty: true "
                      f"in {GLOBAL_FILE}")
    if errors:
        raise PolicyError(errors)
    return PolicySet(policies=policies, limits=limits)


def _against_limits(policy: Policy, limits: GlobalLimits) -> list[str]:
    """What a policy cannot do under the set's global limits (field-prefixed lines)."""
    out = []
    hard = policy.max_duration + limits.hard_timeout_grace
    if hard > OFP_MAX_TIMEOUT:
        out.append(f"field 'max_duration': {policy.max_duration:g}s + hard_timeout_grace "
                   f"{limits.hard_timeout_grace:g}s exceeds {OFP_MAX_TIMEOUT}s, the longest "
                   f"hard_timeout a switch takes (16 bits): at most "
                   f"{OFP_MAX_TIMEOUT - limits.hard_timeout_grace:g}s")
    cap = limits.capture_capacity
    floor = getattr(policy, "threshold", None) or getattr(policy, "rate", None)
    if cap is not None and isinstance(floor, float) and floor > cap:
        field = "threshold" if getattr(policy, "threshold", None) else "rate"
        out.append(f"field '{field}': {format_rate(floor)} exceeds capture_capacity "
                   f"{format_rate(cap)}: no flow it fires on could ever be tapped")
    return out


def load_policies(directory: str | Path) -> dict[str, Policy]:
    """The policies of ``directory`` by name (raises ``PolicyError`` listing all errors)."""
    return load_policy_set(directory).policies
