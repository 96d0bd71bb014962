"""Flow keys from hand-built sampled headers and samples (sflow.headers, sflow.keys)."""

from __future__ import annotations

import socket
import struct

from hypothesis import given, settings
from hypothesis import strategies as st

from sflow.headers import parse_header
from sflow.keys import datasource_of, interface_key, sample_keys
from sflow.model import FlowSample, Interface, Record

MAC_A = bytes.fromhex("00163e2b0c12")
MAC_B = bytes.fromhex("0a0b0c0d0e0f")


def eth(etype: int, *tags: tuple[int, int, int]) -> bytes:
    """Ethernet header; ``tags`` = (tpid, vlan, pcp), outermost first."""
    out = MAC_B + MAC_A
    for tpid, vlan, pcp in tags:
        out += struct.pack(">HH", tpid, pcp << 13 | vlan)
    return out + struct.pack(">H", etype)


def ipv4(proto: int, payload: bytes, src: str = "10.0.0.1", dst: str = "10.0.0.2",
         tos: int = 0, frag: int = 0) -> bytes:
    return struct.pack(">BBHHHBBH4s4s", 0x45, tos, 20 + len(payload), 1, frag, 64, proto, 0,
                       socket.inet_aton(src), socket.inet_aton(dst)) + payload


def ipv6(nxt: int, payload: bytes, src: str = "2001:db8::1", dst: str = "2001:db8::2",
         tclass: int = 0) -> bytes:
    first = 6 << 28 | tclass << 20
    return (struct.pack(">IHBB", first, len(payload), nxt, 64) + socket.inet_pton(socket.AF_INET6, src)
            + socket.inet_pton(socket.AF_INET6, dst) + payload)


def tcp(sport: int, dport: int, flags: int) -> bytes:
    return struct.pack(">HHIIBBHHH", sport, dport, 1, 0, 5 << 4 | flags >> 8, flags & 0xFF, 65535, 0, 0)


def udp(sport: int, dport: int, payload: bytes = b"") -> bytes:
    return struct.pack(">HHHH", sport, dport, 8 + len(payload), 0) + payload


def icmp(kind: int, code: int) -> bytes:
    return struct.pack(">BBHI", kind, code, 0, 0)


def test_ethernet_ipv4_tcp() -> None:
    frame = eth(0x0800) + ipv4(6, tcp(51792, 5201, 0x012), tos=0x20)
    keys = parse_header(1, frame)
    assert keys == {
        "macsource": "00163E2B0C12", "macdestination": "0A0B0C0D0E0F", "ethernetprotocol": "2048",
        "ipsource": "10.0.0.1", "ipdestination": "10.0.0.2", "ipprotocol": "6", "iptos": "32",
        "ipbytes": "40", "tcpsourceport": "51792", "tcpdestinationport": "5201",
        "tcpflags": "000010010",  # ACK + SYN
        "stack": "eth.ip.tcp",
    }


def test_tcp_ns_flag_is_the_ninth_bit() -> None:
    keys = parse_header(1, eth(0x0800) + ipv4(6, tcp(1, 2, 0x100 | 0x001)))
    assert keys["tcpflags"] == "100000001"


def test_single_vlan_ipv6_udp() -> None:
    frame = eth(0x86DD, (0x8100, 10, 5)) + ipv6(17, udp(5353, 53), tclass=0xB8)
    keys = parse_header(1, frame)
    assert keys["stack"] == "eth.dot1q.ip6.udp"
    assert (keys["vlan"], keys["priority"]) == ("10", "5")
    assert keys["ip6source"] == "2001:db8::1" and keys["ip6destination"] == "2001:db8::2"
    assert keys["ip6nexthdr"] == "17" and keys["ip6tos"] == str(0xB8)
    assert (keys["udpsourceport"], keys["udpdestinationport"]) == ("5353", "53")
    assert "ipsource" not in keys and "tcpsourceport" not in keys


