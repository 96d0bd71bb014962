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
from typing import Any, BinaryIO, Iterator, NamedTuple

__all__ = ["UdpDatagram", "UdpPacket", "PcapError", "read_udp", "read_udp_packets", "udp_of_frame",
           "iter_frames", "iter_packets", "Packet", "pcapng_options", "PcapWriter", "PcapngWriter",
           "pcap_file_header", "pcapng_file_header", "udp_frame"]

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

class Packet(NamedTuple):
    """One captured frame: ``ts_ns`` the exact timestamp in nanoseconds (pcapng ticks
    of another resolution are converted), ``orig_len`` its length on the wire."""

    ts_ns: int
    linktype: int
    frame: bytes
    orig_len: int

    @property
    def timestamp(self) -> float:
        return ns_to_seconds(self.ts_ns)


def ns_to_seconds(ts_ns: int) -> float:
    """Epoch nanoseconds as float seconds, the way the file's seconds and fraction
    add up (``ts_ns / 1e9`` rounds through a 19-digit float: .25 became .2499998)."""
    sec, nsec = divmod(ts_ns, 1_000_000_000)
    return sec + nsec / 1e9


def iter_frames(path: str | Path) -> Iterator[tuple[float, int, bytes]]:
    """Yield ``(timestamp, linktype, frame)`` for every packet in the file."""
    for pkt in iter_packets(path):
        yield pkt.timestamp, pkt.linktype, pkt.frame


def iter_packets(path: str | Path) -> Iterator[Packet]:
    """Every packet of a pcap or pcapng file, with its original length.

    Raises :class:`PcapError` (one line naming the file) when the file is not a
    capture or its structure is broken; a truncated last record (a writer still
    at work, a capture cut short) ends the iteration quietly.
    """
    with open(path, "rb") as fh:
        magic = fh.read(4)
        if len(magic) < 4:
            raise PcapError(f"{path}: not a pcap or pcapng file (too short for a header)")
        if magic == b"\x0a\x0d\x0d\x0a":
            yield from _pcapng_packets(fh, magic, path)
        else:
            yield from _pcap_packets(fh, magic, path)


_PCAP_MAGIC = {b"\xd4\xc3\xb2\xa1": (True, 1000), b"\x4d\x3c\xb2\xa1": (True, 1),
               b"\xa1\xb2\xc3\xd4": (False, 1000), b"\xa1\xb2\x3c\x4d": (False, 1)}


def _pcap_packets(fh: BinaryIO, magic: bytes, path: str | Path) -> Iterator[Packet]:
    if magic not in _PCAP_MAGIC:
        raise PcapError(f"{path}: not a pcap or pcapng file (magic {magic.hex()})")
    little, scale = _PCAP_MAGIC[magic]
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
        sec, frac, caplen, origlen = rec.unpack(head)
        if caplen > MAX_RECORD:
            raise PcapError(f"{path}: record of {caplen} bytes at offset {fh.tell() - 16}: not a capture")
        frame = fh.read(caplen)
        if len(frame) < caplen:
            return  # truncated last record (capture cut short)
        yield Packet(sec * 1_000_000_000 + frac * scale, linktype, frame, origlen)


MAX_RECORD = 1 << 24  # no link type carries frames this big: the file is not what it claims


