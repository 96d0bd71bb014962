"""Read UDP datagrams out of pcap / pcapng files; write classic pcap files.

Reader: classic pcap (either byte order, micro- or nanosecond timestamps) and
pcapng (Enhanced and Simple Packet Blocks, per-interface link type and
timestamp resolution). Link types: Ethernet (with 802.1Q/802.1ad tags),
Linux cooked v1/v2, raw IP, BSD loopback/null. IPv4 and IPv6 (extension
headers skipped). Non-first IPv4 fragments are skipped; a first fragment
yields the bytes it carries, so the decoder reports the datagram truncated.

Standard library only.
"""

from __future__ import annotations

import socket
import struct
from pathlib import Path
from typing import BinaryIO, Iterator, NamedTuple

__all__ = ["UdpDatagram", "UdpPacket", "PcapError", "read_udp", "read_udp_packets", "udp_of_frame",
           "iter_frames", "PcapWriter", "udp_frame"]

SFLOW_PORT = 6343

LINKTYPE_NULL = 0
LINKTYPE_ETHERNET = 1
LINKTYPE_RAW = 101
LINKTYPE_LOOP = 108
LINKTYPE_LINUX_SLL = 113
LINKTYPE_IPV4 = 228
LINKTYPE_IPV6 = 229
LINKTYPE_LINUX_SLL2 = 276
_RAW_ALIASES = {12, 14, LINKTYPE_RAW}  # DLT_RAW differs between platforms

_VLAN_TYPES = {0x8100, 0x88A8, 0x9100}
_IPV6_EXT = {0, 43, 60, 135, 139, 140}


class PcapError(ValueError):
    """The file is not a readable pcap/pcapng capture."""


class UdpDatagram(NamedTuple):
    """What ``read_udp`` yields: ``(timestamp, src_ip, src_port, payload)``."""

    timestamp: float
    src_ip: str
    src_port: int
    payload: bytes


class UdpPacket(NamedTuple):
    """A UDP datagram with both ends (``read_udp_packets``, ``udp_of_frame``)."""

    timestamp: float
    src_ip: str
    src_port: int
    payload: bytes
    dst_ip: str
    dst_port: int


# --- frames -----------------------------------------------------------------------

def iter_frames(path: str | Path) -> Iterator[tuple[float, int, bytes]]:
    """Yield ``(timestamp, linktype, frame)`` for every packet in the file."""
    with open(path, "rb") as fh:
        magic = fh.read(4)
        if len(magic) < 4:
            raise PcapError(f"{path}: file too short for a pcap header")
        if magic == b"\x0a\x0d\x0d\x0a":
            yield from _pcapng_frames(fh, magic, path)
        else:
            yield from _pcap_frames(fh, magic, path)


def _pcap_frames(fh: BinaryIO, magic: bytes, path: str | Path) -> Iterator[tuple[float, int, bytes]]:
    le = {b"\xd4\xc3\xb2\xa1": (True, 1e-6), b"\x4d\x3c\xb2\xa1": (True, 1e-9),
          b"\xa1\xb2\xc3\xd4": (False, 1e-6), b"\xa1\xb2\x3c\x4d": (False, 1e-9)}
    if magic not in le:
        raise PcapError(f"{path}: not a pcap or pcapng file (magic {magic.hex()})")
    little, scale = le[magic]
    order = "<" if little else ">"
    rest = fh.read(20)
    if len(rest) < 20:
        raise PcapError(f"{path}: truncated pcap file header")
    linktype = struct.unpack(order + "HHiIII", rest)[5] & 0x0FFFFFFF
    rec = struct.Struct(order + "IIII")
    while True:
        head = fh.read(16)
        if len(head) < 16:
            return
        sec, frac, caplen, _origlen = rec.unpack(head)
        frame = fh.read(caplen)
        if len(frame) < caplen:
            return  # truncated last record (capture cut short)
        yield sec + frac * scale, linktype, frame


