"""A rolling recording of the raw sFlow datagrams an engine receives, as pcap files.

    rec = RollingRecorder("/var/lib/pytapdemon/sflow", max_bytes=1 << 30, max_age=6 * 3600)
    rec.record(now, "10.0.0.1", 50000, payload)   # from the collector, per datagram
    rec.close()

Datagrams go into segment files ``sflow-<UTC start>.pcap`` (classic pcap,
Ethernet/IP/UDP to port 6343, the datagram's source address kept), a new one every
``segment_seconds`` or ``segment_bytes``. Whole segments are deleted, oldest first,
while the directory holds more than ``max_bytes`` or a segment's newest datagram
(the next segment's start) is older than ``max_age``, checked when a segment opens
(so up to ``max_age + 2 x segment_seconds`` of datagrams are kept): the last hours are always there to be backtested
(``demon-watch --replay DIR``, or one file: ``sflow.rolling.export``). Files not
named like a segment are never touched. The current segment is flushed at least
every ``flush_seconds``, so a crash loses at most that much.

Standard library only; no locking (one collector thread records).
"""

from __future__ import annotations

import calendar
import os
import re
import socket
import struct
import time
from pathlib import Path
from typing import BinaryIO, Callable, Iterator

from sflow.pcap import SFLOW_PORT, PcapWriter, read_udp_packets, udp_frame

__all__ = ["RollingRecorder", "segments", "export", "SEGMENT_GLOB", "add_arguments",
           "from_args", "parse_size", "parse_age"]

SEGMENT_GLOB = "sflow-*.pcap"
_SEGMENT = re.compile(r"^sflow-(\d{8}T\d{6})\.(\d{6})Z(?:-\d+)?\.pcap$")


def _start(path: Path) -> float:
    """When a segment was opened (from its name: the time of its first datagram)."""
    m = _SEGMENT.match(path.name)
    assert m is not None
    return calendar.timegm(time.strptime(m[1], "%Y%m%dT%H%M%S")) + int(m[2]) / 1e6


def segments(directory: str | Path) -> list[Path]:
    """The recording's segment files, oldest first."""
    directory = Path(directory)
    try:
        names = os.listdir(directory)
    except FileNotFoundError:
        return []
    return sorted(directory / n for n in names if _SEGMENT.match(n))


def _frame(payload: bytes, src: str, sport: int) -> bytes:
    if ":" not in src:
        try:
            return udp_frame(payload, src or "0.0.0.0", sport, "127.0.0.1", SFLOW_PORT)
        except OSError:
            src = "0.0.0.0"
            return udp_frame(payload, src, sport, "127.0.0.1", SFLOW_PORT)
    udp = struct.pack(">HHHH", sport, SFLOW_PORT, 8 + len(payload), 0) + payload
    ip6 = struct.pack(">IHBB16s16s", 6 << 28, len(udp), 17, 64,
                      socket.inet_pton(socket.AF_INET6, src.split("%")[0]),
                      socket.inet_pton(socket.AF_INET6, "::1"))
    return b"\x02\x00\x00\x00\x00\x02\x02\x00\x00\x00\x00\x01\x86\xdd" + ip6 + udp


