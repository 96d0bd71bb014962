"""The kernel's demultiplexer, compiled from the tap table, agrees with the Python
matcher on every frame: run by a small classic BPF interpreter (Linux semantics
for the loads the compiler emits) over frames hypothesis builds, with the VLAN
tag in the frame or stripped by the kernel into the ancillary field."""

from __future__ import annotations

import ipaddress
import struct
from typing import Any

import pytest
from hypothesis import given, settings, strategies as st

from demon.capture import bpf
from demon.capture.packet import is_ipv6_noise, parse_frame
from demon.capture.taptable import parse_taps

LL = bpf.SKF_LL_OFF
AD = bpf.SKF_AD_OFF


class Reject(Exception):
    pass


def run(program: list[tuple[int, int, int, int]], frame: bytes, *, vlan: int | None = None,
        pkttype: int = 0) -> int:
    """Execute ``program`` on ``frame`` (the bytes the kernel sees: any stripped tag in ``vlan``)."""
    a = x = 0
    mem = [0] * 16
    pc = 0

    def load(off: int, size: int) -> int:
        if off >= 0x80000000:
            off -= 1 << 32
        if LL <= off < LL + 0x100000:
            off -= LL
        elif AD <= off < 0:
            field = off - AD
            if field == bpf.SKF_AD_VLAN_TAG_PRESENT:
                return int(vlan is not None)
            if field == bpf.SKF_AD_VLAN_TAG:
                return vlan or 0
            if field == bpf.SKF_AD_PKTTYPE:
                return pkttype
            raise AssertionError(f"ancillary {field}")
        if off < 0 or off + size > len(frame):
            raise Reject  # the kernel ends the program with 0
        return int.from_bytes(frame[off:off + size], "big")

    sizes = {bpf.W: 4, bpf.H: 2, bpf.B: 1}
    try:
        for _ in range(10_000):
            code, jt, jf, k = program[pc]
            cls = code & 0x07
            pc += 1
            if cls == bpf.LD:
                mode = code & 0xE0
                if mode == bpf.IMM:
                    a = k
                elif mode == bpf.MEM:
                    a = mem[k]
                elif mode == bpf.ABS:
                    a = load(k, sizes[code & 0x18])
                elif mode == bpf.IND:
                    a = load((x + k) & 0xFFFFFFFF, sizes[code & 0x18])
                else:
                    raise AssertionError(hex(code))
            elif cls == bpf.LDX:
                if code & 0xE0 == bpf.MEM:
                    x = mem[k]
                elif code & 0xE0 == bpf.IMM:
                    x = k
                else:
                    raise AssertionError(hex(code))
            elif cls == bpf.ST:
                mem[k] = a
            elif cls == bpf.ALU:
                op, src = code & 0xF0, (x if code & bpf.X else k)
                if op == bpf.ADD:
                    a = (a + src) & 0xFFFFFFFF
                elif op == bpf.AND:
                    a &= src
                elif op == bpf.LSH:
                    a = (a << src) & 0xFFFFFFFF
                else:
                    raise AssertionError(hex(code))
            elif cls == bpf.JMP:
                op = code & 0xF0
                if op == bpf.JA:
                    pc += k
                    continue
                src = x if code & bpf.X else k
                cond = a == src if op == bpf.JEQ else bool(a & src) if op == bpf.JSET else None
                assert cond is not None, hex(code)
                pc += jt if cond else jf
            elif cls == bpf.RET:
                return a if code & bpf.RET_A else k
            elif cls == bpf.MISC:
                if code & 0xF8 == bpf.TAX:
                    x = a
                else:
                    a = x
            else:
                raise AssertionError(hex(code))
    except Reject:
        return 0
    raise AssertionError("program did not end")


# -- frames ------------------------------------------------------------------------------
ADDRS4 = ["10.0.0.1", "10.0.0.2", "10.0.1.7", "192.168.5.5"]
ADDRS6 = ["fc00::1", "fc00::2", "fe80::1", "2001:db8::9", "::"]
DST6 = ["fc00::1", "fc00::2", "ff02::2", "2001:db8::9"]


