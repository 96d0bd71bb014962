"""The capture agent's core: which tap a frame belongs to, and its files.

Socket-free: :meth:`CaptureAgent.handle` takes one frame (the slow path, for
frames the kernel could not assign to a tap ring, and for ``--read``),
:meth:`CaptureAgent.tick` does the periodic work, so tests drive it with
recorded frames and a fake clock. The live receive loop
(:mod:`demon.capture.live`) files the frames of tap rings into the same
sinks without parsing them.

Frames of no known tap wait ``grace`` seconds (the tap table may learn the
tap just after its mirror went live) and then go to ``unmatched/``: that file
proves "no packet of any other flow".
"""

from __future__ import annotations

import collections
import logging
import time
from pathlib import Path
from typing import Any, Callable

from demon.capture.budget import DiskBudget
from demon.capture.packet import FlowKey, Fields, header_key, is_ipv6_noise, parse_frame
from demon.capture.sink import UNMATCHED, Sink, write_json
from demon.capture.taptable import Tap, TapTable

log = logging.getLogger("demon.capture")

MAX_PENDING = 200_000
MAX_CACHED = 65_536  # flows whose tap candidates are remembered (cleared when full)
_NOISE: list[Tap] = []
RECENT = 600.0  # s an ended tap's figures stay in the status and the metrics


