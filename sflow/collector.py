"""UDP sFlow collector feeding an :class:`~sflow.engine.Engine`, and a pcap replayer.

The receive loop does only this: drain up to ``BATCH`` datagrams from the
socket (one ``recvmmsg`` call when the compiled kernel is built), hand the
batch to the engine's one way in (``Engine.receive_batch``, see
``sflow.ingest``) under one lock acquisition, and run the engine's
housekeeping about once a second. A malformed datagram is counted by reason,
never fatal.

The socket asks for a 32 MiB receive buffer (``SO_RCVBUFFORCE`` when allowed,
else ``SO_RCVBUF``, which the kernel caps at ``net.core.rmem_max``);
:meth:`Collector.stats` reports what it got and the kernel's drop count for
the socket from ``/proc/net/udp``.
"""

from __future__ import annotations

import logging
import mmap
import os
import select
import socket
import threading
import time
from pathlib import Path
from typing import Any, Callable, Iterable

from sflow.engine import Engine

__all__ = ["Collector", "open_udp_socket", "kernel_drops", "replay_pcap", "send_payloads",
           "pcap_payloads", "BATCH", "RCVBUF_WANTED"]

log = logging.getLogger(__name__)

BATCH = 256
RCVBUF_WANTED = 32 << 20
_SO_RCVBUFFORCE = getattr(socket, "SO_RCVBUFFORCE", 33)


def open_udp_socket(host: str, port: int, rcvbuf: int = RCVBUF_WANTED) -> socket.socket:
    """A bound UDP socket (IPv4 or IPv6 by the host's form) with the largest buffer allowed."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_DGRAM)
    try:
        try:
            sock.setsockopt(socket.SOL_SOCKET, _SO_RCVBUFFORCE, rcvbuf)
        except OSError:  # not CAP_NET_ADMIN: capped at net.core.rmem_max
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        sock.bind((host, port))
    except OSError:
        sock.close()
        raise
    return sock


def kernel_drops(sock: socket.socket, proc: Path = Path("/proc/net")) -> int | None:
    """The kernel's receive-drop count for this UDP socket, or None if not found."""
    inode = str(os.fstat(sock.fileno()).st_ino)
    for name in ("udp", "udp6"):
        try:
            lines = (proc / name).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            if len(fields) >= 13 and fields[9] == inode:
                return int(fields[-1])
    return None