class RollingRecorder:
    """Appends datagrams to rotating pcap segments in ``directory``, within bounds."""

    def __init__(self, directory: str | Path, max_bytes: int = 1 << 30,
                 max_age: float = 6 * 3600.0, segment_seconds: float = 300.0,
                 segment_bytes: int = 64 << 20, flush_seconds: float = 1.0,
                 clock: Callable[[], float] = time.time) -> None:
        if max_bytes <= 0 or max_age <= 0 or segment_seconds <= 0 or segment_bytes <= 0:
            raise ValueError("recording bounds must be positive")
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self.max_bytes = int(max_bytes)
        self.max_age = float(max_age)
        self.segment_seconds = float(segment_seconds)
        self.segment_bytes = min(int(segment_bytes), max(1 << 16, self.max_bytes // 4))
        self.flush_seconds = flush_seconds
        self.clock = clock
        self.recorded = 0
        self.deleted = 0  # segments deleted to stay within the bounds
        self._fh: BinaryIO | None = None
        self._writer: PcapWriter | None = None
        self._path: Path | None = None
        self._opened_at = 0.0
        self._size = 0
        self._flushed_at = 0.0
        self.prune(clock())

    @property
    def current(self) -> Path | None:
        return self._path

    def record(self, ts: float, src: str, sport: int, payload: bytes) -> None:
        """Keep one datagram received at ``ts`` from ``src``:``sport``."""
        if self._writer is None or ts - self._opened_at >= self.segment_seconds or \
                self._size >= self.segment_bytes:
            self._rotate(ts)
        assert self._writer is not None
        frame = _frame(payload, src, sport)
        self._writer.write(ts, frame)
        self._size += 16 + len(frame)
        self.recorded += 1
        if ts - self._flushed_at >= self.flush_seconds:
            self.flush(ts)

    def record_batch(self, batch: list[tuple[bytes, str]], now: float) -> None:
        """Keep a collector batch: (payload, source address) received at ``now``
        (the source port is not kept by the batch reader: 0)."""
        for payload, src in batch:
            self.record(now, src, 0, payload)

    def flush(self, now: float | None = None) -> None:
        if self._fh is not None:
            self._fh.flush()
        self._flushed_at = self.clock() if now is None else now

    def _rotate(self, ts: float) -> None:
        self._close_segment()
        stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime(ts)) + f".{int(ts % 1 * 1e6):06d}Z"
        path = self.directory / f"sflow-{stamp}.pcap"
        n = 1
        while path.exists():  # two segments in one microsecond (a clock going back)
            path = self.directory / f"sflow-{stamp}-{n}.pcap"
            n += 1
        self._fh = open(path, "wb")
        self._writer = PcapWriter(self._fh)
        self._path, self._opened_at, self._size = path, ts, 24
        self.prune(ts)

    def _close_segment(self) -> None:
        if self._fh is not None:
            self._fh.close()
        self._fh = self._writer = self._path = None

    def prune(self, now: float) -> None:
        """Delete whole segments, oldest first, beyond the size and age bounds (a
        segment's newest datagram came before the next segment's start)."""
        files = [p for p in segments(self.directory) if p != self._path]
        sizes = {}
        for p in files:
            try:
                sizes[p] = p.stat().st_size
            except FileNotFoundError:
                continue
        total = sum(sizes.values()) + self._size
        for n, p in enumerate(files):
            if p not in sizes:
                continue
            ended = _start(files[n + 1]) if n + 1 < len(files) else \
                self._opened_at if self._path is not None else now
            if total <= self.max_bytes and now - ended <= self.max_age:
                break
            try:
                p.unlink()
                self.deleted += 1
            except FileNotFoundError:
                pass
            total -= sizes[p]

    def close(self) -> None:
        self._close_segment()

    def __enter__(self) -> "RollingRecorder":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def iter_datagrams(directory: str | Path) -> Iterator[tuple[float, str, bytes]]:
    """(time, source, payload) of every recorded datagram, oldest segment first."""
    for path in segments(directory):
        for pkt in read_udp_packets(path):
            yield pkt.timestamp, pkt.src_ip, pkt.payload


def export(directory: str | Path, out: str | Path, since: float | None = None,
           until: float | None = None) -> int:
    """Write the recording (optionally a time range of it) as one pcap file."""
    count = 0
    with open(out, "wb") as fh:
        writer = PcapWriter(fh)
        for path in segments(directory):
            for pkt in read_udp_packets(path):
                if (since is not None and pkt.timestamp < since) or \
                        (until is not None and pkt.timestamp > until):
                    continue
                writer.write(pkt.timestamp, _frame(pkt.payload, pkt.src_ip, pkt.src_port))
                count += 1
    return count


# --- command-line options (demon-sflow, demon-watch) -----------------------------------

_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(|k|K|M|G|T|Ki|Mi|Gi|Ti)B?\s*$")
_SCALE = {"": 1, "k": 1e3, "K": 1e3, "M": 1e6, "G": 1e9, "T": 1e12,
          "Ki": 1 << 10, "Mi": 1 << 20, "Gi": 1 << 30, "Ti": 1 << 40}
_AGE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(s|m|h|d)?\s*$")
_AGE_UNIT = {None: 1, "s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_size(text: str) -> int:
    """``1GB``, ``500MiB``, ``1000000`` → bytes (at least 1 MB)."""
    m = _SIZE.match(str(text))
    if not m:
        raise ValueError(f"{text!r} is not a size (e.g. 1GB, 500MiB)")
    size = int(float(m[1]) * _SCALE[m[2]])
    if size < 1_000_000:
        raise ValueError(f"{text!r}: at least 1MB")
    return size


def parse_age(text: str) -> float:
    """``6h``, ``30m``, ``2d``, ``3600`` → seconds (at least 1 minute)."""
    m = _AGE.match(str(text))
    if not m:
        raise ValueError(f"{text!r} is not a duration (e.g. 6h, 30m, 2d)")
    age = float(m[1]) * _AGE_UNIT[m[2]]
    if age < 60:
        raise ValueError(f"{text!r}: at least 1m")
    return age


def _typed(parse: Callable[[str], object]) -> Callable[[str], object]:
    import argparse

    def convert(text: str) -> object:
        try:
            return parse(text)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None
    return convert


def add_arguments(parser: "argparse.ArgumentParser") -> None:  # noqa: F821
    """``--record-sflow DIR`` and its bounds, the same on every command that runs an engine."""
    group = parser.add_argument_group("rolling recording of the raw sFlow datagrams")
    group.add_argument("--record-sflow", metavar="DIR",
                       help="keep the datagrams the engine receives as pcap segments in DIR, "
                            "so the last hours can be backtested (demon-watch --replay DIR)")
    group.add_argument("--record-sflow-size", metavar="SIZE", type=_typed(parse_size),
                       default=1 << 30, help="at most this much on disk (default 1GiB)")
    group.add_argument("--record-sflow-age", metavar="AGE", type=_typed(parse_age),
                       default=6 * 3600.0, help="nothing older than this (default 6h)")


def from_args(args: object) -> RollingRecorder | None:
    """The recorder the options ask for (None without ``--record-sflow``); OSError
    when the directory cannot be used."""
    directory = getattr(args, "record_sflow", None)
    if not directory:
        return None
    return RollingRecorder(directory, max_bytes=getattr(args, "record_sflow_size", 1 << 30),
                           max_age=getattr(args, "record_sflow_age", 6 * 3600.0))
