"""pcap/pcapng reading (every supported framing) and the classic pcap writer."""

from __future__ import annotations

import io
import socket
import struct
from pathlib import Path

import pytest

from sflow.pcap import PcapError, PcapWriter, iter_frames, read_udp, read_udp_packets, udp_frame

PAYLOAD = b"\x00\x00\x00\x05sflow-ish payload"


def ip4_udp(payload: bytes, sport: int = 40000, dport: int = 6343, src: str = "10.1.2.3",
            frag: int = 0) -> bytes:
    udp = struct.pack(">HHHH", sport, dport, 8 + len(payload), 0) + payload
    return struct.pack(">BBHHHBBH4s4s", 0x45, 0, 20 + len(udp), 0, frag, 64, 17, 0,
                       socket.inet_aton(src), socket.inet_aton("10.9.9.9")) + udp


def ip6_udp(payload: bytes, sport: int = 40001, dport: int = 6343, ext: bool = False) -> bytes:
    udp = struct.pack(">HHHH", sport, dport, 8 + len(payload), 0) + payload
    body, nxt = (bytes([17, 0]) + bytes(6) + udp, 0) if ext else (udp, 17)
    return (struct.pack(">IHBB", 6 << 28, len(body), nxt, 64)
            + socket.inet_pton(socket.AF_INET6, "2001:db8::7") + socket.inet_pton(socket.AF_INET6, "2001:db8::1")
            + body)


def classic(records: list[tuple[float, bytes]], linktype: int, *, big: bool = False, nano: bool = False) -> bytes:
    order = ">" if big else "<"
    magic = 0xA1B23C4D if nano else 0xA1B2C3D4
    out = struct.pack(order + "IHHiIII", magic, 2, 4, 0, 0, 65535, linktype)
    for ts, frame in records:
        sec = int(ts)
        frac = round((ts - sec) * (1e9 if nano else 1e6))
        out += struct.pack(order + "IIII", sec, frac, len(frame), len(frame)) + frame
    return out


def _block(order: str, btype: int, body: bytes) -> bytes:
    body += bytes(-len(body) % 4)
    length = 12 + len(body)
    return struct.pack(order + "II", btype, length) + body + struct.pack(order + "I", length)


def pcapng(frames: list[tuple[int, bytes]], linktype: int, *, big: bool = False,
           tsresol: int | None = None, simple: bytes | None = None) -> bytes:
    order = ">" if big else "<"
    shb = _block(order, 0x0A0D0D0A, struct.pack(order + "IHHq", 0x1A2B3C4D, 1, 0, -1))
    options = b""
    if tsresol is not None:
        options = struct.pack(order + "HH", 9, 1) + bytes([tsresol]) + bytes(3) + struct.pack(order + "HH", 0, 0)
    out = shb + _block(order, 1, struct.pack(order + "HHI", linktype, 0, 65535) + options)
    for ticks, frame in frames:
        out += _block(order, 6, struct.pack(order + "IIIII", 0, ticks >> 32, ticks & 0xFFFFFFFF,
                                            len(frame), len(frame)) + frame)
    if simple is not None:
        out += _block(order, 3, struct.pack(order + "I", len(simple)) + simple)
    return out


def _write(tmp_path: Path, data: bytes, name: str = "cap.pcap") -> Path:
    path = tmp_path / name
    path.write_bytes(data)
    return path


def test_writer_round_trip(tmp_path: Path) -> None:
    buf = io.BytesIO()
    writer = PcapWriter(buf)
    writer.write_udp(1700000000.123456, PAYLOAD, src="192.0.2.9", sport=51000)
    writer.write_udp(1700000001.5, b"other", dport=9999)
    path = _write(tmp_path, buf.getvalue())
    (dg,) = read_udp(path)
    ts, src_ip, src_port, payload = dg  # the documented 4-tuple
    assert payload == PAYLOAD and src_ip == "192.0.2.9" and src_port == 51000
    assert ts == pytest.approx(1700000000.123456, abs=1e-6)
    assert [(p.dst_ip, p.dst_port) for p in read_udp_packets(path)] == [("127.0.0.1", 6343), ("127.0.0.1", 9999)]
    assert [d.payload for d in read_udp(path, port=None)] == [PAYLOAD, b"other"]
    # the IPv4 header checksum verifies
    frame = udp_frame(PAYLOAD, "192.0.2.9", 1, "192.0.2.10", 6343)
    csum = sum(struct.unpack(">10H", frame[14:34]))
    assert (csum & 0xFFFF) + (csum >> 16) == 0xFFFF


@pytest.mark.parametrize("big", [False, True])
@pytest.mark.parametrize("nano", [False, True])
def test_classic_byte_orders_and_resolutions(tmp_path: Path, big: bool, nano: bool) -> None:
    frame = udp_frame(PAYLOAD, "10.0.0.1", 5000, "10.0.0.2", 6343)
    path = _write(tmp_path, classic([(12.25, frame)], 1, big=big, nano=nano))
    (dg,) = read_udp(path)
    assert dg.payload == PAYLOAD and dg.timestamp == pytest.approx(12.25)


