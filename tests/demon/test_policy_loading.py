"""Policy files: every field, every error path (file, policy, field), the shipped examples.

Broken sets live in ``fixtures/policies/<case>/`` beside ``expected.txt``: the
exact error lines, ``{dir}`` standing for the case directory (a line ending in
``YAML:`` is a prefix: the parser's own wording follows it).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from demon.policy import (ElephantPolicy, GlobalLimits, PolicyError, TopTalkersPolicy,
                          load_policies, load_policy_set, parse_policy)

HERE = Path(__file__).parent
FIXTURES = HERE / "fixtures" / "policies"
SHIPPED = HERE.parent.parent / "policies"
CASES = sorted(p.name for p in FIXTURES.iterdir() if p.is_dir())


@pytest.mark.parametrize("case", CASES)
def test_broken_sets_report_every_error(case):
    directory = FIXTURES / case
    expected = [line.replace("{dir}", str(directory))
                for line in (directory / "expected.txt").read_text().splitlines() if line]
    with pytest.raises(PolicyError) as info:
        load_policies(directory)
    got = info.value.errors
    assert len(got) == len(expected), "\n".join(got)
    for line, want in zip(got, expected):
        assert line.startswith(want) if want.endswith("YAML:") else line == want
    assert str(info.value) == "\n".join(got)


def test_shipped_examples_load():
    loaded = load_policy_set(SHIPPED)
    pols = loaded.policies
    assert {"elephant_tcp", "top_udp_talkers", "web_elephant", "elephant_ipv6"} <= set(pols)
    lab = pols["elephant_tcp"]
    assert isinstance(lab, ElephantPolicy)
    # the lab's elephant (iperf3, 100-200 Mbit/s) fires, its mice (<= 20 Mbit/s) do not
    assert 20e6 < lab.threshold < 100e6
    assert lab.threshold_spec() == {"metric": "demon_elephant_tcp", "value": lab.threshold / 8,
                                    "byFlow": True, "timeout": 2}
    assert lab.flow_spec()["keys"] == "ipsource,ipdestination,tcpsourceport,tcpdestinationport"
    assert isinstance(pols["top_udp_talkers"], TopTalkersPolicy)
    assert pols["top_udp_talkers"].threshold_spec() is None
    assert pols["top_udp_talkers"].vlan_tag == 100  # named destination resolved
    assert pols["web_elephant"].threshold == pytest.approx(100e6)  # 10% of 1 Gbit/s
    assert pols["web_elephant"].flow_spec()["filter"] == "tcpsourceport=80,443"
    assert loaded.limits.capture_capacity == 1e9 and loaded.limits.max_taps == 8


def make(**fields):
    data = {"name": "p", "kind": "elephant", "keys": "ipsource", "threshold": "1Mbps", **fields}
    data = {k: v for k, v in data.items() if v is not None}
    return parse_policy(data, "x.yaml")


def error_of(**fields) -> str:
    pol, errors = make(**fields)
    assert pol is None and len(errors) == 1, errors
    return errors[0]


def test_defaults():
    pol, errors = make()
    assert errors == []
    assert (pol.value, pol.t, pol.fs, pol.interval, pol.duration, pol.max_duration) == \
        ("bytes", 2.0, ",", 2.0, 60.0, 300.0)
    assert (pol.max_taps, pol.holddown, pol.priority, pol.idle_timeout, pol.sustain) == \
        (4, 30.0, 100, 30.0, 0.0)
    assert pol.bidirectional is False and pol.enabled is True and pol.vlan_tag is None
    assert pol.flow_name == "demon_p" and pol.keys == ["ipsource"]


@pytest.mark.parametrize("field, value, check", [
    ("description", "hi", lambda p: p.description == "hi"),
    ("enabled", False, lambda p: p.enabled is False),
    ("keys", ["ip6source", "ip6destination"], lambda p: p.keys == ["ip6source", "ip6destination"]),
    ("value", "bps", lambda p: p.min_value == 1e6 and p.to_bps(5) == 5),
    ("filter", "ipprotocol=6&(tcpsourceport=80|tcpdestinationport=80)",
     lambda p: p.flow_spec()["filter"].startswith("ipprotocol")),
    ("t", "500ms", lambda p: p.t == 0.5 and p.flow_spec()["t"] == 0.5),
    ("fs", "_SEP_", lambda p: p.flow_spec()["fs"] == "_SEP_"),
    ("interval", "10s", lambda p: p.interval == 10 and p.stale_after == 30),
    ("duration", "2m", lambda p: p.duration == 120),
    ("max_duration", "1h", lambda p: p.max_duration == 3600),
    ("bidirectional", True, lambda p: p.bidirectional),
    ("capture", {"vlan": 42}, lambda p: p.vlan_tag == 42),
    ("max_taps", 7, lambda p: p.max_taps == 7),
    ("holddown", "0s", lambda p: p.holddown == 0),
    ("priority", 0, lambda p: p.priority == 0),
    ("idle_timeout", 0, lambda p: p.idle_timeout == 0),
    ("threshold", "12.5MB/s", lambda p: p.threshold == 100e6 and p.min_value == 12.5e6),
    ("threshold", 125000, lambda p: p.threshold == 1e6),
    ("sustain", "5s", lambda p: p.sustain_s == 5),
])
def test_each_field_is_read(field, value, check):
    pol, errors = make(**{field: value})
    assert errors == [] and check(pol)


def test_percentage_threshold_needs_and_uses_link_speed():
    pol, _ = make(threshold="10%", link_speed="10Mbps")
    assert pol.threshold == pytest.approx(1e6)
    assert pol.threshold_spec()["value"] == pytest.approx(125000)  # sFlow-RT: bytes/s
    assert "set link_speed too" in error_of(threshold="10%")
    assert "at most 100%" in error_of(threshold="150%", link_speed="1Gbps")


def test_top_talkers_fields():
    pol, errors = make(kind="top_talkers", threshold=None, top=3, min_rate="8Mbps",
                       value="bps")
    assert errors == []
    assert pol.max_flows == 3 and pol.min_value == 8e6 and pol.flow_spec()["n"] == 5
    assert "field 'top'" in error_of(kind="top_talkers", threshold=None, top=0)
    assert "field 'sustain': unknown field" in error_of(kind="top_talkers", threshold=None,
                                                       sustain="1s")


@pytest.mark.parametrize("fields, where, fragment", [
    ({"threshold": None}, "threshold", "required"),
    ({"kind": None}, "kind", "required (one of: elephant, top_talkers, watch_list, fan_in, "
                             "scheduled)"),
    ({"keys": None}, "keys", "required"),
    ({"name": "no spaces"}, "name", "should match pattern"),
    ({"keys": "ipsource,frobnicate"}, "keys", "'frobnicate' is not an sFlow-RT flow key"),
    ({"keys": "ipsource,tcpflags"}, "keys", "cannot become a mirror match"),
    ({"value": "frames"}, "value", "'bytes' or 'bps'"),
    ({"filter": "ipsource"}, "filter", "expected = != ~ or !~ at 8"),
    ({"filter": "ipsource=10.0.0.1&"}, "filter", "expected a comparison at 18"),
    ({"filter": "ipsource="}, "filter", "missing value at 9"),
    ({"filter": "bogus:ipsource:x=1"}, "filter", "unknown key function"),
    ({"filter": "ipsourc=1"}, "filter", "did you mean ipsource"),
    ({"filter": "a=1)"}, "filter", "unexpected ')' at 3"),
    ({"t": "700s"}, "t", "outside 200ms..10m"),
    ({"fs": ""}, "fs", "at least 1 character"),
    ({"interval": "-1s"}, "interval", "negative"),
    ({"duration": 0}, "duration", "outside 1s..65535s"),
    ({"duration": "10m"}, "max_duration", "shorter than duration"),
    ({"capture": "nowhere"}, None, None),  # resolved by the set loader (see fixtures)
    ({"capture": {"vlan": 0}}, "capture.vlan", "greater than or equal to 1"),
    ({"capture": {"colour": 1}}, "capture.colour", "unknown field"),
    ({"max_taps": 0}, "max_taps", "greater than or equal to 1"),
    ({"holddown": "x"}, "holddown", "not a duration"),
    ({"priority": -1}, "priority", "greater than or equal to 0"),
    ({"idle_timeout": 70000}, "idle_timeout", "0..65535"),
    ({"enabled": "perhaps"}, "enabled", "valid boolean"),
    ({"threshold": "0Mbps"}, "threshold", "above 0"),
    ({"threshold": "lots"}, "threshold", "not a rate"),
    ({"link_speed": "-1Gbps", "threshold": "10%"}, "link_speed", "negative"),
    ({"sustain": "-2s"}, "sustain", "negative"),
    ({"bidirectional": True, "keys": "inputifindex,ipsource"}, "bidirectional", "inputifindex"),
])
def test_field_errors_name_file_policy_and_field(fields, where, fragment):
    pol, errors = make(**fields)
    if where is None:
        assert errors == []
        return
    assert pol is None
    name = fields.get("name", "p")
    prefix = f"x.yaml: policy '{name}': field '{where}': "
    assert any(e.startswith(prefix) and fragment in e for e in errors), errors


def test_models_are_frozen():
    pol, _ = make()
    with pytest.raises(Exception):
        pol.threshold = 5  # type: ignore[misc]


def test_global_limits_defaults_and_units(tmp_path):
    assert GlobalLimits().capture_capacity is None and GlobalLimits().max_taps == 32
    (tmp_path / "_global.yaml").write_text("capture_capacity: 1.5Gbit/s\nretry_backoff: 500ms\n"
                                           "allow_empty: true\n")
    loaded = load_policy_set(tmp_path)
    assert loaded.policies == {}
    assert loaded.limits.capture_capacity == 1.5e9 and loaded.limits.retry_backoff == 0.5


def test_not_a_directory(tmp_path):
    with pytest.raises(PolicyError, match="not a directory"):
        load_policies(tmp_path / "missing")


def test_hidden_and_non_yaml_files_are_skipped(tmp_path):
    (tmp_path / ".draft.yaml").write_text("garbage: [")
    (tmp_path / "notes.md").write_text("# hi")
    (tmp_path / "one.yml").write_text("kind: elephant\nkeys: ipsource\nthreshold: 1Mbps\n")
    assert list(load_policies(tmp_path)) == ["one"]
