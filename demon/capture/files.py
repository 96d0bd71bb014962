"""The capture agent's output files: pcapng (default) or classic pcap with
nanosecond timestamps, rotated by size and age, written with ``os.writev``.

The record formats come from :mod:`sflow.pcap` (the project's one pcap module);
this module adds what a capture host needs around them: one open file at a
time per tap, a new one when the current one would pass ``max_bytes`` or has
been open ``max_seconds``, and a write error (disk full, quota, I/O) that
leaves a valid file behind (the partial record is cut off) and is reported to
the owner instead of raised through the receive loop.

A frame is handed over as the list of buffers that make up its record (header,
frame bytes, padding), so frames can be written straight out of the kernel's
ring without being copied in Python.
"""

from __future__ import annotations

import errno
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from sflow.pcap import (PAD, PCAP_RECORD, PCAPNG_EPB, PCAPNG_TRAILER, pcap_file_header,
                        pcapng_file_header)

FORMATS = ("pcapng", "pcap")
IOV_MAX = 1024
SUFFIX = {"pcapng": ".pcapng", "pcap": ".pcap"}


class CaptureWriteError(OSError):
    """Writing a capture file failed (disk full, quota, I/O error); the file was
    left with whole records only."""


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
    size: int = 0


def record_pcap(bufs: list[Any], ts_ns: int, data: Any, snap: int, orig: int) -> int:
    """Append one classic pcap record's buffers; returns the bytes it adds to the file."""
    sec, nsec = divmod(ts_ns, 1_000_000_000)
    bufs.append(PCAP_RECORD.pack(sec, nsec, snap, orig))
    bufs.append(data)
    return 16 + snap


def record_pcapng(bufs: list[Any], ts_ns: int, data: Any, snap: int, orig: int) -> int:
    """Append one Enhanced Packet Block's buffers; returns the bytes it adds."""
    total = 32 + snap + (-snap & 3)
    bufs.append(PCAPNG_EPB.pack(6, total, 0, ts_ns >> 32, ts_ns & 0xFFFFFFFF, snap, orig))
    bufs.append(data)
    bufs.append(PAD[snap & 3] + PCAPNG_TRAILER.pack(total))
    return total


RECORDERS = {"pcap": record_pcap, "pcapng": record_pcapng}
RECORD_OVERHEAD = {"pcap": 16, "pcapng": 35}  # most a record adds beyond the frame


def writev_all(fd: int, bufs: list[Any], nbytes: int) -> None:
    """Write every buffer; a write that cannot go on (disk full) raises ``OSError``."""
    for i in range(0, len(bufs), IOV_MAX):
        chunk = bufs[i:i + IOV_MAX]
        want = nbytes if len(bufs) <= IOV_MAX else sum(map(len, chunk))
        wrote = os.writev(fd, chunk)
        while wrote < want:  # a short write: go on from there; a full disk answers ENOSPC
            if wrote <= 0:
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
            chunk = _tail(chunk, wrote)
            want -= wrote
            wrote = os.writev(fd, chunk)


def _tail(bufs: list[Any], skip: int) -> list[Any]:
    out: list[Any] = []
    for b in bufs:
        if skip >= len(b):
            skip -= len(b)
            continue
        out.append(memoryview(b)[skip:] if skip else b)
        skip = 0
    return out


class CaptureFile:
    """One output file: its header written at open, records appended by :meth:`write`."""

    def __init__(self, path: Path, fmt: str = "pcapng", snaplen: int = 262144,
                 header: dict[str, str] | None = None) -> None:
        if fmt not in FORMATS:
            raise ValueError(f"format: one of {', '.join(FORMATS)}, got {fmt!r}")
        self.path = Path(path)
        self.fmt = fmt
        self.path.parent.mkdir(parents=True, exist_ok=True)
        head = (pcapng_file_header(snaplen, **(header or {})) if fmt == "pcapng"
                else pcap_file_header(snaplen, nanoseconds=True))
        self.fd: int | None = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o644)
        self.size = 0
        self.packets = 0
        self.bytes = 0  # original frame lengths, as a switch counter counts them
        self.first_ns: int | None = None
        self.last_ns: int | None = None
        try:
            self._write([head], len(head))
        except CaptureWriteError:
            self.close()
            self.path.unlink(missing_ok=True)  # no empty file behind
            raise
        self.size = len(head)

    def _write(self, bufs: list[Any], nbytes: int) -> None:
        if self.fd is None:
            raise ValueError(f"{self.path}: file is closed")
        try:
            writev_all(self.fd, bufs, nbytes)
        except OSError as exc:
            try:  # keep the file readable: whole records only
                os.ftruncate(self.fd, self.size)
                os.lseek(self.fd, self.size, os.SEEK_SET)
            except OSError:
                pass
            raise CaptureWriteError(exc.errno, f"{self.path}: {exc.strerror or exc}") from None

    def write(self, bufs: list[Any], nbytes: int, packets: int, orig_bytes: int,
              first_ns: int, last_ns: int) -> None:
        """Append ``packets`` records (their buffers, ``nbytes`` in all)."""
        self._write(bufs, nbytes)
        self.size += nbytes
        self.packets += packets
        self.bytes += orig_bytes
        if self.first_ns is None:
            self.first_ns = first_ns
        self.last_ns = last_ns

    def close(self) -> None:
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None

    @property
    def closed(self) -> bool:
        return self.fd is None


