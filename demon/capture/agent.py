# PYTHON_ARGCOMPLETE_OK
"""``demon-capture``: the capture host's agent. One pcap per tap, plus a manifest.

It runs on the capture host (in the lab: inside h11's namespace), reads every
frame *arriving* on its interface from an AF_PACKET socket (standard library:
no tcpdump pipe to babysit, kernel receive timestamps, the VLAN tag the kernel
strips put back), drops IPv6 link-local chatter, and files each frame under the
tap it belongs to (see :mod:`demon.capture.taptable`: a JSON tap table, or
the daemon's state file read-only with ``--store``). Frames of no known tap
wait ``--grace`` seconds (the tap table may be written just after the mirror
went live) and then go to ``unmatched/``: that file proves "no packet of any
other flow".

Output layout (``--out DIR``)::

    DIR/<tap_id>/<tap_id>-0001.pcap   + <tap_id>-0001.json (manifest)
    DIR/unmatched/unmatched-0001.pcap + unmatched-0001.json
    DIR/agent.json                    status: counters, kernel drops, per-tap totals

Files rotate by size (``--rotate-bytes``) and age (``--rotate-seconds``).
``--read FILE.pcap`` files an existing capture the same way (offline).
"""

from __future__ import annotations

import argparse
import collections
import json
import logging
import os
import select
import signal
import socket
import struct
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable

from demon.capture.packet import FlowKey, Fields, is_ipv6_noise, parse_frame
from demon.capture.pcapwriter import RotatingPcap, Segment, read_pcap
from demon.capture.taptable import StoreTapTable, Tap, TapTable
from sflow import cliopts
from sflow.logsetup import setup_logging

log = logging.getLogger("demon.capture")

UNMATCHED = "unmatched"
ETH_P_ALL = 0x0003
SOL_PACKET = 263
PACKET_AUXDATA = 8
PACKET_STATISTICS = 6
PACKET_OUTGOING = 4
SO_TIMESTAMPNS = 35
SO_RCVBUFFORCE = 33
TP_STATUS_VLAN_VALID = 0x10
TP_STATUS_VLAN_TPID_VALID = 0x40
_AUXDATA = struct.Struct("IIIHHHH")
_TIMESPEC = struct.Struct("qq")
MAX_PENDING = 200_000


def _manifest_fields(tap: Tap | None) -> dict[str, Any]:
    if tap is None:
        return {"tap_id": UNMATCHED}
    info = tap.info
    return {
        "tap_id": tap.tap_id,
        "policy": info.get("policy"),
        "flow_key": info.get("flow_key"),
        "trigger": info.get("trigger"),
        "switch": info.get("dpid"),
        "port": info.get("in_port"),
        "copy_port": info.get("copy_port"),
        "vlan_tag": tap.vlan_tag,
        "match": info.get("match"),
        "bidirectional": bool(info.get("bidirectional")),
        "start": info.get("start", info.get("installed_at")),
        "stop": info.get("stop"),
    }


@dataclass
class Sink:
    """Where one tap's frames go: a rotating pcap and its manifests."""

    name: str
    pcap: RotatingPcap
    tap: Tap | None
    packets: int = 0
    bytes: int = 0
    first_packet_at: float | None = None
    last_packet_at: float | None = None
    flows: collections.Counter[str] = field(default_factory=collections.Counter)
    dirty: bool = False

    def manifest(self, seg: Segment) -> dict[str, Any]:
        doc = _manifest_fields(self.tap)
        doc.update({
            "pcap": seg.path.name,
            "segment": seg.index,
            "opened_at": seg.opened_at,
            "closed_at": seg.closed_at,
            "complete": seg.closed_at is not None,
            "packets": seg.packets,
            "bytes": seg.bytes,
            "first_packet_at": seg.first_ts,
            "last_packet_at": seg.last_ts,
            "tap_packets": self.packets,
            "tap_bytes": self.bytes,
        })
        if self.tap is None:
            doc["flows"] = dict(self.flows.most_common(100))
        return doc

    def write_manifest(self, seg: Segment) -> None:
        path = seg.path.with_suffix(".json")
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(json.dumps(self.manifest(seg), indent=1, default=str) + "\n")
        os.replace(tmp, path)


