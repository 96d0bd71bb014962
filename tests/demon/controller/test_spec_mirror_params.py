"""install_mirror params → MirrorSpec: defaults, prerequisites, contradictions, cookies."""

import pytest
from hypothesis import given
from hypothesis import strategies as st

from demon.controller.spec import (BASELINE_COOKIE, STATIC_COOKIE, SpecError, allocate_cookie,
                                   cookie_for_tap, is_mirror_cookie, is_project_cookie,
                                   normalise_match, parse_mirror_params, reverse_match)

BASE = {"tap_id": "t1", "dpid": 1, "match": {"ipv4_src": "10.0.0.1", "tcp_dst": 80}, "copy_port": 6}


def test_defaults_and_prerequisites() -> None:
    spec = parse_mirror_params(BASE)
    assert spec.match == {"eth_type": 0x0800, "ip_proto": 6, "ipv4_src": "10.0.0.1", "tcp_dst": 80}
    assert (spec.idle_timeout, spec.hard_timeout, spec.priority) == (30, 300, 40000)
    assert spec.vlan_tag is None and spec.bidirectional is False
    assert spec.to_params()["match"] == spec.match


def test_ipv6_and_udp_prerequisites() -> None:
    spec = parse_mirror_params({**BASE, "match": {"ipv6_dst": "fc00::1", "udp_src": 53}})
    assert spec.match["eth_type"] == 0x86DD and spec.match["ip_proto"] == 17


def test_prefix_is_normalised() -> None:
    assert normalise_match({"ipv4_dst": "10.0.0.7/24"})["ipv4_dst"] == "10.0.0.0/24"
    assert normalise_match({"ipv4_dst": "10.0.0.7/32"})["ipv4_dst"] == "10.0.0.7"


@pytest.mark.parametrize("change, field", [
    ({"match": {"tcp_dst": 70000}}, "params.match.tcp_dst"),
    ({"match": {"ipv4_src": "10.0.0.1", "eth_type": 0x86DD}}, "params.match.eth_type"),
    ({"match": {"tcp_dst": 1, "ip_proto": 17}}, "params.match.ip_proto"),
    ({"match": {"tcp_dst": 1, "udp_dst": 1}}, "params.match.udp_dst"),
    ({"match": {"ipv4_src": "fc00::1"}}, "params.match.ipv4_src"),
    ({"match": {"ipv4_src": "10.0.0.1", "ipv6_dst": "fc00::1"}}, "params.match.ipv6_dst"),
    ({"match": {"colour": 1}}, "params.match.colour"),
    ({"match": {}}, "params.match"),
    ({"match": {"in_port": True}}, "params.match.in_port"),
    ({"tap_id": "has space"}, "params.tap_id"),
    ({"tap_id": "x" * 65}, "params.tap_id"),
    ({"vlan_tag": 4095}, "params.vlan_tag"),
    ({"hard_timeout": 0}, "params.hard_timeout"),
    ({"bidirectional": "yes"}, "params.bidirectional"),
    ({"copy_port": 0}, "params.copy_port"),
    ({"extra": 1}, "params.extra"),
])
def test_bad_params_name_the_field(change: dict, field: str) -> None:
    with pytest.raises(SpecError) as info:
        parse_mirror_params({**BASE, **change})
    assert info.value.field == field
    assert str(info.value).startswith(field + ":")


def test_missing_required() -> None:
    params = dict(BASE)
    del params["copy_port"]
    with pytest.raises(SpecError, match="params.copy_port: is required"):
        parse_mirror_params(params)


def test_openflow10_refuses_ipv6_and_wide_ports() -> None:
    with pytest.raises(SpecError, match="OpenFlow 1.3"):
        parse_mirror_params({**BASE, "match": {"ipv6_src": "fc00::1"}}, openflow="1.0")
    with pytest.raises(SpecError, match="params.copy_port"):
        parse_mirror_params({**BASE, "copy_port": 0x10000}, openflow="1.0")


def test_reverse_match_swaps_and_drops_in_port() -> None:
    match = normalise_match({"in_port": 1, "ipv4_src": "10.0.0.1", "ipv4_dst": "10.0.0.2",
                             "tcp_src": 1000, "tcp_dst": 80})
    assert reverse_match(match) == {"eth_type": 0x0800, "ip_proto": 6, "ipv4_src": "10.0.0.2",
                                    "ipv4_dst": "10.0.0.1", "tcp_src": 80, "tcp_dst": 1000}
    spec = parse_mirror_params({**BASE, "bidirectional": True})
    assert [d for d, _ in spec.directions()] == ["forward", "reverse"]


def test_cookie_scheme() -> None:
    cookie = cookie_for_tap("t1")
    assert cookie == cookie_for_tap("t1") and cookie >> 32 == 0xDE30
    assert is_mirror_cookie(cookie) and is_project_cookie(BASELINE_COOKIE)
    assert not is_mirror_cookie(BASELINE_COOKIE) and not is_mirror_cookie(STATIC_COOKIE)
    assert not is_project_cookie(0x1234)
    # a collision with another tap's cookie probes on; the tap's own cookie is kept
    taken = {cookie: "someone-else"}
    other = allocate_cookie("t1", taken)
    assert other != cookie and is_mirror_cookie(other)
    assert allocate_cookie("t1", {cookie: "t1"}) == cookie


@given(st.text(alphabet="abcXYZ019_.:-", min_size=1, max_size=64))
def test_every_valid_tap_id_gets_a_mirror_cookie(tap_id: str) -> None:
    assert is_mirror_cookie(cookie_for_tap(tap_id))
    assert parse_mirror_params({**BASE, "tap_id": tap_id}).tap_id == tap_id