def build(version: int, proto: int, src: str, dst: str, sport: int, dport: int, frag: int, tag: int | None,
          ext: bool) -> bytes:
    l4 = struct.pack(">HH", sport, dport) + bytes(16)
    if version == 4:
        l3 = struct.pack(">BBHHHBBH4s4s", 0x45, 0, 20 + len(l4), 1, frag, 64, proto, 0,
                         ipaddress.IPv4Address(src).packed, ipaddress.IPv4Address(dst).packed) + l4
        etype = 0x0800
    elif version == 6:
        nxt = proto
        body = l4
        if ext:
            body = bytes([proto, 0]) + bytes(6) + l4
            nxt = 0
        l3 = (struct.pack(">IHBB", 6 << 28, len(body), nxt, 64) + ipaddress.IPv6Address(src).packed
              + ipaddress.IPv6Address(dst).packed + body)
        etype = 0x86DD
    else:
        l3, etype = bytes(28), 0x0806
    eth = b"\x00\x00\x00\x00\x00\x02\x00\x00\x00\x00\x00\x01"
    if tag is not None:
        return eth + struct.pack(">HHH", 0x8100, tag, etype) + l3
    return eth + struct.pack(">H", etype) + l3


frames = st.builds(
    lambda v, proto, s4, d4, s6, d6, sport, dport, frag, tag, ext: build(
        v, proto, s4 if v == 4 else s6, d4 if v == 4 else d6, sport, dport, frag, tag, ext),
    st.sampled_from([4, 4, 6, 0]), st.sampled_from([6, 17, 1]), st.sampled_from(ADDRS4), st.sampled_from(ADDRS4),
    st.sampled_from(ADDRS6), st.sampled_from(DST6), st.sampled_from([1, 5201, 41000]),
    st.sampled_from([1, 5201, 5202]), st.sampled_from([0, 0, 0x4000, 0x2000, 5]),
    st.one_of(st.none(), st.sampled_from([42, 43])), st.booleans())

TAPS = [
    {"tap_id": "v42", "vlan_tag": 42, "start": 1},
    {"tap_id": "five", "match": {"in_port": 1, "ipv4_src": "10.0.0.1", "ipv4_dst": "10.0.0.2", "tcp_src": 41000,
                                 "tcp_dst": 5201}, "start": 2},
    {"tap_id": "bi", "match": {"ipv4_src": "10.0.1.7", "udp_dst": 5202}, "bidirectional": True, "start": 3},
    {"tap_id": "net", "match": {"ipv4_src": "10.0.0.0/24", "ip_proto": 1}, "start": 4},
    {"tap_id": "six", "match": {"ipv6_src": "fc00::/120", "udp_src": 5201}, "start": 5},
    {"tap_id": "sixany", "match": {"ipv6_dst": "2001:db8::9"}, "start": 6},
    {"tap_id": "etype", "match": {"eth_type": 0x0806}, "start": 7},
    {"tap_id": "vidmatch", "match": {"vlan_vid": 43, "tcp_dst": 5202}, "start": 8},
]


NEWEST_FIRST = sorted(parse_taps(TAPS), key=lambda t: -t.start)  # the table's lookup order
PROGRAM, LEFT = bpf.demux_program([bpf.TapRule(i + 1, t.vlan_tag, t.info.get("match"),
                                               bool(t.info.get("bidirectional")))
                                   for i, t in enumerate(NEWEST_FIRST)])


def python_choice(frame: bytes) -> str | None:
    fields = parse_frame(frame)
    for tap in NEWEST_FIRST:
        if tap.matches(fields):
            return tap.tap_id
    return None


def kernel_choice(frame: bytes, strip: bool) -> str | None:
    taps = NEWEST_FIRST
    program = PROGRAM
    assert not LEFT
    vlan = None
    if strip and frame[12:14] == b"\x81\x00":
        vlan = int.from_bytes(frame[14:16], "big") & 0x0FFF
        frame = frame[:12] + frame[16:]
    ring = run(program, frame, vlan=vlan)
    return None if ring == 0 else taps[ring - 1].tap_id


def has_ipv6_ext(frame: bytes) -> bool:
    off = 16 if frame[12:14] == b"\x81\x00" else 12
    return frame[off:off + 2] == b"\x86\xdd" and frame[off + 2 + 6] == 0