class RotatingFile:
    """``<dir>/<stem>-0001.pcapng``, ``-0002``, … : a new file when the current one
    would pass ``max_bytes`` or is older than ``max_seconds`` (0 = no limit).

    ``on_segment(segment)`` is called when a file closes, so the owner can
    finish its manifest; ``header()`` gives the pcapng section header options
    (the tap's metadata) when a file opens.
    """

    def __init__(self, directory: Path, stem: str, *, fmt: str = "pcapng", snaplen: int = 262144,
                 max_bytes: int = 0, max_seconds: float = 0,
                 header: Callable[[], dict[str, str]] | None = None,
                 on_segment: Callable[[Segment], None] | None = None,
                 clock: Callable[[], float] = time.time) -> None:
        if max_bytes < 0:
            raise ValueError(f"max_bytes: must be >= 0, got {max_bytes}")
        if max_seconds < 0:
            raise ValueError(f"max_seconds: must be >= 0, got {max_seconds}")
        self.directory = Path(directory)
        self.stem = stem
        self.fmt = fmt
        self.snaplen = snaplen
        self.max_bytes = max_bytes
        self.max_seconds = max_seconds
        self.header = header
        self.on_segment = on_segment
        self.clock = clock
        self.index = self._last_index()  # a restarted agent goes on numbering, never overwrites
        self.segments: list[Segment] = []
        self.current: CaptureFile | None = None
        self._opened_at = 0.0

    def _last_index(self) -> int:
        last = 0
        try:
            names = [p.name for p in self.directory.iterdir()]
        except OSError:
            return 0
        prefix = self.stem + "-"
        for name in names:
            if name.startswith(prefix):
                num = name[len(prefix):].split(".", 1)[0]
                if num.isdigit():
                    last = max(last, int(num))
        return last

    def _open(self) -> CaptureFile:
        self.index += 1
        self._opened_at = self.clock()
        path = self.directory / f"{self.stem}-{self.index:04d}{SUFFIX[self.fmt]}"
        self.current = CaptureFile(path, self.fmt, self.snaplen, self.header() if self.header else None)
        return self.current

    def room(self) -> int:
        """Bytes the open file may still take before it rotates (large when unlimited)."""
        f = self.current
        if f is None or not self.max_bytes:
            return 1 << 62
        return self.max_bytes - f.size

    def ensure_open(self, incoming: int = 0) -> CaptureFile:
        """The file to append ``incoming`` bytes to (rotating first when due)."""
        f = self.current
        if f is not None and f.packets and self._due(f, incoming):
            self.close_current()
            f = None
        return f if f is not None else self._open()

    def _due(self, f: CaptureFile, incoming: int) -> bool:
        # A file never grows past max_bytes, except by a single frame bigger than it.
        if self.max_bytes and f.size + incoming > self.max_bytes:
            return True
        return bool(self.max_seconds) and self.clock() - self._opened_at >= self.max_seconds

    def tick(self) -> None:
        """Close an idle file that has outlived ``max_seconds``."""
        f = self.current
        if f is not None and self.max_seconds and f.packets and self.clock() - self._opened_at >= self.max_seconds:
            self.close_current()

    def snapshot(self) -> Segment | None:
        f = self.current
        if f is None:
            return None
        return self._segment(f, None)

    def _segment(self, f: CaptureFile, closed_at: float | None) -> Segment:
        return Segment(f.path, self.index, self._opened_at, closed_at, f.packets, f.bytes,
                       None if f.first_ns is None else f.first_ns / 1e9,
                       None if f.last_ns is None else f.last_ns / 1e9, f.size)

    def close_current(self) -> None:
        f = self.current
        if f is None:
            return
        f.close()
        self.current = None
        seg = self._segment(f, self.clock())
        self.segments.append(seg)
        if self.on_segment is not None:
            self.on_segment(seg)

    def close(self) -> None:
        self.close_current()