LINK_FRAMES = {
    "ethernet-vlan": (1, b"\x02" * 6 + b"\x04" * 6 + b"\x81\x00\x00\x0a\x08\x00" + ip4_udp(PAYLOAD)),
    "qinq": (1, b"\x02" * 12 + b"\x88\xa8\x00\x01\x81\x00\x00\x02\x86\xdd" + ip6_udp(PAYLOAD)),
    "sll": (113, struct.pack(">HHH8sH", 0, 1, 6, b"\x02" * 8, 0x0800) + ip4_udp(PAYLOAD)),
    "sll2": (276, struct.pack(">HHIHBB8s", 0x86DD, 0, 1, 1, 0, 6, b"\x02" * 8) + ip6_udp(PAYLOAD)),
    "raw-ip4": (101, ip4_udp(PAYLOAD)),
    "raw-ip6-ext": (101, ip6_udp(PAYLOAD, ext=True)),
    "ipv4-linktype": (228, ip4_udp(PAYLOAD)),
    "null": (0, struct.pack("<I", 2) + ip4_udp(PAYLOAD)),
    "loop": (108, struct.pack(">I", 2) + ip4_udp(PAYLOAD)),
}


@pytest.mark.parametrize("name", sorted(LINK_FRAMES))
def test_link_types(tmp_path: Path, name: str) -> None:
    linktype, frame = LINK_FRAMES[name]
    (dg,) = read_udp(_write(tmp_path, classic([(1.0, frame)], linktype)))
    assert dg.payload == PAYLOAD
    assert dg.src_ip in ("10.1.2.3", "2001:db8::7")


@pytest.mark.parametrize("big", [False, True])
def test_pcapng_enhanced_and_simple_blocks(tmp_path: Path, big: bool) -> None:
    frame = udp_frame(PAYLOAD, "10.0.0.1", 5000, "10.0.0.2", 6343)
    data = pcapng([(1_500_000_000_250_000_000, frame)], 1, big=big, tsresol=9, simple=frame)
    got = list(read_udp(_write(tmp_path, data, "cap.pcapng")))
    assert [d.payload for d in got] == [PAYLOAD, PAYLOAD]
    assert got[0].timestamp == pytest.approx(1_500_000_000.25)
    assert got[1].timestamp == 0.0  # simple packet blocks carry no timestamp


def test_pcapng_default_microseconds(tmp_path: Path) -> None:
    data = pcapng([(3_000_001, ip4_udp(PAYLOAD))], 101)
    (dg,) = read_udp(_write(tmp_path, data, "cap.pcapng"))
    assert dg.timestamp == pytest.approx(3.000001)


def test_filters_fragments_and_padding(tmp_path: Path) -> None:
    eth = b"\x02" * 12 + b"\x08\x00"
    small = eth + ip4_udp(b"\x00\x00\x00\x05")
    padded = small + bytes(60 - len(small))  # Ethernet minimum-size padding
    later_fragment = eth + ip4_udp(PAYLOAD, frag=10)
    other_port = eth + ip4_udp(PAYLOAD, dport=53)
    path = _write(tmp_path, classic([(1, padded), (2, later_fragment), (3, other_port)], 1))
    assert [d.payload for d in read_udp(path)] == [b"\x00\x00\x00\x05"]
    assert [d.payload for d in read_udp(path, port=None)] == [b"\x00\x00\x00\x05", PAYLOAD]
    assert [d.dst_port for d in read_udp_packets(path)] == [6343, 53]


def test_truncated_last_record_is_dropped(tmp_path: Path) -> None:
    frame = udp_frame(PAYLOAD, "10.0.0.1", 5000, "10.0.0.2", 6343)
    data = classic([(1, frame), (2, frame)], 1)
    (dg,) = read_udp(_write(tmp_path, data[:-5]))
    assert dg.payload == PAYLOAD


def test_not_a_capture(tmp_path: Path) -> None:
    with pytest.raises(PcapError, match="not a pcap"):
        list(read_udp(_write(tmp_path, b"hello world, not a pcap")))
    with pytest.raises(PcapError, match="too short"):
        list(iter_frames(_write(tmp_path, b"\xd4", "short.pcap")))


@pytest.mark.replay
def test_corpus_captures_read(corpus_dir: Path) -> None:
    """Every corpus capture yields its sFlow datagrams on UDP 6343."""
    counts = {p.name: len(list(read_udp(p))) for p in (corpus_dir / "pcap").rglob("*.pcap")}
    assert counts["sflow_multiple_counter_30_pdus.pcap"] == 30
    assert sum(1 for p in (corpus_dir / "pcap" / "overflowd").glob("*.pcap") for _ in read_udp(p)) == 1000
    assert all(n >= 1 for n in counts.values())
