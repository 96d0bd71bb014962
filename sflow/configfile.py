"""The configuration file of the long-running commands (``--config FILE``).

One YAML file, one section per command, keys spelled as the command's long
options without the dashes in front::

    common:                      # any command: only --log-format / --log-level
      log-format: json
    watch:                       # demon-watch
      policies: /etc/pytapdemon/policies
      sflow-listen: 0.0.0.0:6343
    controller:                  # demon-controller
      fabric: /etc/pytapdemon/fabric.json

The keys a section accepts are read from the command's own ``argparse``
parser, so an option added to a command is accepted here at once, with the
same type conversion and choices as on the command line; there is no second
list to keep in sync. The file is validated with a pydantic model built from
that parser: every error is one line naming the file, the section and the key.
Options given on the command line override the file.

Section names are fixed here (``sflow/`` cannot import the commands of
``demon/``): a misspelt section is an error, a section of another command is
left to that command.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Callable, Iterable, Mapping, Union

import yaml
from pydantic import (AfterValidator, BaseModel, ConfigDict, Field, StrictBool, StrictFloat,
                      StrictInt, StrictStr, ValidationError, create_model)

# command -> its section; "common" holds the options every command shares.
SECTIONS: dict[str, str] = {
    "demon-watch": "watch", "demon-sflow": "sflow", "demon-controller": "controller",
    "demon-capture": "capture", "demon-tap": "tap", "demon-netcheck": "netcheck",
    "demon-lab": "lab", "demon-traffic": "traffic",
}
COMMON = "common"
COMMON_KEYS = ("log-format", "log-level")
# options that make no sense in a file (they act instead of running)
NOT_IN_FILE = frozenset({"help", "version", "config"})


class ConfigError(Exception):
    """The file cannot be used; ``errors`` holds one line per problem."""

    def __init__(self, errors: list[str]) -> None:
        super().__init__("\n".join(errors))
        self.errors = errors


@dataclass
class Section:
    """What a command's section set: option dest -> converted value."""

    values: dict[str, Any] = field(default_factory=dict)
    keys: dict[str, str] = field(default_factory=dict)  # dest -> "section.key"


def option_key(action: argparse.Action) -> str | None:
    """The file key of an option (its first long flag without ``--``), or None."""
    longs = [s for s in action.option_strings if s.startswith("--")]
    if not longs:
        return None
    key = longs[0][2:]
    return None if key in NOT_IN_FILE else key


def file_options(parser: argparse.ArgumentParser) -> dict[str, argparse.Action]:
    """key -> action for every option of ``parser`` a file may set."""
    out: dict[str, argparse.Action] = {}
    for action in parser._actions:  # argparse offers no public list of its actions
        if isinstance(action, (argparse._HelpAction, argparse._VersionAction,
                               argparse._SubParsersAction)):
            continue
        key = option_key(action)
        if key is not None and action.dest is not argparse.SUPPRESS:
            out[key] = action
    return out


def _converter(action: argparse.Action) -> Callable[[Any], Any]:
    """Convert a scalar from the file as argparse converts the same text."""
    convert = action.type

    def run(value: Any) -> Any:
        if convert is None:
            value = value if isinstance(value, str) else str(value)
        elif convert in (int, float):
            value = convert(value)  # pydantic has checked it is a number
        else:
            try:
                value = convert(str(value))
            except argparse.ArgumentTypeError as exc:
                raise ValueError(str(exc)) from None
            except (TypeError, ValueError) as exc:
                raise ValueError(f"invalid value {value!r}: {exc}") from None
        if action.choices is not None and value not in action.choices:
            allowed = ", ".join(map(str, action.choices))
            raise ValueError(f"must be one of {allowed}, got {value!r}")
        return value
    return run


def _annotation(action: argparse.Action) -> Any:
    """The pydantic type of an option's value in the file."""
    if isinstance(action, (argparse._StoreTrueAction, argparse._StoreFalseAction,
                           argparse._StoreConstAction, argparse._AppendConstAction,
                           argparse.BooleanOptionalAction)):
        return StrictBool
    if isinstance(action, argparse._CountAction):
        return Annotated[StrictInt, Field(ge=0)]
    if action.type is int:
        scalar: Any = StrictInt
    elif action.type is float:
        scalar = StrictFloat  # takes ints too, never a bool or a string
    else:  # text, paths, durations, rates: what the command line would take as a word
        scalar = Union[StrictStr, StrictInt, StrictFloat]
    scalar = Annotated[scalar, AfterValidator(_converter(action))]
    many = isinstance(action, argparse._AppendAction) or action.nargs in ("*", "+") or \
        isinstance(action.nargs, int)
    return list[scalar] if many else scalar  # type: ignore[valid-type]


def section_model(name: str, options: Mapping[str, argparse.Action]) -> type[BaseModel]:
    """A pydantic model of one section: every option optional, nothing else allowed."""
    fields: dict[str, Any] = {}
    for n, (key, action) in enumerate(options.items()):
        # internal names: an option called --json must not shadow BaseModel.json
        fields[f"option_{n}"] = (_annotation(action) | None, Field(default=None, alias=key))
    return create_model(f"section_{name}", __config__=ConfigDict(extra="forbid",
                                                                populate_by_name=False),
                        **fields)


