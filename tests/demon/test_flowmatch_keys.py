"""sFlow-RT flow keys → RPC match (docs/rpc-protocol.md)."""

from __future__ import annotations

import pytest

from demon.flowmatch import FlowMatchError, check_keys, flow_key_to_match, split_keys

TCP = ["ipsource", "ipdestination", "tcpsourceport", "tcpdestinationport"]


def test_tcp_five_tuple():
    assert flow_key_to_match("10.0.0.1,10.0.0.2,44562,5201", TCP) == {
        "ipv4_src": "10.0.0.1", "ipv4_dst": "10.0.0.2", "tcp_src": 44562, "tcp_dst": 5201,
        "ip_proto": 6}


def test_udp_and_separator():
    keys = ["ipsource", "udpdestinationport"]
    assert flow_key_to_match("10.0.0.1_SEP_53", keys, fs="_SEP_") == {
        "ipv4_src": "10.0.0.1", "udp_dst": 53, "ip_proto": 17}


def test_ipv6_addresses_are_normalised():
    keys = ["ip6source", "ip6destination", "ip6nexthdr"]
    match = flow_key_to_match("fe80:0:0:0:0:0:0:1,2001:db8::2,6", keys)
    assert match == {"ipv6_src": "fe80::1", "ipv6_dst": "2001:db8::2", "ip_proto": 6}


def test_mask_vlan_ethertype_protocol():
    keys = ["mask:ipsource:24", "vlan", "ethernetprotocol", "ipprotocol"]
    assert flow_key_to_match("10.0.0.77,100,2048,17", keys) == {
        "ipv4_src": "10.0.0.0/24", "vlan_vid": 100, "eth_type": 2048, "ip_proto": 17}


def test_or_ports_follow_the_protocol_key():
    keys = ["ipsource", "ipprotocol", "or:tcpsourceport:udpsourceport"]
    assert flow_key_to_match("10.0.0.1,17,53", keys)["udp_src"] == 53
    assert flow_key_to_match("10.0.0.1,6,80", keys)["tcp_src"] == 80
    with pytest.raises(FlowMatchError, match="protocol 1 has no ports"):
        flow_key_to_match("10.0.0.1,1,8", keys)


def test_inputifindex_goes_through_the_port_map():
    keys = ["inputifindex", "ipsource"]
    match = flow_key_to_match("103,10.0.0.1", keys, resolve_ifindex={103: 3}.get)
    assert match == {"in_port": 3, "ipv4_src": "10.0.0.1"}
    with pytest.raises(FlowMatchError, match="ifIndex 999 is not in the port map"):
        flow_key_to_match("999,10.0.0.1", keys, resolve_ifindex={103: 3}.get)


@pytest.mark.parametrize("keys, fragment", [
    (["macsource"], "no MAC fields"),
    (["icmptype"], "cannot become a mirror match"),
    (["ipsource", "ip6destination"], "mix IPv4 and IPv6"),
    (["tcpsourceport", "udpdestinationport"], "mix TCP and UDP"),
    (["ipsource", "ipsource"], "both set ipv4_src"),
    (["ipsource", "or:tcpsourceport:udpsourceport"], "need ipprotocol"),
    (["or:tcpsourceport:icmptype"], "only or:"),
    (["mask:ipsource:40"], "0..32"),
    (["mask:macsource:8"], "address key"),
    ([], "no keys"),
])
def test_keys_refused_at_load_time(keys, fragment):
    with pytest.raises(FlowMatchError, match=fragment):
        check_keys(keys)


@pytest.mark.parametrize("flow_key, fragment", [
    ("10.0.0.1,10.0.0.2,44562", "has 3 values"),
    ("10.0.0.1,10.0.0.2,44562,99999", "outside 0..65535"),
    ("10.0.0.1,not-an-ip,1,2", "not an IP address"),
    ("10.0.0.1,::1,1,2", "not an IPv4 address"),
    ("10.0.0.1,10.0.0.2,http,2", "not a number"),
])
def test_bad_flow_key_values(flow_key, fragment):
    with pytest.raises(FlowMatchError, match=fragment):
        flow_key_to_match(flow_key, TCP)


def test_protocol_contradiction():
    with pytest.raises(FlowMatchError, match="protocol 17 is not 6"):
        flow_key_to_match("17,80", ["ipprotocol", "tcpdestinationport"])
    with pytest.raises(FlowMatchError, match="protocol 17 contradicts"):
        flow_key_to_match("80,17", ["tcpdestinationport", "ipprotocol"])


def test_split_keys():
    assert split_keys("ipsource, ipdestination,") == ["ipsource", "ipdestination"]
    assert split_keys(["a ", "b"]) == ["a", "b"]