def test_qinq_reports_the_inner_vlan() -> None:
    for outer in (0x88A8, 0x9100, 0x8100):
        frame = eth(0x0800, (outer, 100, 1), (0x8100, 200, 3)) + ipv4(17, udp(1, 2))
        keys = parse_header(1, frame)
        assert (keys["vlan"], keys["priority"]) == ("200", "3"), hex(outer)
        assert keys["stack"] == "eth.dot1q.dot1q.ip.udp"
        assert keys["ethernetprotocol"] == "2048"


def test_ipv6_extension_headers_are_walked() -> None:
    hop_by_hop = bytes([60, 0]) + bytes(6)            # next: destination options, 8 bytes
    dest_opts = bytes([43, 1]) + bytes(14)            # next: routing, 16 bytes
    routing = bytes([6, 0]) + bytes(6)                # next: TCP
    frame = eth(0x86DD) + ipv6(0, hop_by_hop + dest_opts + routing + tcp(443, 40000, 0x018))
    keys = parse_header(1, frame)
    assert keys["ip6nexthdr"] == "6"
    assert keys["tcpsourceport"] == "443" and keys["tcpdestinationport"] == "40000"
    assert keys["tcpflags"] == "000011000"
    assert keys["stack"] == "eth.ip6.tcp"


def test_ipv6_later_fragment_has_no_ports() -> None:
    frag = struct.pack(">BBHI", 17, 0, 185 << 3, 7)  # offset 185*8, next header UDP
    keys = parse_header(1, eth(0x86DD) + ipv6(44, frag + b"\x00" * 16))
    assert keys["ip6nexthdr"] == "17"
    assert "udpsourceport" not in keys
    first = struct.pack(">BBHI", 17, 0, 1, 7)  # offset 0, more fragments
    keys = parse_header(1, eth(0x86DD) + ipv6(44, first + udp(1000, 2000)))
    assert keys["udpdestinationport"] == "2000"


def test_icmpv6() -> None:
    keys = parse_header(1, eth(0x86DD) + ipv6(58, icmp(128, 0)))
    assert (keys["icmp6type"], keys["icmp6code"]) == ("128", "0")
    assert keys["stack"] == "eth.ip6.icmp6"
    assert "icmptype" not in keys  # sFlow-RT keeps ICMPv6 in its own keys


def test_ipv4_later_fragment_has_no_ports() -> None:
    keys = parse_header(1, eth(0x0800) + ipv4(17, udp(1, 2), frag=100))
    assert keys["ipprotocol"] == "17" and "udpsourceport" not in keys
    assert keys["stack"] == "eth.ip"


def test_raw_ipv4_protocol_11() -> None:
    keys = parse_header(11, ipv4(1, icmp(8, 0), src="192.0.2.1", dst="198.51.100.7"))
    assert keys == {"ipsource": "192.0.2.1", "ipdestination": "198.51.100.7", "ipprotocol": "1",
                    "iptos": "0", "ipbytes": "28", "icmptype": "8", "icmpcode": "0",
                    "stack": "ip.icmp"}


def test_raw_ipv6_protocol_12() -> None:
    keys = parse_header(12, ipv6(6, tcp(22, 50000, 0x010)))
    assert keys["stack"] == "ip6.tcp" and keys["tcpsourceport"] == "22"
    assert "macsource" not in keys


def test_arp_and_unknown_protocols() -> None:
    assert parse_header(1, eth(0x0806) + bytes(28))["stack"] == "eth.arp"
    assert parse_header(1, eth(0x88CC) + bytes(20)) == {
        "macsource": "00163E2B0C12", "macdestination": "0A0B0C0D0E0F",
        "ethernetprotocol": str(0x88CC), "stack": "eth"}
    assert parse_header(3, b"\x00" * 64) == {}  # token ring: not decoded