class Collector:
    """Receives sFlow on a UDP socket in a thread and feeds the engine."""

    def __init__(self, engine: Engine, host: str = "127.0.0.1", port: int = 6343,
                 rcvbuf: int = RCVBUF_WANTED, clock: Callable[[], float] = time.time,
                 fast_path: bool = True, recorder: Any = None) -> None:
        self.engine = engine
        #: ``sflow.rolling.RollingRecorder`` (or anything with ``record_batch``): every
        #: datagram read is kept for backtests, outside the engine lock
        self.recorder = recorder
        self.record_errors = 0
        #: kept for callers; how datagrams are read is the engine's choice (``compiled=``)
        self.fast_path = fast_path
        self.clock = clock
        self.sock = open_udp_socket(host, port, rcvbuf)
        self.rcvbuf_wanted = rcvbuf
        self.rcvbuf = self.sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.received = 0
        self.ingest_errors = 0
        if self.rcvbuf < rcvbuf:
            log.warning("UDP receive buffer is %d bytes (asked %d): raise net.core.rmem_max "
                        "or run as root to avoid drops in bursts", self.rcvbuf, rcvbuf)

    @property
    def address(self) -> tuple[str, int]:
        host, port = self.sock.getsockname()[:2]
        return host, port

    def start(self) -> "Collector":
        self._thread = threading.Thread(target=self._loop, name="sflow-collector", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        self.sock.close()

    def stats(self) -> dict[str, Any]:
        """Socket figures for ``/analyzer/json``."""
        drops = None if self._stop.is_set() else kernel_drops(self.sock)
        return {"udpReceiveBuffer": self.rcvbuf, "udpReceiveBufferWanted": self.rcvbuf_wanted,
                "udpKernelDrops": drops, "udpDatagramsRead": self.received}

    def _loop(self) -> None:
        sock = self.sock
        # Non-blocking + poll: a recv on a socket with a timeout would wait for the
        # *next* datagram while draining, holding a batch back.
        sock.setblocking(False)
        poller = select.poll()
        poller.register(sock, select.POLLIN)
        engine = self.engine
        lock = engine.lock
        last_tick = 0.0
        kernel = engine.ingester.kernel
        recv_batch = kernel.recv_batch if kernel is not None else None
        # recvmmsg lands each datagram in its own 64 KiB slot of an anonymous mapping:
        # pages are only touched where datagrams land
        slots = mmap.mmap(-1, BATCH * 65536) if recv_batch is not None else None
        recv = sock.recvfrom
        fd = sock.fileno()
        while not self._stop.is_set():
            batch: list[tuple[bytes, str]] = []
            if poller.poll(250):
                try:
                    if recv_batch is not None:  # recvmmsg: one system call per batch
                        batch = recv_batch(fd, slots, BATCH)
                    else:
                        while len(batch) < BATCH:
                            payload, addr = recv(65535)
                            batch.append((payload, addr[0]))
                except (BlockingIOError, InterruptedError):
                    pass
                except OSError:
                    if self._stop.is_set():
                        return
                    raise
            self.received += len(batch)
            now = self.clock()
            if self.recorder is not None and batch:
                self._record(batch, now)
            with lock:
                before = engine.last_event_id
                if batch:
                    failures = engine.receive_batch(batch, now)
                    if failures:
                        self.ingest_errors += failures
                if now - last_tick >= 1.0:
                    engine.tick(now)
                    last_tick = now
                if engine.last_event_id != before:
                    lock.notify_all()


    def _record(self, batch: list[tuple[bytes, str]], now: float) -> None:
        try:
            self.recorder.record_batch(batch, now)
        except OSError as exc:  # a full disk must not stop collection
            self.record_errors += 1
            if self.record_errors == 1 or self.record_errors % 1000 == 0:
                log.warning("recording sFlow datagrams failed (%d batches so far): %s",
                            self.record_errors, exc)


# --- replay -----------------------------------------------------------------------------

def pcap_payloads(path: str | Path, port: int | None = 6343) -> list[tuple[float, bytes]]:
    """(timestamp, UDP payload) of the sFlow datagrams in a pcap/pcapng file."""
    from sflow.pcap import read_udp
    return [(d.timestamp, d.payload) for d in read_udp(path, port)]


def send_payloads(payloads: Iterable[bytes], address: tuple[str, int],
                  rate: float | None = None) -> int:
    """Send payloads to ``address``, at ``rate`` datagrams/s (None: as fast as possible)."""
    family = socket.AF_INET6 if ":" in address[0] else socket.AF_INET
    sent = 0
    with socket.socket(family, socket.SOCK_DGRAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4 << 20)
        start = time.perf_counter()
        for payload in payloads:
            if rate:
                due = start + sent / rate
                delay = due - time.perf_counter()
                if delay > 0.0005:
                    time.sleep(delay)
            sock.sendto(payload, address)
            sent += 1
    return sent


def replay_pcap(path: str | Path, address: tuple[str, int], speed: float | None = None,
                port: int | None = 6343, stop: threading.Event | None = None,
                progress: Callable[..., Iterable[tuple[float, bytes]]] | None = None) -> int:
    """Send a capture's sFlow payloads to ``address``; returns how many were sent.

    ``speed`` None sends back to back; otherwise at the original timing divided
    by ``speed`` (2.0 = twice as fast). ``progress`` wraps the loop
    (``sflow.cliopts.progress``: a bar on a terminal).
    """
    items = pcap_payloads(path, port)
    if speed is not None and speed <= 0:
        raise ValueError(f"speed must be > 0, got {speed}")
    family = socket.AF_INET6 if ":" in address[0] else socket.AF_INET
    sent = 0
    with socket.socket(family, socket.SOCK_DGRAM) as sock:
        start = time.monotonic()
        first_ts = items[0][0] if items else 0.0
        loop = progress(items, total=len(items), desc="replay", unit="datagram") if progress \
            else items
        for ts, payload in loop:
            if stop is not None and stop.is_set():
                break
            if speed is not None:
                delay = start + (ts - first_ts) / speed - time.monotonic()
                if delay > 0:
                    time.sleep(delay)
            sock.sendto(payload, address)
            sent += 1
    return sent