class CaptureAgent:
    """Files frames under their taps. Socket-free: :meth:`handle` takes frames,
    :meth:`tick` does the periodic work, so tests drive it with recorded frames."""

    def __init__(self, out_dir: Path, table: TapTable, *, rotate_bytes: int = 100_000_000,
                 rotate_seconds: float = 0, grace: float = 3.0, keep_noise: bool = False,
                 clock: Callable[[], float] = time.time) -> None:
        self.out_dir = Path(out_dir)
        self.out_dir.mkdir(parents=True, exist_ok=True)
        self.table = table
        self.rotate_bytes = rotate_bytes
        self.rotate_seconds = rotate_seconds
        self.grace = grace
        self.keep_noise = keep_noise
        self.clock = clock
        self.sinks: dict[str, Sink] = {}
        self.pending: collections.deque[tuple[float, bytes, int, int, Fields]] = collections.deque()
        self.counters = collections.Counter[str]()
        self.started_at = clock()
        self._last_stat = 0.0
        self.table.reload_if_changed()

    # -- filing -----------------------------------------------------------------
    def _sink(self, tap: Tap | None) -> Sink:
        name = tap.tap_id if tap is not None else UNMATCHED
        sink = self.sinks.get(name)
        if sink is None:
            pcap = RotatingPcap(self.out_dir / name, name, self.rotate_bytes, self.rotate_seconds,
                                clock=self.clock)
            sink = Sink(name, pcap, tap)
            pcap.on_segment = sink.write_manifest
            self.sinks[name] = sink
        elif tap is not None:
            sink.tap = tap  # the table may have learnt the tap's stop time since
        return sink

    def _file(self, sink: Sink, frame: bytes, ts_ns: int, orig_len: int, fields: Fields) -> None:
        first = sink.packets == 0
        sink.pcap.write(frame, ts_ns, orig_len)
        sink.packets += 1
        sink.bytes += orig_len
        ts = ts_ns / 1e9
        if sink.first_packet_at is None:
            sink.first_packet_at = ts
        sink.last_packet_at = ts
        if sink.tap is None:
            sink.flows[str(FlowKey.of(fields))] += 1
        sink.dirty = True
        if first:
            # The first packet of a tap is news (the lab's timeline waits for it).
            sink.pcap.flush()
            self._write_open_manifest(sink)

    def handle(self, frame: bytes, ts_ns: int, orig_len: int | None = None) -> None:
        orig = orig_len if orig_len is not None else len(frame)
        self.counters["frames"] += 1
        fields = parse_frame(frame)
        if not self.keep_noise and is_ipv6_noise(fields):
            self.counters["ipv6_noise"] += 1
            return
        tap = self.table.lookup(fields)
        if tap is None and self._stat_due() and self.table.reload_if_changed():
            self._flush_pending()  # frames that waited for this table go first
            tap = self.table.lookup(fields)
        if tap is not None:
            self.counters["matched"] += 1
            self._file(self._sink(tap), frame, ts_ns, orig, fields)
            return
        self.pending.append((self.clock(), frame, ts_ns, orig, fields))
        if len(self.pending) > MAX_PENDING:
            self._flush_pending(force_count=len(self.pending) - MAX_PENDING)

    def _stat_due(self) -> bool:
        now = self.clock()
        if now - self._last_stat >= 0.05:
            self._last_stat = now
            return True
        return False

    def _flush_pending(self, force_all: bool = False, force_count: int = 0) -> None:
        """Re-file waiting frames whose tap is now known; unmatched after the grace."""
        now = self.clock()
        kept: collections.deque[tuple[float, bytes, int, int, Fields]] = collections.deque()
        for i, item in enumerate(self.pending):
            arrived, frame, ts_ns, orig, fields = item
            tap = self.table.lookup(fields)
            if tap is not None:
                self.counters["matched"] += 1
                self.counters["matched_late"] += 1
                self._file(self._sink(tap), frame, ts_ns, orig, fields)
            elif force_all or i < force_count or now - arrived >= self.grace:
                self.counters["unmatched"] += 1
                self._file(self._sink(None), frame, ts_ns, orig, fields)
            else:
                kept.append(item)
        self.pending = kept

    # -- periodic work ------------------------------------------------------------
    def tick(self) -> None:
        changed = self.table.reload_if_changed()
        if self.pending and (changed or self.clock() - self.pending[0][0] >= self.grace):
            self._flush_pending()
        for sink in self.sinks.values():
            sink.pcap.tick()
            if sink.dirty:
                sink.pcap.flush()
                self._write_open_manifest(sink)
                sink.dirty = False

    def _write_open_manifest(self, sink: Sink) -> None:
        seg = sink.pcap.snapshot()
        if seg is not None:
            sink.write_manifest(seg)

    def close(self) -> None:
        self.table.reload_if_changed()
        self._flush_pending(force_all=True)
        for sink in self.sinks.values():
            sink.pcap.close()

    def status(self, extra: dict[str, Any] | None = None) -> dict[str, Any]:
        doc: dict[str, Any] = {
            "started_at": self.started_at,
            "updated_at": self.clock(),
            "counters": dict(self.counters),
            "pending": len(self.pending),
            "tap_table_error": self.table.last_error,
            "taps": {
                name: {"packets": s.packets, "bytes": s.bytes, "first_packet_at": s.first_packet_at,
                       "last_packet_at": s.last_packet_at,
                       "files": [str(seg.path) for seg in s.pcap.segments]
                       + ([str(s.pcap.current.path)] if s.pcap.current else [])}
                for name, s in self.sinks.items()
            },
        }
        if extra:
            doc.update(extra)
        return doc

    def write_status(self, extra: dict[str, Any] | None = None) -> None:
        path = self.out_dir / "agent.json"
        tmp = path.with_name("agent.json.tmp")
        tmp.write_text(json.dumps(self.status(extra), indent=1, default=str) + "\n")
        os.replace(tmp, path)


