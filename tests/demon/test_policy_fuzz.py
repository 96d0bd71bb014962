"""Fuzzing the policy loader: whatever a directory holds, ``load_policy_set`` returns a
set whose every value is usable, or raises ``PolicyError`` whose lines each name a
file; never another exception (a reload must not crash the daemon)."""

from __future__ import annotations

import json
import math
import tempfile
from pathlib import Path

import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from demon.policy import KINDS, PolicyError, load_policy_set
from demon.policy_base import MAX_RATE, OFP_MAX_TIMEOUT

FIELDS = sorted({name for model in KINDS.values() for name in model.model_fields}
                | {"bogus", "link_speed", "top"})
NUMBERS = st.one_of(
    st.integers(min_value=-10**20, max_value=10**20),
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from([0, 1, 65535, 65536, 1e300, -1e300, 1e-9, 2**63]))
WORDS = st.one_of(
    st.sampled_from(["1Mbps", "1e300Tbps", "10%", "150%", "5s", "1ms", "1e-9", "1e300", "2m",
                     "ipsource", "ipsource,ipdestination", "mask:ipdestination:24",
                     "tcpdestinationport=23", "(" * 40 + "ipsource=1" + ")" * 40, "1/2", "x/y",
                     "*/5 * * * *", "61 * * * *", "0 2 * * 8", "2025-06-01T02:00:00Z",
                     "Europe/Paris", "Nowhere/Land", "elephant", "fan_in", "watch_list",
                     "scheduled", "top_talkers", "10.0.0.0", "", ".inf", "nan", "10MB"]),
    st.text(max_size=30))
VALUES = st.recursive(st.one_of(NUMBERS, WORDS, st.booleans(), st.none()),
                      lambda inner: st.one_of(st.lists(inner, max_size=3),
                                              st.dictionaries(st.sampled_from(FIELDS), inner,
                                                              max_size=3)),
                      max_leaves=6)
POLICY = st.fixed_dictionaries(
    {"kind": st.sampled_from(sorted(KINDS) + ["mouse"])},
    optional={name: VALUES for name in FIELDS if name != "kind"})


def _check(directory: Path) -> None:
    try:
        loaded = load_policy_set(directory)
    except PolicyError as exc:
        assert exc.errors and all(str(directory) in line for line in exc.errors), exc.errors
        assert all("\n" not in line for line in exc.errors)
        return
    for pol in loaded.policies.values():
        for name in ("duration", "max_duration", "holddown", "interval", "t", "sustain"):
            value = getattr(pol, name, 0.0)
            assert math.isfinite(value) and 0 <= value <= OFP_MAX_TIMEOUT * 10, (name, value)
        assert pol.max_duration + loaded.limits.hard_timeout_grace <= OFP_MAX_TIMEOUT
        for name in ("threshold", "min_rate", "rate", "link_speed"):
            value = getattr(pol, name, None)
            assert value is None or (math.isfinite(value) and 0 <= value <= MAX_RATE)
        if pol.uses_engine:
            json.dumps(pol.flow_spec(), allow_nan=False)
            json.dumps(pol.threshold_spec(), allow_nan=False)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(POLICY, min_size=1, max_size=3))
def test_structured_policies_load_or_fail_by_line(policies: list[dict]) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        directory = Path(tmp)
        for n, pol in enumerate(policies):
            pol = {**pol, "name": f"p{n}"}
            (directory / f"p{n}.yaml").write_text(yaml.safe_dump(pol, allow_unicode=True))
        _check(directory)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.text(max_size=300), st.text(max_size=100))
def test_any_text_loads_or_fails_by_line(policy_text: str, global_text: str) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        directory = Path(tmp)
        (directory / "p.yaml").write_text(policy_text)
        (directory / "_global.yaml").write_text(global_text)
        _check(directory)


@settings(max_examples=50, deadline=None)
@given(st.integers(min_value=1, max_value=5000), st.sampled_from(["[", "{a: ", "- "]))
def test_deep_nesting_is_one_line(depth: int, opener: str) -> None:
    closer = {"[": "]", "{a: ": "}", "- ": ""}[opener]
    with tempfile.TemporaryDirectory() as tmp:
        directory = Path(tmp)
        body = opener * depth + "1" + closer * depth if opener != "- " else \
            "\n".join("  " * i + "- " for i in range(depth)) + "1"
        (directory / "p.yaml").write_text("name: p\nkind: elephant\nkeys: ipsource\n"
                                          "threshold: 1Mbps\ndescription: " + body + "\n")
        _check(directory)