def read_file(path: str | Path) -> dict[str, Any]:
    """The file's sections, or ConfigError (one line: the file and what is wrong)."""
    shown = str(path)
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        raise ConfigError([f"{shown}: cannot read: {reason}"]) from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or str(exc)
        raise ConfigError([f"{shown}:{where}: not valid YAML: {' '.join(str(problem).split())}"]) \
            from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError([f"{shown}: must be a mapping of sections "
                           f"({', '.join((COMMON, *SECTIONS.values()))})"])
    errors = []
    known = {COMMON, *SECTIONS.values()}
    for name, body in data.items():
        if name not in known:
            errors.append(f"{shown}: unknown section {name!r} (known: {', '.join(sorted(known))})")
        elif body is not None and not isinstance(body, dict):
            errors.append(f"{shown}: {name}: must be a mapping of option: value")
    if errors:
        raise ConfigError(errors)
    return data


def _normalise(shown: str, name: str, body: Mapping[Any, Any]) -> tuple[dict[str, Any], list[str]]:
    """Keys as written -> keys with dashes (``sflow_listen`` is ``sflow-listen``)."""
    out: dict[str, Any] = {}
    errors = []
    for raw, value in body.items():
        key = str(raw).strip().lstrip("-").replace("_", "-")
        if key in out:
            errors.append(f"{shown}: {name}.{raw}: given twice (as {key} too)")
        out[key] = value
    return out, errors


def _errors(shown: str, name: str, exc: ValidationError, options: Iterable[str],
            prog: str) -> list[str]:
    out = []
    seen: set[str] = set()
    for err in exc.errors():
        loc = [str(p) for p in err.get("loc", ())]
        key = loc[0] if loc else "(section)"
        where = key + "".join(f"[{p}]" for p in loc[1:] if p.isdigit())
        if where in seen:  # a union reports each alternative: the first says enough
            continue
        seen.add(where)
        if err.get("type") == "extra_forbidden":
            message = (f"unknown option ({prog} has no --{key}; "
                       f"allowed: {', '.join(sorted(options)) or 'none'})")
        else:
            message = str(err.get("msg", "")).removeprefix("Value error, ")
            if err.get("type") != "value_error" and "input" in err:
                message += f", got {err['input']!r}"
        out.append(f"{shown}: {name}.{where}: {message}")
    return out


def _validate(shown: str, name: str, body: Mapping[Any, Any],
              options: Mapping[str, argparse.Action], prog: str) -> Section:
    normal, errors = _normalise(shown, name, body)
    model = section_model(name, options)
    try:
        parsed = model.model_validate(normal)
    except ValidationError as exc:
        errors += _errors(shown, name, exc, options, prog)
        raise ConfigError(errors) from None
    if errors:
        raise ConfigError(errors)
    section = Section()
    by_field = {f"option_{n}": (k, a) for n, (k, a) in enumerate(options.items())}
    for name in parsed.model_fields_set:
        value = getattr(parsed, name)
        if value is None:
            continue
        key, action = by_field[name]
        dest = action.dest
        if isinstance(action, (argparse._StoreTrueAction, argparse._StoreFalseAction,
                               argparse._StoreConstAction)):
            # a flag in the file: true = given; false = not given (its default)
            value = action.const if value else action.default
        elif isinstance(action, argparse._AppendConstAction):
            value = [action.const] if value else action.default
        section.values[dest] = value
        section.keys[dest] = key
    return section


def load_section(path: str | Path, parser: argparse.ArgumentParser,
                 section: str | None = None) -> Section:
    """The options ``parser``'s command takes from the file at ``path``.

    ``common`` applies first (only ``log-format``/``log-level``), then the
    command's own section. ConfigError lists every problem, one line each.
    """
    prog = parser.prog.split()[0]
    name = section or SECTIONS.get(prog, prog.removeprefix("demon-"))
    shown = str(path)
    data = read_file(path)
    options = file_options(parser)
    result = Section()
    errors: list[str] = []
    common = {k: a for k, a in options.items() if k in COMMON_KEYS}
    for part, opts in ((COMMON, common), (name, options)):
        body = data.get(part) or {}
        try:
            got = _validate(shown, part, body, opts, prog if part != COMMON else "every command")
        except ConfigError as exc:
            errors += exc.errors
            continue
        result.values.update(got.values)
        result.keys.update({d: f"{part}.{k}" for d, k in got.keys.items()})
    errors += _exclusive_errors(shown, parser, result)
    if errors:
        raise ConfigError(errors)
    return result


def _exclusive_errors(shown: str, parser: argparse.ArgumentParser, section: Section) -> list[str]:
    out = []
    for group in parser._mutually_exclusive_groups:
        set_here = [section.keys[a.dest] for a in group._group_actions if a.dest in section.values]
        if len(set_here) > 1:
            out.append(f"{shown}: {set_here[1]}: not allowed with {set_here[0]} "
                       "(the command takes one of them)")
    return out