# -- the live socket --------------------------------------------------------------
class PacketSocket:
    """Inbound frames of one interface, with kernel timestamps and VLAN tags restored."""

    def __init__(self, interface: str, rcvbuf: int = 32 * 1024 * 1024) -> None:
        self.interface = interface
        self.sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ALL))
        try:
            self.sock.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, rcvbuf)
        except OSError:
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        self.sock.setsockopt(SOL_PACKET, PACKET_AUXDATA, 1)
        self.sock.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
        self.sock.bind((interface, 0))
        self.sock.setblocking(False)
        self.kernel_packets = 0
        self.kernel_drops = 0

    def fileno(self) -> int:
        return self.sock.fileno()

    def recv(self) -> tuple[bytes, int, int] | None:
        """One inbound frame ``(frame, ts_ns, orig_len)``, or None when the queue is empty."""
        while True:
            try:
                data, anc, _flags, addr = self.sock.recvmsg(65535, 256)
            except BlockingIOError:
                return None
            if addr[2] == PACKET_OUTGOING:
                continue
            ts_ns = 0
            orig = len(data)
            for level, kind, payload in anc:
                if level == SOL_PACKET and kind == PACKET_AUXDATA and len(payload) >= _AUXDATA.size:
                    status, tp_len, _snap, _mac, _net, tci, tpid = _AUXDATA.unpack_from(payload)
                    orig = tp_len
                    if status & TP_STATUS_VLAN_VALID or tci:
                        if not status & TP_STATUS_VLAN_TPID_VALID:
                            tpid = 0x8100
                        data = data[:12] + struct.pack("!HH", tpid, tci) + data[12:]
                        orig += 4
                elif level == socket.SOL_SOCKET and kind == SO_TIMESTAMPNS:
                    sec, nsec = _TIMESPEC.unpack_from(payload)
                    ts_ns = sec * 1_000_000_000 + nsec
            return data, ts_ns or time.time_ns(), orig

    def update_stats(self) -> None:
        raw = self.sock.getsockopt(SOL_PACKET, PACKET_STATISTICS, 8)
        packets, drops = struct.unpack("II", raw)  # the kernel resets them on each read
        self.kernel_packets += packets
        self.kernel_drops += drops

    def close(self) -> None:
        self.sock.close()