def test_vxlan_inner_frame_keys_get_suffix() -> None:
    inner = eth(0x0800) + ipv4(6, tcp(1234, 80, 0x002), src="172.16.0.1", dst="172.16.0.2")
    vxlan = struct.pack(">II", 0x08000000, 4242 << 8) + inner
    keys = parse_header(1, eth(0x0800) + ipv4(17, udp(40000, 4789, vxlan)))
    assert keys["udpdestinationport"] == "4789" and keys["vxlanvni"] == "4242"
    assert keys["ipsource"] == "10.0.0.1" and keys["ipsource.1"] == "172.16.0.1"
    assert keys["tcpdestinationport.1"] == "80" and keys["tcpflags.1"] == "000000010"
    assert keys["stack"] == "eth.ip.udp.vxlan.eth.ip.tcp"


FULL_FRAMES = [
    eth(0x0800, (0x88A8, 100, 1), (0x8100, 200, 3)) + ipv4(6, tcp(51792, 5201, 0x018)),
    eth(0x86DD) + ipv6(0, bytes([6, 0]) + bytes(6) + tcp(443, 40000, 0x011)),
    eth(0x86DD, (0x8100, 7, 0)) + ipv6(58, icmp(135, 0)),
    eth(0x0800) + ipv4(17, udp(40000, 4789, struct.pack(">II", 0x08000000, 1 << 8)
                                + eth(0x0800) + ipv4(1, icmp(3, 3)))),
]


def test_truncation_anywhere_returns_a_consistent_subset() -> None:
    for frame in FULL_FRAMES:
        full = parse_header(1, frame)
        for cut in range(len(frame)):
            part = parse_header(1, frame[:cut])
            stack = part.pop("stack", "")
            assert full["stack"].startswith(stack)
            for key, value in part.items():
                assert full[key] == value, (cut, key)
    for cut in range(40):
        assert set(parse_header(11, ipv4(6, tcp(1, 2, 2))[:cut])) <= {
            "ipsource", "ipdestination", "ipprotocol", "iptos", "ipbytes", "stack",
            "tcpsourceport", "tcpdestinationport", "tcpflags"}


@settings(max_examples=300, deadline=None)
@given(st.sampled_from([1, 11, 12, 2, 0]), st.binary(max_size=200))
def test_random_headers_never_raise(protocol: int, header: bytes) -> None:
    keys = parse_header(protocol, header)
    assert all(isinstance(v, str) for v in keys.values())


# --- sample_keys / datasource_of ---------------------------------------------------------

def header_record(frame: bytes, frame_length: int) -> Record:
    return Record(0, 1, 16 + len(frame), {"headerProtocol": 1, "sampledPacketSize": frame_length,
                                          "strippedBytes": 4, "headerLen": len(frame), "header": frame})


def flow_sample(records: list[Record], *, cls: int = 0, index: int = 3, inp: Interface = Interface(0, 3),
                out: Interface = Interface(0, 4), rate: int = 400, reason: int | None = None) -> FlowSample:
    return FlowSample(7, cls, index, rate, 7 * rate, 0, inp, out, records, discard_reason=reason)


def test_sample_keys_combine_header_and_sample_fields() -> None:
    frame = eth(0x0800, (0x8100, 10, 0)) + ipv4(6, tcp(51792, 5201, 0x010))
    switch = Record(0, 1001, 16, {"in_vlan": 10, "in_priority": 0, "out_vlan": 20, "out_priority": 1})
    keys = sample_keys("10.1.1.1", flow_sample([switch, header_record(frame, 1518)]))
    assert keys["agent"] == "10.1.1.1"
    assert (keys["inputifindex"], keys["outputifindex"]) == ("3", "4")
    assert keys["direction"] == "ingress"  # class-0 sampler on the input port
    assert (keys["bytes"], keys["frames"], keys["_rate"]) == (1518, 1, 400)
    assert keys["stack"] == "eth.dot1q.ip.tcp" and keys["vlan"] == "10"
    assert (keys["vlansource"], keys["vlandestination"], keys["prioritydestination"]) == ("10", "20", "1")