class CaptureAgent:
    """Files frames under their taps."""

    def __init__(self, out_dir: Path, table: TapTable, *, rotate_bytes: int = 100_000_000,
                 rotate_seconds: float = 0, grace: float = 3.0, keep_noise: bool = False,
                 fmt: str = "pcapng", snaplen: int = 262144, budget: DiskBudget | None = None,
                 interface: str = "", linger: float | None = None,
                 clock: Callable[[], float] = time.time) -> None:
        self.out_dir = Path(out_dir)
        self.out_dir.mkdir(parents=True, exist_ok=True)
        self.table = table
        self.rotate_bytes = rotate_bytes
        self.rotate_seconds = rotate_seconds
        self.grace = grace
        self.keep_noise = keep_noise
        self.fmt = fmt
        self.snaplen = snaplen
        self.interface = interface
        self.budget = budget or DiskBudget()
        self.budget.adopt(self.out_dir)
        # An ended tap's files close this long after its stop (late copies, pending frames).
        self.linger = linger if linger is not None else grace + 2.0
        self.clock = clock
        self.sinks: dict[str, Sink] = {}
        self.pending: collections.deque[tuple[float, bytes, int, int, Fields]] = collections.deque()
        self.counters = collections.Counter[str]()
        self.transitions: dict[str, list[dict[str, Any]]] = {}
        self.started_at = clock()
        self.status_extra: Callable[[], dict[str, Any]] | None = None
        self._last_stat = 0.0
        self._table_version = -1
        # header_key -> the taps (newest first) a frame with that header matches; the
        # stop-time check still runs per frame. Cleared whenever the table changes.
        self._cache: dict[bytes, list[Tap]] = {}
        self._cache_version = -1
        self.table.reload_if_changed()

    # -- sinks ----------------------------------------------------------------------
    def sink(self, tap: Tap | None) -> Sink:
        name = tap.tap_id if tap is not None else UNMATCHED
        sink = self.sinks.get(name)
        if sink is not None and sink.tap is tap:
            return sink
        if sink is None:
            sink = Sink(name, self.out_dir / name, tap, fmt=self.fmt, snaplen=self.snaplen,
                        rotate_bytes=self.rotate_bytes, rotate_seconds=self.rotate_seconds,
                        interface=self.interface, clock=self.clock)
            sink.transitions = self.transitions.get(name, [])
            self.sinks[name] = sink
        elif tap is not None and sink.tap is not tap:
            sink.tap = tap  # the table learnt more (e.g. the stop time, the switch counters)
            sink.dirty = True
        return sink

    def note_transition(self, record: dict[str, Any]) -> None:
        """A transition from the daemon's stream, kept for the tap's manifest."""
        tap_id = record.get("tap_id")
        if not tap_id:
            return
        entry = {k: record.get(k) for k in ("id", "at", "kind", "state", "cause")}
        detail = record.get("detail")
        if isinstance(detail, dict) and detail.get("limit"):
            entry["limit"] = detail["limit"]  # the limit that ended it, machine-readable
        self.transitions.setdefault(tap_id, []).append(entry)
        sink = self.sinks.get(tap_id)
        if sink is not None:
            sink.transitions = self.transitions[tap_id]
            sink.dirty = True

    # -- filing (slow path) ------------------------------------------------------------
    def _file(self, sink: Sink, frame: bytes, ts_ns: int, orig_len: int, fields: Fields | None) -> None:
        first = sink.packets == 0 and sink.pend_packets == 0
        snap = min(len(frame), self.snaplen)
        sink.append(ts_ns, frame[:snap] if snap < len(frame) else frame, snap, orig_len)
        if sink.tap is None and fields is not None:
            sink.flows[str(FlowKey.of(fields))] += 1
        if first:
            # The first packet of a tap is news (the lab's timeline waits for it).
            sink.flush()
            sink.write_manifests()

    def handle(self, frame: bytes, ts_ns: int, orig_len: int | None = None) -> None:
        orig = orig_len if orig_len is not None else len(frame)
        counters = self.counters
        counters["frames"] += 1
        table = self.table
        ts = ts_ns / 1e9
        key = header_key(frame)
        if key is not None:
            if self._cache_version != table.version:
                self._cache.clear()
                self._cache_version = table.version
            cands = self._cache.get(key)
            if cands is None:
                fields = parse_frame(frame)
                if not self.keep_noise and is_ipv6_noise(fields):
                    cands = _NOISE
                else:
                    cands = [t for t in reversed(table.taps) if t.matches(fields)]
                if len(self._cache) >= MAX_CACHED:
                    self._cache.clear()
                self._cache[key] = cands
            if cands is _NOISE:
                counters["ipv6_noise"] += 1
                return
            for tap in cands:
                if tap.covers(ts, table.stop_slack):
                    counters["matched"] += 1
                    self._file(self.sink(tap), frame, ts_ns, orig, None)
                    return
            fields = None
        else:
            fields = parse_frame(frame)
            if not self.keep_noise and is_ipv6_noise(fields):
                counters["ipv6_noise"] += 1
                return
        if fields is None:
            fields = parse_frame(frame)
        tap = None
        if self._stat_due() and table.reload_if_changed():
            self._flush_pending()  # frames that waited for this table go first
            tap = table.lookup(fields, ts)
        elif key is None:
            tap = table.lookup(fields, ts)
        if tap is not None:
            counters["matched"] += 1
            self._file(self.sink(tap), frame, ts_ns, orig, fields)
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
            tap = self.table.lookup(fields, ts_ns / 1e9)
            if tap is not None:
                self.counters["matched"] += 1
                self.counters["matched_late"] += 1
                self._file(self.sink(tap), frame, ts_ns, orig, fields)
            elif force_all or i < force_count or now - arrived >= self.grace:
                self.counters["unmatched"] += 1
                self._file(self.sink(None), frame, ts_ns, orig, fields)
            else:
                kept.append(item)
        self.pending = kept

    def table_changed(self) -> bool:
        """True once after each change of the tap table (the caller recompiles filters)."""
        if self.table.version != self._table_version:
            self._table_version = self.table.version
            for tap in self.table.taps:  # news for sinks that exist (stop, counters)
                if tap.tap_id in self.sinks:
                    self.sink(tap)
            return True
        return False

    # -- periodic work ------------------------------------------------------------------
    def tick(self) -> None:
        changed = self.table.reload_if_changed()
        changed = self.table_changed() or changed
        if self.pending and (changed or self.clock() - self.pending[0][0] >= self.grace):
            self._flush_pending()
        now = self.clock()
        for name, sink in list(self.sinks.items()):
            sink.flush()
            sink.tick()
            if sink.closed_at is None and sink.tap is not None and sink.tap.ended:
                stop = sink.tap.stop or now
                if now >= stop + self.linger:
                    sink.close()
                    log.info("tap %s: capture complete: %d packets, %d bytes, %d kernel drops",
                             name, sink.packets, sink.bytes, sink.kernel_drops)
                    continue
            if sink.dirty:
                sink.write_manifests()
            if sink.closed_at is not None and now - sink.closed_at > RECENT:
                del self.sinks[name]  # figures stay in its tap.json; metrics show recent taps only
        self.budget.enforce(self.sinks.values())
        self.table.forget(now - RECENT - self.linger)

    def close(self) -> None:
        self.table.reload_if_changed()
        self.table_changed()
        self._flush_pending(force_all=True)
        for sink in self.sinks.values():
            sink.close()
        self.budget.enforce(self.sinks.values())

    # -- status --------------------------------------------------------------------------
    def status(self) -> dict[str, Any]:
        doc: dict[str, Any] = {
            "started_at": self.started_at,
            "updated_at": self.clock(),
            "format": self.fmt,
            "snaplen": self.snaplen,
            "counters": dict(self.counters),
            "pending": len(self.pending),
            "tap_table_error": self.table.last_error,
            "disk_budget": {"total": self.budget.total, "per_tap": self.budget.per_tap,
                            "removed_files": self.budget.removed_files,
                            "removed_bytes": self.budget.removed_bytes},
            "taps": {
                name: {"packets": s.packets, "bytes": s.bytes,
                       "first_packet_at": None if s.first_ns is None else s.first_ns / 1e9,
                       "last_packet_at": None if s.last_ns is None else s.last_ns / 1e9,
                       "kernel_drops": s.kernel_drops, "not_written": s.not_written,
                       "write_errors": s.write_errors, "error": s.last_error,
                       "complete": s.closed_at is not None,
                       "files": [str(seg.path) for seg, _open in s.disk_files()]}
                for name, s in list(self.sinks.items())
            },
        }
        doc["kernel_drops"] = sum(t["kernel_drops"] for t in doc["taps"].values())
        if self.status_extra is not None:
            doc.update(self.status_extra())
        return doc

    def write_status(self, extra: dict[str, Any] | None = None) -> None:
        doc = self.status()
        if extra:
            doc.update(extra)
        try:
            write_json(self.out_dir / "agent.json", doc)
        except OSError as exc:
            log.warning("status not written: %s", exc.strerror or exc)
