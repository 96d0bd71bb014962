"""Hand-built datagrams for structures the corpus lacks, and the TLV skipping rules."""

from __future__ import annotations

import socket
import struct

import pytest

from sflow.decode import DecodeError, decode_datagram
from sflow.jsonview import datagram_to_json
from sflow.model import CounterSample, FlowSample, Interface, UnknownSample


def tlv(fmt: int, body: bytes, enterprise: int = 0) -> bytes:
    return struct.pack(">II", enterprise << 12 | fmt, len(body)) + body


def datagram(*samples: bytes, agent: bytes = b"\x0a\x00\x00\x01", addr_type: int = 1,
             count: int | None = None) -> bytes:
    n = len(samples) if count is None else count
    return struct.pack(">II", 5, addr_type) + agent + struct.pack(">IIII", 3, 99, 12345, n) + b"".join(samples)


def flow(*records: bytes, src: int = 7, inp: int = 7, out: int = 8) -> bytes:
    return tlv(1, struct.pack(">8I", 1, src, 512, 5120, 0, inp, out, len(records)) + b"".join(records))


def flow_expanded(*records: bytes, in_fmt: int = 0, inp: int = 70000, out_fmt: int = 0,
                  out: int = 80000) -> bytes:
    return tlv(3, struct.pack(">11I", 2, 0, 70000, 256, 2560, 4, in_fmt, inp, out_fmt, out, len(records))
               + b"".join(records))


def counters(*records: bytes, src: int = 3) -> bytes:
    return tlv(2, struct.pack(">3I", 9, src, len(records)) + b"".join(records))


def ip4(text: str) -> bytes:
    return socket.inet_aton(text)


def ip6(text: str) -> bytes:
    return socket.inet_pton(socket.AF_INET6, text)


SWITCH = tlv(1001, struct.pack(">4I", 10, 1, 20, 2))


def test_sampled_ipv6_record() -> None:
    body = struct.pack(">II16s16sIIII", 1280, 17, ip6("2001:db8::1"), ip6("2001:db8::2"), 5353, 53, 0, 3)
    dg = decode_datagram(datagram(flow(tlv(4, body))))
    rec = dg.flow_samples[0].record(0, 4)
    assert rec is not None and rec.fields == {
        "sampledPacketSize": 1280, "IPSize": 1280, "srcIP6": "2001:db8::1", "dstIP6": "2001:db8::2",
        "IPProtocol": 17, "IPPriority": 3, "srcPort": 5353, "dstPort": 53, "TCPFlags": 0}


def test_tunnel_and_vni_records() -> None:
    tunnel = struct.pack(">II4s4sIIII", 0, 47, ip4("192.168.0.1"), ip4("192.168.0.2"), 0, 0, 0, 0)
    dg = decode_datagram(datagram(flow(SWITCH, tlv(1029, struct.pack(">I", 456)), tlv(1023, tunnel),
                                       tlv(1030, struct.pack(">I", 7)))))
    sample = dg.flow_samples[0]
    assert [r.tag for r in sample.records] == ["0:1001", "0:1029", "0:1023", "0:1030"]
    assert sample.record(0, 1029).fields == {"vni": 456}
    assert sample.record(0, 1030).fields == {"vni": 7}
    assert sample.record(0, 1023).fields["IPProtocol"] == 47
    assert sample.record(0, 1023).fields["dstIP"] == "192.168.0.2"
    view = datagram_to_json(dg)["samples"][0]["elements"]
    assert view[1]["tunnel_out_vni"] == "456" and view[2]["tunnel_ipv4_out_dstIP"] == "192.168.0.2"


def test_lacp_counters() -> None:
    body = (bytes.fromhex("7e6069738f42") + b"\0\0" + bytes(8)
            + struct.pack(">I4B8I", 1, 5, 117, 0, 0, 10, 0xFFFFFFFF, 0xFFFFFFFF, 0xFFFFFFFF, 0, 1173,
                          0xFFFFFFFF, 0xFFFFFFFF))
    assert len(body) == 56
    dg = decode_datagram(datagram(counters(tlv(7, body))))
    f = dg.counter_samples[0].record(0, 7).fields
    assert f["actorSystemID"] == "7e6069738f42" and f["partnerSystemID"] == "000000000000"
    assert (f["attachedAggID"], f["actorOperPortState"], f["LACPDUsRx"], f["LACPDUsTx"]) == (1, 117, 10, 1173)


def test_host_cpu_grew_in_2014_and_parent() -> None:
    base = struct.pack(">fff14I", 0.5, 0.25, 0.125, *range(1, 15))
    old = decode_datagram(datagram(counters(tlv(2003, base), src=2 << 24 | 1)))
    new = decode_datagram(datagram(counters(tlv(2003, base + struct.pack(">3I", 7, 8, 9)),
                                            tlv(2002, struct.pack(">II", 2, 1)))))
    f_old = old.counter_samples[0].records[0].fields
    f_new = new.counter_samples[0].records[0].fields
    assert f_old["cpu_load_one"] == 0.5 and f_old["cpu_contexts"] == 14 and "cpu_steal" not in f_old
    assert (f_new["cpu_steal"], f_new["cpu_guest"], f_new["cpu_guest_nice"]) == (7, 8, 9)
    assert new.counter_samples[0].records[1].fields == {"parent_dsClass": 2, "parent_dsIndex": 1}
    assert (old.counter_samples[0].source_class, old.counter_samples[0].source_index) == (2, 1)