def _pcapng_frames(fh: BinaryIO, magic: bytes, path: str | Path) -> Iterator[tuple[float, int, bytes]]:
    order = "<"
    interfaces: list[tuple[int, float]] = []  # (linktype, seconds per tick)
    head = magic + fh.read(4)
    while len(head) == 8:
        if head[:4] == b"\x0a\x0d\x0d\x0a":  # Section Header Block: sets the byte order
            bom = fh.read(4)
            if bom == b"\x4d\x3c\x2b\x1a":
                order = "<"
            elif bom == b"\x1a\x2b\x3c\x4d":
                order = ">"
            else:
                raise PcapError(f"{path}: bad pcapng byte-order magic")
            length = struct.unpack(order + "I", head[4:])[0]
            if length < 16:
                raise PcapError(f"{path}: bad pcapng block length {length}")
            fh.read(length - 12)
            interfaces = []  # a new section restarts interface numbering
            head = fh.read(8)
            continue
        btype, length = struct.unpack(order + "II", head)
        if length < 12:
            raise PcapError(f"{path}: bad pcapng block length {length}")
        body = fh.read(length - 8)
        if len(body) < length - 8:
            return  # truncated last block
        block = body[:-4]  # drop the trailing copy of the length
        if btype == 1 and len(block) >= 8:  # Interface Description Block
            linktype = struct.unpack_from(order + "H", block, 0)[0]
            interfaces.append((linktype, _if_tsresol(block[8:], order)))
        elif btype == 6 and len(block) >= 20:  # Enhanced Packet Block
            if_id, ts_hi, ts_lo, caplen = struct.unpack_from(order + "IIII", block, 0)
            if if_id < len(interfaces):
                linktype, tick = interfaces[if_id]
                yield (ts_hi << 32 | ts_lo) * tick, linktype, block[20:20 + caplen]
        elif btype == 3 and len(block) >= 4 and interfaces:  # Simple Packet Block: no timestamp
            (origlen,) = struct.unpack_from(order + "I", block, 0)
            snap = len(block) - 4
            yield 0.0, interfaces[0][0], block[4:4 + min(origlen, snap)]
        head = fh.read(8)


def _if_tsresol(options: bytes, order: str) -> float:
    off = 0
    while off + 4 <= len(options):
        code, length = struct.unpack_from(order + "HH", options, off)
        if code == 0:
            break
        if code == 9 and length >= 1:
            res = options[off + 4]
            return 2.0 ** -(res & 0x7F) if res & 0x80 else 10.0 ** -res
        off += 4 + ((length + 3) & ~3)
    return 1e-6


# --- UDP extraction ---------------------------------------------------------------------

def read_udp(path: str | Path, port: int | None = SFLOW_PORT) -> Iterator[UdpDatagram]:
    """Yield ``(timestamp, src_ip, src_port, payload)`` of the UDP datagrams sent to
    ``port`` (every UDP datagram if ``port`` is None).

    Raises ``PcapError`` (or ``OSError``) if the file cannot be read.
    """
    for pkt in read_udp_packets(path):
        if port is None or pkt.dst_port == port:
            yield UdpDatagram(pkt.timestamp, pkt.src_ip, pkt.src_port, pkt.payload)


def read_udp_packets(path: str | Path) -> Iterator[UdpPacket]:
    """Every UDP datagram in the file, with source and destination."""
    for ts, linktype, frame in iter_frames(path):
        pkt = udp_of_frame(ts, linktype, frame)
        if pkt is not None:
            yield pkt


def udp_of_frame(ts: float, linktype: int, frame: bytes) -> UdpPacket | None:
    """The UDP datagram in one captured frame, or None if it holds none."""
    ip = _ip_offset(linktype, frame)
    if ip is None or ip + 1 > len(frame):
        return None
    version = frame[ip] >> 4
    if version == 4:
        return _udp4(ts, frame, ip)
    if version == 6:
        return _udp6(ts, frame, ip)
    return None


def _ip_offset(linktype: int, frame: bytes) -> int | None:
    if linktype == LINKTYPE_ETHERNET:
        off, etype = 12, -1
        while off + 2 <= len(frame):
            etype = frame[off] << 8 | frame[off + 1]
            if etype in _VLAN_TYPES:
                off += 4
                continue
            break
        return off + 2 if etype in (0x0800, 0x86DD) else None
    if linktype in _RAW_ALIASES or linktype in (LINKTYPE_IPV4, LINKTYPE_IPV6):
        return 0
    if linktype in (LINKTYPE_NULL, LINKTYPE_LOOP):
        return 4
    if linktype == LINKTYPE_LINUX_SLL:
        return 16
    if linktype == LINKTYPE_LINUX_SLL2:
        return 20
    return None