def _pcapng_packets(fh: BinaryIO, magic: bytes, path: str | Path) -> Iterator[Packet]:
    order = "<"
    interfaces: list[tuple[int, int, int]] = []  # (linktype, numerator, denominator): ns = ticks * n // d
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
            if length < 28 or length % 4 or length > MAX_RECORD:
                raise PcapError(f"{path}: bad pcapng section header length {length}")
            fh.read(length - 12)
            interfaces = []  # a new section restarts interface numbering
            head = fh.read(8)
            continue
        btype, length = struct.unpack(order + "II", head)
        if length < 12 or length % 4 or length > MAX_RECORD:
            raise PcapError(f"{path}: bad pcapng block length {length} at offset {fh.tell() - 8}")
        body = fh.read(length - 8)
        if len(body) < length - 8:
            return  # truncated last block
        block = body[:-4]  # drop the trailing copy of the length
        if btype == 1 and len(block) >= 8:  # Interface Description Block
            linktype = struct.unpack_from(order + "H", block, 0)[0]
            interfaces.append((linktype, *_if_tsresol(block[8:], order)))
        elif btype == 6 and len(block) >= 20:  # Enhanced Packet Block
            if_id, ts_hi, ts_lo, caplen, origlen = struct.unpack_from(order + "IIIII", block, 0)
            if if_id < len(interfaces):
                linktype, num, den = interfaces[if_id]
                yield Packet((ts_hi << 32 | ts_lo) * num // den, linktype, block[20:20 + caplen], origlen)
        elif btype == 3 and len(block) >= 4 and interfaces:  # Simple Packet Block: no timestamp
            (origlen,) = struct.unpack_from(order + "I", block, 0)
            snap = len(block) - 4
            yield Packet(0, interfaces[0][0], block[4:4 + min(origlen, snap)], origlen)
        head = fh.read(8)


def _if_tsresol(options: bytes, order: str) -> tuple[int, int]:
    """Nanoseconds per tick as a fraction (numerator, denominator); default microseconds."""
    off = 0
    while off + 4 <= len(options):
        code, length = struct.unpack_from(order + "HH", options, off)
        if code == 0:
            break
        if code == 9 and length >= 1:
            res = options[off + 4]
            if res & 0x80:
                return 1_000_000_000, 1 << (res & 0x7F)
            exp = res
            return (10 ** (9 - exp), 1) if exp <= 9 else (1, 10 ** (exp - 9))
        off += 4 + ((length + 3) & ~3)
    return 1000, 1


def pcapng_options(path: str | Path) -> list[dict[str, Any]]:
    """The options of each Section Header Block of a pcapng file, by name where known
    (``comment``, ``hardware``, ``os``, ``userappl``; others as ``opt_<code>``), as text."""
    names = {1: "comment", 2: "hardware", 3: "os", 4: "userappl"}
    sections: list[dict[str, Any]] = []
    with open(path, "rb") as fh:
        while True:
            head = fh.read(12)
            if len(head) < 12:
                break
            if head[:4] == b"\x0a\x0d\x0d\x0a":
                order = "<" if head[8:12] == b"\x4d\x3c\x2b\x1a" else ">"
            elif not sections:
                raise PcapError(f"{path}: not a pcapng file")
            length = struct.unpack(order + "I", head[4:8])[0]
            if length < 12 or length % 4 or length > MAX_RECORD:
                raise PcapError(f"{path}: bad pcapng block length {length}")
            body = fh.read(length - 12)
            if head[:4] != b"\x0a\x0d\x0d\x0a":
                continue
            opts: dict[str, Any] = {}
            off = 12  # past version (4) and section length (8)
            while off + 4 <= len(body) - 4:
                code, olen = struct.unpack_from(order + "HH", body, off)
                if code == 0:
                    break
                value = body[off + 4: off + 4 + olen].decode("utf-8", "replace")
                key = names.get(code, f"opt_{code}")
                opts.setdefault(key, value)
                off += 4 + ((olen + 3) & ~3)
            sections.append(opts)
    return sections


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
    """Write a classic little-endian pcap file (micro- or nanosecond timestamps).

    ``PcapWriter(fh, linktype)``; ``write(ts, frame)`` adds a record,
    ``write_udp(ts, payload, ...)`` wraps a UDP payload in Ethernet/IPv4/UDP,
    ``write_ns(ts_ns, frame, orig_len)`` keeps an exact timestamp (``nanoseconds=True``).
    """

    def __init__(self, fh: BinaryIO, linktype: int = LINKTYPE_ETHERNET, snaplen: int = 262144,
                 nanoseconds: bool = False) -> None:
        self._fh = fh
        self.linktype = linktype
        self.nanoseconds = nanoseconds
        fh.write(pcap_file_header(snaplen, linktype, nanoseconds))

    def write(self, ts: float, frame: bytes, orig_len: int | None = None) -> None:
        self.write_ns(int(round(ts * 1e9)), frame, orig_len)

    def write_ns(self, ts_ns: int, frame: bytes, orig_len: int | None = None) -> None:
        sec, nsec = divmod(ts_ns, 1_000_000_000)
        frac = nsec if self.nanoseconds else (nsec + 500) // 1000
        if frac >= (1_000_000_000 if self.nanoseconds else 1_000_000):
            sec, frac = sec + 1, 0
        self._fh.write(PCAP_RECORD.pack(sec, frac, len(frame), len(frame) if orig_len is None else orig_len))
        self._fh.write(frame)

    def write_udp(self, ts: float, payload: bytes, src: str = "127.0.0.1", sport: int = 50000,
                  dst: str = "127.0.0.1", dport: int = SFLOW_PORT) -> None:
        if self.linktype != LINKTYPE_ETHERNET:
            raise PcapError("write_udp needs an Ethernet (linktype 1) file")
        self.write(ts, udp_frame(payload, src, sport, dst, dport))


PCAP_RECORD = struct.Struct("<IIII")  # sec, usec|nsec, caplen, origlen
PCAPNG_EPB = struct.Struct("<IIIIIII")  # type 6, length, interface, ts high, ts low, caplen, origlen
PCAPNG_TRAILER = struct.Struct("<I")


def pcap_file_header(snaplen: int = 262144, linktype: int = LINKTYPE_ETHERNET, nanoseconds: bool = True) -> bytes:
    """The 24-byte header of a little-endian classic pcap file."""
    return struct.pack("<IHHiIII", 0xA1B23C4D if nanoseconds else 0xA1B2C3D4, 2, 4, 0, 0, snaplen, linktype)


def _option(code: int, value: bytes) -> bytes:
    return struct.pack("<HH", code, len(value)) + value + bytes(-len(value) % 4)


def _ng_block(btype: int, body: bytes) -> bytes:
    body += bytes(-len(body) % 4)
    return struct.pack("<II", btype, 12 + len(body)) + body + struct.pack("<I", 12 + len(body))


def pcapng_file_header(snaplen: int = 262144, linktype: int = LINKTYPE_ETHERNET, *, comment: str = "",
                       application: str = "", os_name: str = "", hardware: str = "",
                       interface: str = "", interface_description: str = "") -> bytes:
    """A little-endian pcapng Section Header Block (with the given comment and
    application) and one Interface Description Block (nanosecond timestamps)."""
    opts = b""
    if comment:
        opts += _option(1, comment.encode())
    if hardware:
        opts += _option(2, hardware.encode())
    if os_name:
        opts += _option(3, os_name.encode())
    if application:
        opts += _option(4, application.encode())
    if opts:
        opts += _option(0, b"")
    shb = _ng_block(0x0A0D0D0A, struct.pack("<IHHq", 0x1A2B3C4D, 1, 0, -1) + opts)
    iopts = b""
    if interface:
        iopts += _option(2, interface.encode())
    if interface_description:
        iopts += _option(3, interface_description.encode())
    iopts += _option(9, bytes([9])) + _option(0, b"")  # if_tsresol: nanoseconds
    idb = _ng_block(1, struct.pack("<HHI", linktype, 0, snaplen) + iopts)
    return shb + idb


PAD = [b"", b"\0\0\0", b"\0\0", b"\0"]  # PAD[len % 4]: to the next 32-bit boundary


def pcapng_packet(ts_ns: int, frame: bytes, orig_len: int | None = None) -> bytes:
    """One Enhanced Packet Block on interface 0 (nanosecond ticks)."""
    n = len(frame)
    total = 32 + n + (-n % 4)
    return (PCAPNG_EPB.pack(6, total, 0, ts_ns >> 32, ts_ns & 0xFFFFFFFF, n, n if orig_len is None else orig_len)
            + frame + PAD[n % 4] + PCAPNG_TRAILER.pack(total))


class PcapngWriter:
    """Write a pcapng file: one section (comment and application in its header), one
    Ethernet interface with nanosecond timestamps, Enhanced Packet Blocks."""

    def __init__(self, fh: BinaryIO, linktype: int = LINKTYPE_ETHERNET, snaplen: int = 262144,
                 **header: str) -> None:
        self._fh = fh
        self.linktype = linktype
        fh.write(pcapng_file_header(snaplen, linktype, **header))

    def write(self, ts: float, frame: bytes, orig_len: int | None = None) -> None:
        self._fh.write(pcapng_packet(int(round(ts * 1e9)), frame, orig_len))

    def write_ns(self, ts_ns: int, frame: bytes, orig_len: int | None = None) -> None:
        self._fh.write(pcapng_packet(ts_ns, frame, orig_len))


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