def test_longer_record_decodes_known_prefix_and_skips_the_rest() -> None:
    grown = tlv(1001, struct.pack(">4I", 10, 1, 20, 2) + b"future fields...")
    dg = decode_datagram(datagram(flow(grown, tlv(1029, struct.pack(">I", 5))), counters()))
    sample = dg.flow_samples[0]
    assert sample.records[0].fields["out_vlan"] == 20 and sample.records[0].length == 32
    assert sample.records[1].fields == {"vni": 5}
    assert len(dg.counter_samples) == 1


def test_unknown_and_enterprise_structures_are_skipped_by_length() -> None:
    opaque = tlv(1, b"\xde\xad\xbe\xef" * 3, enterprise=4413)
    unknown_record = tlv(1999, b"\x01" * 8)
    unknown_sample = tlv(1002, b"\x00" * 12, enterprise=4300)
    dg = decode_datagram(datagram(flow(opaque, unknown_record, SWITCH), unknown_sample, counters()))
    recs = dg.flow_samples[0].records
    assert [(r.enterprise, r.format, r.length, r.known) for r in recs] == [
        (4413, 1, 12, False), (0, 1999, 8, False), (0, 1001, 16, True)]
    assert dg.unknown_samples == [UnknownSample(4300, 1002, 12)]
    assert [type(s) for s in dg.samples] == [FlowSample, UnknownSample, CounterSample]


def test_expanded_interfaces() -> None:
    dg = decode_datagram(datagram(flow_expanded(out_fmt=1, out=258),
                                  flow_expanded(out_fmt=2, out=7),
                                  flow_expanded(inp=0x3FFFFFFF)))
    outs = [s.output for s in dg.flow_samples]
    assert outs == [Interface(1, 258), Interface(2, 7), Interface(0, 80000)]
    assert dg.flow_samples[2].input == Interface(0, 0x3FFFFFFF)
    assert all(s.expanded and s.source_index == 70000 for s in dg.flow_samples)
    ports = [s["outputPort"] for s in datagram_to_json(dg)["samples"]]
    assert ports == ["dropCode 258", "multiple 7", "80000"]


def test_compact_interfaces() -> None:
    dg = decode_datagram(datagram(flow(out=0x40000102), flow(out=0x80000007), flow(inp=0x3FFFFFFF)))
    assert [s.output for s in dg.flow_samples][:2] == [Interface(1, 258), Interface(2, 7)]
    assert not dg.flow_samples[2].input.is_ifindex and dg.flow_samples[0].input.is_ifindex


def test_agent_address_types() -> None:
    v6 = decode_datagram(datagram(agent=ip6("30::1:1:1"), addr_type=2))
    assert (v6.agent, v6.agent_ip_version, v6.sequence, v6.uptime_ms) == ("30::1:1:1", 6, 99, 12345)
    unknown = decode_datagram(datagram(agent=b"", addr_type=0))
    assert (unknown.agent, unknown.agent_ip_version, unknown.sub_agent_id) == ("", 0, 3)
    with pytest.raises(DecodeError) as info:
        decode_datagram(datagram(addr_type=3))
    assert info.value.reason == "bad-address-type" and info.value.partial is None


def test_bad_address_inside_a_record_rejects_the_datagram_keeping_earlier_samples() -> None:
    router = tlv(1002, struct.pack(">I", 9) + bytes(12))  # address type 9
    with pytest.raises(DecodeError) as info:
        decode_datagram(datagram(counters(), flow(router)))
    assert info.value.reason == "bad-address-type"
    assert len(info.value.partial.samples) == 1


def test_record_overrunning_its_sample_is_bad_length() -> None:
    good = flow(SWITCH)
    record = tlv(1001, struct.pack(">4I", 1, 2, 3, 4))
    body = struct.pack(">8I", 1, 7, 512, 5120, 0, 7, 8, 1) + record
    lying = struct.pack(">II", 1, len(body) - 4) + body  # sample length 4 bytes short
    with pytest.raises(DecodeError) as info:
        decode_datagram(datagram(good, lying))
    assert info.value.reason == "bad-length"
    assert info.value.partial.flow_samples == decode_datagram(datagram(good)).flow_samples
    assert info.value.offset > 28


def test_short_fixed_record_is_bad_length() -> None:
    with pytest.raises(DecodeError) as info:
        decode_datagram(datagram(counters(tlv(1, bytes(80)))))  # if_counters needs 88
    assert info.value.reason == "bad-length"


def test_sample_past_the_datagram_is_truncated_sample() -> None:
    data = datagram(flow(SWITCH))
    with pytest.raises(DecodeError) as info:
        decode_datagram(data[:-1])
    assert info.value.reason == "truncated-sample"
    with pytest.raises(DecodeError) as info:
        decode_datagram(datagram(flow(SWITCH), count=2))
    assert info.value.reason == "truncated-sample" and len(info.value.partial.samples) == 1


def test_not_sflow_and_short_headers() -> None:
    for data, reason in ((b"", "truncated-header"), (b"\0\0\0\x05\0\0", "truncated-header"),
                         (b"\0\x05\0\x01" + bytes(40), "not-sflow-v5"), (b"\0\0\0\x04", "not-sflow-v5"),
                         (datagram()[:27], "truncated-header")):
        with pytest.raises(DecodeError) as info:
            decode_datagram(data)
        assert info.value.reason == reason, data