def test_interface_values() -> None:
    assert interface_key(Interface(0, 17)) == "17"
    assert interface_key(Interface(0, 0x3FFFFFFF)) == "internal"
    assert interface_key(Interface(1, 258)) == "discard"
    assert interface_key(Interface(2, 7)) == "multiple"
    assert interface_key(Interface(0, 0)) is None
    frame = eth(0x0800) + ipv4(17, udp(1, 2))
    keys = sample_keys("a", flow_sample([header_record(frame, 64)], inp=Interface(0, 0),
                                        out=Interface(1, 258)))
    assert "inputifindex" not in keys and keys["outputifindex"] == "discard"
    egress = sample_keys("a", flow_sample([header_record(frame, 64)], index=4))
    assert egress["direction"] == "egress"
    neither = sample_keys("a", flow_sample([header_record(frame, 64)], index=9))
    assert "direction" not in neither


def test_drop_notification_is_a_discard() -> None:
    frame = eth(0x0800) + ipv4(17, udp(1, 2))
    keys = sample_keys("a", flow_sample([header_record(frame, 64)], out=Interface(0, 2), reason=1, rate=0))
    assert keys["outputifindex"] == "discard" and keys["reason"] == "1"


def test_ovs_bridge_sampler_attributes_to_input_port() -> None:
    frame = eth(0x0800) + ipv4(6, tcp(1, 2, 2))
    sample = flow_sample([header_record(frame, 64)], cls=2, index=1000, inp=Interface(0, 1478),
                         out=Interface(2, 2))
    assert datasource_of(sample) == "1478"
    keys = sample_keys("127.0.0.1", sample)
    assert keys["direction"] == "ingress" and keys["outputifindex"] == "multiple"
    no_input = flow_sample([], cls=2, index=1001, inp=Interface(0, 0))
    assert datasource_of(no_input) == "2.1001"
    assert datasource_of(flow_sample([], cls=0, index=12)) == "12"


def test_sampled_ipv4_record_without_header() -> None:
    ip4 = Record(0, 3, 32, {"sampledPacketSize": 1344, "IPSize": 1344, "srcIP": "50.50.50.50",
                            "dstIP": "51.51.51.51", "IPProtocol": 6, "IPTOS": 0, "srcPort": 80,
                            "dstPort": 3000, "TCPFlags": 0x12})
    ether = Record(0, 2, 24, {"ethernet_len": 1390, "ethernet_src": "00fec8990547",
                              "ethernet_dst": "01005e2aaa04", "ethernet_type": 2048})
    keys = sample_keys("a", flow_sample([ip4, ether]))
    assert keys["macsource"] == "00FEC8990547" and keys["ethernetprotocol"] == "2048"
    assert keys["ipsource"] == "50.50.50.50" and keys["tcpdestinationport"] == "3000"
    assert keys["tcpflags"] == "000010010"
    assert keys["bytes"] == 1390  # the Ethernet frame length wins over the IP length
    assert "stack" not in keys


@settings(max_examples=400, deadline=None)
@given(st.sampled_from([6, 17, 1, 47]), st.integers(0, 255), st.integers(0, 0xFFFF),
       st.integers(0, 0xFFFF), st.integers(0, 0x1FF), st.integers(0, 0xFFFF),
       st.integers(20, 80), st.binary(min_size=0, max_size=4))
def test_fast_and_cached_paths_equal_the_general_walk(proto: int, tos: int, sport: int, dport: int,
                                                      flags: int, frag: int, cut: int, noise: bytes) -> None:
    """The untagged-IPv4 fast path (and its cache) returns exactly what the general walk does."""
    from sflow.headers import _general

    l4 = tcp(sport, dport, flags) if proto == 6 else udp(sport, dport, noise) if proto == 17 \
        else icmp(sport & 0xFF, dport & 0xFF) + noise if proto == 1 else noise
    frame = (eth(0x0800) + ipv4(proto, l4, tos=tos, frag=frag & 0x3FFF))[:14 + cut]
    general: dict[str, str] = {}
    _general(1, frame, general)
    assert parse_header(1, frame) == general
    assert parse_header(1, frame) == general  # second call: served from the cache
