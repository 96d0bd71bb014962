"""Classic pcap files (libpcap format, Ethernet, nanosecond timestamps), rotated
by size and age, standard library only.

Nanosecond timestamps keep the kernel's receive time exact enough to measure
flow-mod-to-first-packet latency from the files alone; tshark, tcpdump and
dpkt read the format.
"""

from __future__ import annotations

import struct
import time
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Callable, Iterator

MAGIC_NS = 0xA1B23C4D
MAGIC_US = 0xA1B2C3D4
LINKTYPE_ETHERNET = 1
SNAPLEN = 262144
_GLOBAL = struct.Struct("<IHHiIII")
_RECORD = struct.Struct("<IIII")


class PcapFormatError(ValueError):
    """Not a pcap file this module can read (the message says what was wrong)."""


@dataclass(frozen=True)
class Segment:
    """One finished or open file of a rotating capture."""

    path: Path
    index: int
    opened_at: float
    closed_at: float | None
    packets: int
    bytes: int
    first_ts: float | None
    last_ts: float | None


class PcapWriter:
    """Append Ethernet frames to one pcap file."""

    def __init__(self, path: Path, snaplen: int = SNAPLEN) -> None:
        self.path = Path(path)
        self.snaplen = snaplen
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._fh: BinaryIO | None = open(self.path, "wb")
        self._fh.write(_GLOBAL.pack(MAGIC_NS, 2, 4, 0, 0, snaplen, LINKTYPE_ETHERNET))
        self._fh.flush()
        self.packets = 0
        self.bytes = 0  # original frame lengths, as a switch counter counts them
        self.file_size = _GLOBAL.size
        self.first_ts: float | None = None
        self.last_ts: float | None = None

    def write(self, frame: bytes, ts_ns: int, orig_len: int | None = None) -> None:
        if self._fh is None:
            raise ValueError(f"{self.path}: writer is closed")
        data = frame[: self.snaplen]
        orig = orig_len if orig_len is not None else len(frame)
        sec, nsec = divmod(ts_ns, 1_000_000_000)
        self._fh.write(_RECORD.pack(sec, nsec, len(data), orig))
        self._fh.write(data)
        self.packets += 1
        self.bytes += orig
        self.file_size += _RECORD.size + len(data)
        ts = ts_ns / 1e9
        if self.first_ts is None:
            self.first_ts = ts
        self.last_ts = ts

    def flush(self) -> None:
        if self._fh is not None:
            self._fh.flush()

    def close(self) -> None:
        if self._fh is not None:
            self._fh.close()
            self._fh = None

    @property
    def closed(self) -> bool:
        return self._fh is None


class RotatingPcap:
    """``<dir>/<stem>-0001.pcap``, ``-0002.pcap``, … : a new file when the current one
    exceeds ``max_bytes`` or is older than ``max_seconds`` (0 = no limit).

    ``on_segment(segment)`` is called when a segment closes, so the owner can
    finish its manifest.
    """

    def __init__(self, directory: Path, stem: str, max_bytes: int = 0, max_seconds: float = 0,
                 on_segment: Callable[[Segment], None] | None = None,
                 clock: Callable[[], float] = time.time) -> None:
        if max_bytes < 0:
            raise ValueError(f"max_bytes: must be >= 0, got {max_bytes}")
        if max_seconds < 0:
            raise ValueError(f"max_seconds: must be >= 0, got {max_seconds}")
        self.directory = Path(directory)
        self.stem = stem
        self.max_bytes = max_bytes
        self.max_seconds = max_seconds
        self.on_segment = on_segment
        self.clock = clock
        self.index = 0
        self.segments: list[Segment] = []
        self._writer: PcapWriter | None = None
        self._opened_at = 0.0

    @property
    def current(self) -> PcapWriter | None:
        return self._writer

    def _open(self) -> PcapWriter:
        self.index += 1
        self._opened_at = self.clock()
        self._writer = PcapWriter(self.directory / f"{self.stem}-{self.index:04d}.pcap")
        return self._writer

    def _due(self, writer: PcapWriter, now: float, incoming: int) -> bool:
        # A file never grows past max_bytes, except by a single frame bigger than it.
        if self.max_bytes and writer.file_size + _RECORD.size + incoming > self.max_bytes:
            return True
        return bool(self.max_seconds) and now - self._opened_at >= self.max_seconds

    def write(self, frame: bytes, ts_ns: int, orig_len: int | None = None) -> None:
        writer = self._writer
        if writer is not None and writer.packets and self._due(writer, self.clock(), len(frame)):
            self._close_current()
            writer = None
        if writer is None:
            writer = self._open()
        writer.write(frame, ts_ns, orig_len)

    def tick(self) -> None:
        """Close an idle segment that has outlived ``max_seconds``."""
        writer = self._writer
        if writer is not None and self.max_seconds and writer.packets \
                and self.clock() - self._opened_at >= self.max_seconds:
            self._close_current()

    def snapshot(self) -> Segment | None:
        """The open segment's figures so far (None when no file is open)."""
        w = self._writer
        if w is None:
            return None
        return Segment(w.path, self.index, self._opened_at, None, w.packets, w.bytes, w.first_ts, w.last_ts)

    def flush(self) -> None:
        if self._writer is not None:
            self._writer.flush()

    def _close_current(self) -> None:
        w = self._writer
        if w is None:
            return
        w.close()
        self._writer = None
        seg = Segment(w.path, self.index, self._opened_at, self.clock(), w.packets, w.bytes,
                      w.first_ts, w.last_ts)
        self.segments.append(seg)
        if self.on_segment is not None:
            self.on_segment(seg)

    def close(self) -> None:
        self._close_current()


def read_pcap(path: Path) -> Iterator[tuple[float, bytes, int]]:
    """Yield ``(timestamp_s, frame, original_length)`` from a classic pcap file."""
    with open(path, "rb") as fh:
        head = fh.read(_GLOBAL.size)
        if len(head) < _GLOBAL.size:
            raise PcapFormatError(f"{path}: shorter than a pcap header")
        for endian in ("<", ">"):
            magic = struct.unpack(endian + "I", head[:4])[0]
            if magic in (MAGIC_NS, MAGIC_US):
                break
        else:
            raise PcapFormatError(f"{path}: bad magic {head[:4].hex()}")
        scale = 1e-9 if magic == MAGIC_NS else 1e-6
        record = struct.Struct(endian + "IIII")
        while True:
            rec = fh.read(record.size)
            if len(rec) < record.size:
                return  # a writer still open may leave a partial record at the end
            sec, frac, incl, orig = record.unpack(rec)
            data = fh.read(incl)
            if len(data) < incl:
                return
            yield sec + frac * scale, data, orig
