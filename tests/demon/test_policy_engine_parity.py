"""A policy that passes ``--check`` is one the embedded engine accepts: the policy
layer validates ``filter`` and ``keys`` with the engine's own definition parser
(``sflow.flowdef``), so there is no second, lighter parser to disagree with it.

Each case below passed ``--check`` and was then refused by the engine at start or
reload (RE2 refuses backreferences and lookaround, the engine caps a filter at
2,000 characters, a key function takes the arguments the engine says it does)."""

from __future__ import annotations

import io
from pathlib import Path

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from demon import cli
from demon.policy import load_policy_set, parse_policy
from sflow import keyfuncs
from sflow.flowdef import DefinitionError, parse_flow

BASE = {"name": "p", "kind": "elephant", "keys": "ipsource", "threshold": "1Mbps"}

#: filters the engine refuses (the part after "filter: " of its message)
ENGINE_REFUSES = {
    "backreference": ("macsource~(a)\\1", "bad regular expression"),
    "lookahead": ("ipsource~(?=10).*", "bad regular expression"),
    "too_long": ("ipsource=" + "1" * 2100, "longer than 2000 characters"),
    "dangling_comma": ("ipsource=10.0.0.1,", "missing value"),
    "or_one_key": ("or:ipsource=10.0.0.1", "or: needs two or more keys"),
    "mask_no_bits": ("mask:ipsource:x=10.0.0.0", "mask: takes a key and a prefix length"),
    "country_without_table": ("country:ipsource=US", "needs an IP-to-AS/country table"),
    "oui_unsupported": ("oui:macsource=x", "not supported by the embedded engine"),
    "nested_deeper": ("(" * 40 + "ipsource=1" + ")" * 40, "nested deeper than 32"),
}


def engine_refusal(body: dict) -> str | None:
    """The engine's answer to a definition, compiled as its HTTP API compiles one."""
    keyfuncs.register()
    with keyfuncs.bound(keyfuncs.KeyContext()):
        try:
            parse_flow("demon_p", body)
        except DefinitionError as exc:
            return str(exc)
    return None


@pytest.mark.parametrize("case", sorted(ENGINE_REFUSES))
def test_check_refuses_what_the_engine_refuses(tmp_path: Path, case: str) -> None:
    text, fragment = ENGINE_REFUSES[case]
    refusal = engine_refusal({"keys": "ipsource", "filter": text})
    assert refusal is not None and fragment in refusal
    quoted = text.replace("'", "''")
    (tmp_path / "p.yaml").write_text(
        "name: p\nkind: elephant\nkeys: ipsource\nthreshold: 1Mbps\n" f"filter: '{quoted}'\n")
    out, err = io.StringIO(), io.StringIO()
    assert cli.main(["--policies", str(tmp_path), "--check"], stdout=out, stderr=err) == \
        cli.EXIT_CONFIG
    lines = err.getvalue().splitlines()
    assert lines[0].startswith(f"{tmp_path / 'p.yaml'}: policy 'p': field 'filter': "
                               "does not parse: "), lines
    assert fragment in lines[0] and len(lines) == 2, lines


def test_keys_are_parsed_by_the_engine_too() -> None:
    # The engine reads `[...]` as a nested key expression: an unbalanced one is refused.
    _, errors = parse_policy({**BASE, "keys": ["ipsource", "[ipdestination"]}, "x.yaml")
    assert errors and errors[0].startswith("x.yaml: policy 'p': field 'keys': "), errors
    assert engine_refusal({"keys": "ipsource,[ipdestination"}) is not None


def test_flow_spec_of_every_shipped_policy_is_accepted_by_the_engine() -> None:
    shipped = Path(__file__).parent.parent.parent / "policies"
    for directory in (shipped, shipped / "lab"):
        for policy in load_policy_set(directory).policies.values():
            spec = policy.flow_spec()
            if spec is not None:
                assert engine_refusal(spec) is None, (policy.name, spec)


PIECES = st.sampled_from([
    "ipsource", "ipdestination", "tcpsourceport", "macsource", "ipsourc", "or:", "mask:", "null:",
    "range:", "group:", "country:", "link:", "oui:", ":", "[", "]", "=", "!=", "~", "!~", "&", "|",
    "(", ")", ",", "10.0.0.1", "24", "x", " ", ".*", "\\1", "(?=", "a+", "{2}", "\\", "*",
])
FILTERS = st.lists(PIECES, min_size=1, max_size=14).map("".join)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(FILTERS)
@example("ipsource  ipsource=")  # the engine's reason quotes the filter with its two spaces
def test_any_filter_check_accepts_the_engine_accepts(text: str) -> None:
    _, errors = parse_policy({**BASE, "filter": text}, "x.yaml")
    refusal = engine_refusal({"keys": "ipsource", "filter": text})
    if not errors:
        assert refusal is None, (text, refusal)
    elif refusal is not None:
        # refused by both: the policy's line carries the engine's reason
        assert any(refusal.removeprefix("filter: ") in line for line in errors), (errors, refusal)