@settings(max_examples=400, deadline=None)
@given(frames, st.booleans())
def test_the_kernel_program_sends_each_frame_to_the_tap_python_would_choose(frame: bytes, strip: bool) -> None:
    want = python_choice(frame)
    got = kernel_choice(frame, strip)
    if has_ipv6_ext(frame):
        # Ports behind IPv6 extension headers are the Python path's: the kernel sends
        # the frame to ring 0, whose frames Python files, so it still reaches its tap.
        assert got is None
        return
    assert got == want


def test_outgoing_frames_never_go_to_a_tap_ring() -> None:
    program, _ = bpf.demux_program([bpf.TapRule(1, 42)])
    frame = build(4, 6, "10.0.0.1", "10.0.0.2", 1, 2, 0, 42, False)
    assert run(program, frame) == 1
    assert run(program, frame, pkttype=bpf.PACKET_OUTGOING) == 0


FILTER, KEEP_NOISE = bpf.ring_filter(1514), bpf.ring_filter(1514, keep_noise=True)


@settings(max_examples=200, deadline=None)
@given(frames)
def test_the_ring_filter_keeps_the_snap_length_and_drops_what_python_calls_noise(frame: bytes) -> None:
    noisy = is_ipv6_noise(parse_frame(frame))
    assert run(FILTER, frame) == (0 if noisy else 1514)
    assert run(KEEP_NOISE, frame) == 1514
    assert run(FILTER, frame, pkttype=bpf.PACKET_OUTGOING) == 0


def test_a_match_the_kernel_cannot_express_is_left_to_the_python_path() -> None:
    program, left = bpf.demux_program([bpf.TapRule(1, match={"tcp_dst": "http"}),
                                       bpf.TapRule(2, match={"ipv4_src": "10.0.0.1"})])
    assert [r.ring for r in left] == [1]
    assert run(program, build(4, 6, "10.0.0.1", "10.0.0.2", 1, 80, 0, None, False)) == 2


def test_a_program_too_big_for_the_kernel_keeps_the_taps_that_fit() -> None:
    rules = [bpf.TapRule(i + 1, match={"ipv6_src": f"fc00::{i:x}", "ipv6_dst": "fc00::ffff", "udp_src": i,
                                       "udp_dst": 9}, bidirectional=True) for i in range(200)]
    program, left = bpf.demux_program(rules)
    assert len(program) <= bpf.BPF_MAXINSNS and 0 < len(left) < 200
    kept = len(rules) - len(left)
    assert run(program, build(6, 17, "fc00::0", "fc00::ffff", 0, 9, 0, None, False)) == 1
    assert left[0].ring == kept + 1  # the newest (first) rules are the ones kept


@pytest.mark.parametrize("match", [{}, {"in_port": 3}, {"ipv4_src": "10.0.0.300"}, {"bogus": 1},
                                   {"tcp_src": 70000}, {"ipv4_src": "fc00::1"}])
def test_bad_matches_are_refused_by_name(match: dict[str, Any]) -> None:
    with pytest.raises(bpf.BpfError, match="match"):
        bpf.tap_block(bpf.Asm(), bpf.TapRule(1, match=match), 0)


@settings(max_examples=300, deadline=None)
@given(st.lists(frames, min_size=1, max_size=6))
def test_frames_with_the_same_header_key_get_the_same_python_verdict(batch: list[bytes]) -> None:
    """The agent remembers each header's taps (demon.capture.packet.header_key):
    equal keys must mean equal verdicts, noise included."""
    from demon.capture.packet import header_key

    verdicts: dict[bytes, tuple[str | None, bool]] = {}
    for frame in batch:
        key = header_key(frame)
        verdict = (python_choice(frame), is_ipv6_noise(parse_frame(frame)))
        if key is not None:
            assert verdicts.setdefault(key, verdict) == verdict
        # the same header with another IP id, TTL and payload: same key, same verdict
        twin = bytearray(frame)
        ip = 18 if frame[12:14] == b"\x81\x00" else 14
        if twin[ip] >> 4 == 4:
            twin[ip + 4:ip + 6] = b"\x12\x34"
            twin[ip + 8] = 7
        twin[-1] ^= 0xFF
        if header_key(bytes(twin)) == key and key is not None:
            assert (python_choice(bytes(twin)), is_ipv6_noise(parse_frame(bytes(twin)))) == verdict
