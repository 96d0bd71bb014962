"""Neutral matches and actions ⇄ OpenFlow 1.0 fields and action tuples."""

from __future__ import annotations

import pytest

from demon.controller import of10
from demon.controller.spec import SpecError, normalise_match, parse_mirror_params


@pytest.mark.parametrize("neutral, fields", [
    ({"eth_type": 0x0800, "ip_proto": 6, "ipv4_src": "10.0.0.1", "ipv4_dst": "10.0.0.0/24", "tcp_src": 1,
      "tcp_dst": 80},
     {"dl_type": 0x0800, "nw_proto": 6, "nw_src": "10.0.0.1", "nw_dst": "10.0.0.0/24", "tp_src": 1, "tp_dst": 80}),
    ({"in_port": 3, "eth_type": 0x0800, "ip_proto": 17, "udp_dst": 53},
     {"in_port": 3, "dl_type": 0x0800, "nw_proto": 17, "tp_dst": 53}),
    ({"vlan_vid": 10, "in_port": 1}, {"dl_vlan": 10, "in_port": 1}),
])
def test_match_round_trip(neutral: dict, fields: dict) -> None:
    assert of10.to_of10_match(neutral) == fields
    assert of10.from_of10_match(fields) == of10.ordered(neutral)
    assert of10.canonical(of10.from_of10_match({**fields, "dl_src": None})) == of10.canonical(neutral)


def test_slash_32_is_the_plain_address() -> None:
    assert of10.to_of10_match({"ipv4_src": "10.0.0.1/32"}) == {"nw_src": "10.0.0.1"}
    assert of10.canonical({"ipv4_src": "10.0.0.1/32"}) == of10.canonical({"ipv4_src": "10.0.0.1"})


@pytest.mark.parametrize("match, field", [
    ({"ipv6_src": "2001:db8::1"}, "params.match.ipv6_src"),
    ({"eth_type": 0x86DD}, "params.match.eth_type"),
    ({"in_port": 70000}, "params.match.in_port"),
    ({"eth_dst": "01:00:00:00:00:00/01:00:00:00:00:00"}, "params.match.eth_dst"),
])
def test_unexpressible_matches_name_the_field(match: dict, field: str) -> None:
    with pytest.raises(of10.Of10Error) as info:
        of10.to_of10_match(match)
    assert info.value.field == field and "OpenFlow" in str(info.value)


def test_ipv6_refused_at_validation_for_openflow_1_0() -> None:
    with pytest.raises(SpecError, match="ipv6_dst.*1.3"):
        parse_mirror_params({"tap_id": "t", "dpid": 1, "copy_port": 6, "match": {"ipv6_dst": "::1"}}, "1.0")
    with pytest.raises(SpecError, match="eth_type"):
        normalise_match({"eth_type": 0x86DD, "ip_proto": 6}, "1.0")


def test_actions_round_trip() -> None:
    actions = ("NORMAL", "output:6", "push_vlan:0x8100", "set_field:vlan_vid=10", "output:7", "CONTROLLER")
    wire = of10.to_of10_actions(actions)
    assert wire == [("output", of10.OFPP_NORMAL), ("output", 6), ("set_vlan_vid", 10), ("output", 7),
                    ("output", of10.OFPP_CONTROLLER)]
    assert of10.from_of10_actions(wire) == actions
    assert of10.from_of10_actions([("strip_vlan",)]) == ("pop_vlan",)
    assert of10.to_of10_actions(()) == []


@pytest.mark.parametrize("actions", [("group:1",), ("push_vlan:0x8100",), ("set_field:ipv4_src=1.2.3.4",)])
def test_unexpressible_actions(actions: tuple) -> None:
    with pytest.raises(of10.Of10Error, match="actions"):
        of10.to_of10_actions(actions)


def test_packet_matching() -> None:
    match = {"eth_type": 0x0800, "ipv4_src": "10.0.0.0/30", "tcp_dst": 80}
    packet = {"eth_type": 0x0800, "ip_proto": 6, "ipv4_src": "10.0.0.3", "tcp_dst": 80}
    assert of10.matches_packet(match, packet)
    assert not of10.matches_packet(match, {**packet, "ipv4_src": "10.0.0.4"})
    assert not of10.matches_packet(match, {k: v for k, v in packet.items() if k != "tcp_dst"})


def test_covers_and_intersect() -> None:
    wide, narrow = {"ipv4_src": "10.0.0.0/24"}, {"ipv4_src": "10.0.0.7", "tcp_dst": 80}
    assert of10.covers(wide, narrow) and not of10.covers(narrow, wide)
    assert of10.intersect(wide, narrow) == {"ipv4_src": "10.0.0.7", "tcp_dst": 80}
    assert of10.intersect({"ipv4_src": "10.0.0.0/25"}, {"ipv4_src": "10.0.0.128/25"}) is None
    assert of10.intersect({"tcp_dst": 80}, {"tcp_dst": 81}) is None
    assert of10.intersect({"ip_proto": 6}, {"ip_proto": 17}) is None