def _udp4(ts: float, frame: bytes, ip: int) -> UdpPacket | None:
    if ip + 20 > len(frame):
        return None
    ihl = (frame[ip] & 0x0F) * 4
    total = frame[ip + 2] << 8 | frame[ip + 3]
    frag = (frame[ip + 6] << 8 | frame[ip + 7]) & 0x1FFF
    if frame[ip + 9] != 17 or frag or ihl < 20:
        return None
    src = socket.inet_ntoa(frame[ip + 12:ip + 16])
    dst = socket.inet_ntoa(frame[ip + 16:ip + 20])
    end = min(len(frame), ip + total) if total else len(frame)
    return _udp(ts, frame, ip + ihl, end, src, dst)


def _udp6(ts: float, frame: bytes, ip: int) -> UdpPacket | None:
    if ip + 40 > len(frame):
        return None
    plen = frame[ip + 4] << 8 | frame[ip + 5]
    nxt = frame[ip + 6]
    src = socket.inet_ntop(socket.AF_INET6, frame[ip + 8:ip + 24])
    dst = socket.inet_ntop(socket.AF_INET6, frame[ip + 24:ip + 40])
    end = min(len(frame), ip + 40 + plen) if plen else len(frame)
    off = ip + 40
    while nxt in _IPV6_EXT or nxt == 44:
        if off + 8 > end:
            return None
        if nxt == 44:
            if (frame[off + 2] << 8 | frame[off + 3]) & 0xFFF8:
                return None  # non-first fragment
            nxt, off = frame[off], off + 8
        else:
            nxt, off = frame[off], off + (frame[off + 1] + 1) * 8
    if nxt != 17:
        return None
    return _udp(ts, frame, off, end, src, dst)


def _udp(ts: float, frame: bytes, off: int, end: int, src: str, dst: str) -> UdpPacket | None:
    if off + 8 > end:
        return None
    sport, dport, ulen = struct.unpack_from(">HHH", frame, off)
    stop = min(end, off + ulen) if ulen >= 8 else end
    return UdpPacket(ts, src, sport, frame[off + 8:stop], dst, dport)


# --- writer -----------------------------------------------------------------------------

class PcapWriter:
    """Write a classic little-endian microsecond pcap file.

    ``PcapWriter(fh, linktype)``; ``write(ts, frame)`` adds a record,
    ``write_udp(ts, payload, ...)`` wraps a UDP payload in Ethernet/IPv4/UDP.
    """

    def __init__(self, fh: BinaryIO, linktype: int = LINKTYPE_ETHERNET, snaplen: int = 262144) -> None:
        self._fh = fh
        self.linktype = linktype
        fh.write(struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, snaplen, linktype))

    def write(self, ts: float, frame: bytes) -> None:
        sec = int(ts)
        usec = int(round((ts - sec) * 1e6))
        if usec >= 1_000_000:
            sec, usec = sec + 1, usec - 1_000_000
        self._fh.write(struct.pack("<IIII", sec, usec, len(frame), len(frame)))
        self._fh.write(frame)

    def write_udp(self, ts: float, payload: bytes, src: str = "127.0.0.1", sport: int = 50000,
                  dst: str = "127.0.0.1", dport: int = SFLOW_PORT) -> None:
        if self.linktype != LINKTYPE_ETHERNET:
            raise PcapError("write_udp needs an Ethernet (linktype 1) file")
        self.write(ts, udp_frame(payload, src, sport, dst, dport))


def udp_frame(payload: bytes, src: str, sport: int, dst: str, dport: int) -> bytes:
    """An Ethernet/IPv4/UDP frame carrying ``payload`` (IPv4 header checksum set)."""
    udp = struct.pack(">HHHH", sport, dport, 8 + len(payload), 0) + payload
    ip = bytearray(struct.pack(">BBHHHBBH4s4s", 0x45, 0, 20 + len(udp), 0, 0x4000, 64, 17, 0,
                               socket.inet_aton(src), socket.inet_aton(dst)))
    csum = sum(struct.unpack(">10H", bytes(ip)))
    csum = (csum & 0xFFFF) + (csum >> 16)
    csum = (csum & 0xFFFF) + (csum >> 16)
    struct.pack_into(">H", ip, 10, ~csum & 0xFFFF)
    eth = b"\x02\x00\x00\x00\x00\x02" + b"\x02\x00\x00\x00\x00\x01" + b"\x08\x00"
    return eth + bytes(ip) + udp