def run_live(agent: CaptureAgent, psock: PacketSocket, should_stop: Callable[[], bool],
             tick_every: float = 0.2) -> None:
    extra = lambda: {"interface": psock.interface, "kernel_packets": psock.kernel_packets,  # noqa: E731
                     "kernel_drops": psock.kernel_drops}
    psock.update_stats()
    agent.write_status(extra())
    next_tick = time.monotonic() + tick_every
    next_status = time.monotonic() + 1.0
    while not should_stop():
        timeout = max(0.0, next_tick - time.monotonic())
        ready, _, _ = select.select([psock], [], [], timeout)
        if ready:
            for _ in range(10000):
                item = psock.recv()
                if item is None:
                    break
                agent.handle(*item)
        now = time.monotonic()
        if now >= next_tick:
            agent.tick()
            next_tick = now + tick_every
        if now >= next_status:
            psock.update_stats()
            agent.write_status(extra())
            next_status = now + 1.0
    # Drain what already arrived, so a stop right after the traffic loses nothing.
    while (item := psock.recv()) is not None:
        agent.handle(*item)
    psock.update_stats()
    agent.close()
    agent.write_status({**extra(), "stopped_at": time.time()})


def run_offline(agent: CaptureAgent, frames: Iterable[tuple[float, bytes, int]]) -> None:
    for ts, frame, orig in frames:
        agent.handle(frame, int(round(ts * 1e9)), orig)
    agent.close()
    agent.write_status({"stopped_at": time.time()})


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="demon-capture", description="capture host agent: one pcap per tap")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("-i", "--interface", help="interface to capture on (inbound frames only)")
    src.add_argument("--read", type=Path, metavar="PCAP", help="file an existing pcap instead (offline)")
    p.add_argument("-o", "--out", type=Path, required=True, help="output directory")
    taps = p.add_mutually_exclusive_group()
    taps.add_argument("--taps", type=Path, help="tap table JSON (re-read when it changes)")
    taps.add_argument("--store", type=Path, help="or: the daemon's state file (demon-watch --state), read-only")
    p.add_argument("--rotate-bytes", type=int, default=100_000_000, help="new file above this size (0 = never)")
    p.add_argument("--rotate-seconds", type=float, default=0, help="new file after this age (0 = never)")
    p.add_argument("--grace", type=float, default=3.0,
                   help="seconds an unknown frame waits for its tap before going to unmatched/")
    p.add_argument("--keep-noise", action="store_true", help="keep IPv6 link-local chatter")
    p.add_argument("-v", "--verbose", action="store_true", help="same as --log-level debug")
    return cliopts.add_common(p, exits={0: "stopped by SIGTERM/SIGINT, or --read filed the whole capture",
                                        1: "the interface cannot be opened", 2: "usage or configuration error"})


def main(argv: list[str] | None = None) -> int:
    args = cliopts.parse_args(build_parser(), argv)
    if args.verbose:
        setup_logging("debug", args.log_format)
    for name in ("rotate_bytes", "rotate_seconds", "grace"):
        if getattr(args, name) < 0:
            print(f"demon-capture: --{name.replace('_', '-')}: must be >= 0", file=sys.stderr)
            return 2
    table = StoreTapTable(args.store) if args.store else TapTable(args.taps)
    agent = CaptureAgent(args.out, table, rotate_bytes=args.rotate_bytes,
                         rotate_seconds=args.rotate_seconds, grace=args.grace,
                         keep_noise=args.keep_noise)
    if args.read:
        run_offline(agent, cliopts.progress(read_pcap(args.read), desc="filing", unit="frame"))
        return 0
    try:
        psock = PacketSocket(args.interface)
    except OSError as exc:
        print(f"demon-capture: --interface {args.interface}: {exc.strerror or exc}", file=sys.stderr)
        return 1
    stop = {"flag": False}

    def on_signal(_signum: int, _frame: Any) -> None:
        stop["flag"] = True

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    log.info("capturing on %s into %s", args.interface, args.out)
    cliopts.notify_ready(f"capturing on {args.interface} into {args.out}")
    try:
        run_live(agent, psock, lambda: stop["flag"])
    finally:
        psock.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
