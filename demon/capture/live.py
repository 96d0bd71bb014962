"""The live receive loop: the kernel's rings (:mod:`demon.capture.ring`) into the
agent's sinks (:mod:`demon.capture.filer`).

Each tap the table knows (and that has not ended) gets a ring; whenever the
table changes, the demultiplexer is recompiled (newest tap first) and handed
to the kernel. A tap ring's frames are written as they are: per kernel block,
one ``writev`` of record headers and slices of the ring itself, no parsing.
Ring 0's frames (taps not known yet, ended taps' late copies, anything else)
take the agent's Python path.

Order at a switch-over: when a tap gets its ring, its earlier frames may still
sit in ring 0's current block (the kernel hands a block over when it is full
or ``block_timeout_ms`` old), so the new ring is not read until that time has
passed: a tap's files stay in arrival order. When a tap ends, its ring keeps
being read for the same time before it serves another tap.
"""

from __future__ import annotations

import logging
import os
import select
import struct
import time
from dataclasses import dataclass
from typing import Any, Callable

from demon.capture import bpf
from demon.capture.filer import CaptureAgent
from demon.capture.ring import (HDR, TP_STATUS_VLAN_TPID_VALID, TP_STATUS_VLAN_VALID, FanoutGroup, Ring)
from demon.capture.sink import Sink
from demon.capture.taptable import Tap

log = logging.getLogger("demon.capture")

_TAG = struct.Struct("!HH")


@dataclass
class Slot:
    """A tap ring: which tap it serves now, and since/until when."""

    ring: Ring
    index: int
    tap_id: str | None = None
    hold_until: float = 0.0  # monotonic: not read before (ring 0 files the tap's earlier frames)
    release_at: float | None = None  # monotonic: free for another tap after (draining)


def restore_tag(view: Any, start: int, snap: int, status: int, tci: int, tpid: int) -> bytes:
    """The frame with the VLAN tag the kernel stripped put back."""
    tag = _TAG.pack(tpid if status & TP_STATUS_VLAN_TPID_VALID else 0x8100, tci)
    return bytes(view[start:start + 12]) + tag + bytes(view[start + 12:start + snap])


def file_block(ring: Ring, block: int, sink: Sink) -> int:
    """Write one kernel block of a tap ring into the tap's files; returns its frame count.

    The hot path: one header unpack per frame and the frame's bytes handed to
    ``writev`` as a slice of the ring (written before the block goes back)."""
    count, off = ring.block_header(block)
    if not count:
        return 0
    if not sink.writing or sink.over_budget:
        sink._refuse(count)
        return count
    m = ring.map
    view = ring.view
    unpack = HDR.unpack_from
    record = sink.record
    overhead = sink.overhead
    snaplen = sink.snaplen
    bufs = sink.bufs
    room = sink.room()
    pend = sink.pend_bytes
    packets = sink.pend_packets
    orig_sum = sink.pend_orig
    first = sink.pend_first
    last = sink.pend_last
    for _ in range(count):
        nxt, sec, nsec, snap, length, st, mac, _net, _hash, tci, tpid = unpack(m, off)
        ts = sec * 1_000_000_000 + nsec
        if st & TP_STATUS_VLAN_VALID:
            data = restore_tag(view, off + mac, snap, st, tci, tpid)[:snaplen]
            snap = len(data)
            length += 4
        else:
            data = view[off + mac:off + mac + snap]
        if pend + snap + overhead > room:
            f = sink.files.current
            if packets or (f is not None and f.packets):
                sink.pend_bytes, sink.pend_packets, sink.pend_orig = pend, packets, orig_sum
                sink.pend_first, sink.pend_last = first, last
                sink.flush(rotate=True)
                if not sink.writing or sink.over_budget:
                    sink._refuse(1)
                    off += nxt
                    continue
                bufs = sink.bufs
                room = sink.room()
                pend = packets = orig_sum = 0
        pend += record(bufs, ts, data, snap, length)
        if not packets:
            first = ts
        packets += 1
        orig_sum += length
        last = ts
        off += nxt
    sink.pend_bytes, sink.pend_packets, sink.pend_orig = pend, packets, orig_sum
    sink.pend_first, sink.pend_last = first, last
    new = sink.packets == 0
    sink.flush()  # before the block goes back to the kernel: the buffers point into it
    if new:
        sink.write_manifests()  # the first packet of a tap is news
    return count


class LiveCapture:
    """Ring 0 plus tap rings on one interface, feeding one :class:`CaptureAgent`."""

    def __init__(self, agent: CaptureAgent, interface: str, *, ring_mb: int = 64, catchall_mb: int = 32,
                 block_kb: int = 1024, block_timeout_ms: int = 20, max_rings: int = 64,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.agent = agent
        self.interface = interface
        self.clock = clock
        block = block_kb * 1024
        self.block_timeout = block_timeout_ms / 1000
        self.hold = self.block_timeout + 0.03
        self.max_rings = max_rings
        self.tap_blocks = max(2, ring_mb * 1024 * 1024 // block)
        self.group = FanoutGroup(interface, block_size=block, blocks=max(2, catchall_mb * 1024 * 1024 // block),
                                 block_timeout_ms=block_timeout_ms, snaplen=agent.snaplen,
                                 keep_noise=agent.keep_noise)
        self.group.options["block_count"] = self.tap_blocks
        self.slots: list[Slot] = []
        self.by_tap: dict[str, Slot] = {}
        self.compiled_version = -1
        self.python_taps: list[str] = []  # taps the kernel program could not express
        self.kernel_packets = 0
        self.kernel_drops = 0
        self.catchall_drops = 0
        self.poller = select.poll()
        self.poller.register(self.group.rings[0].fileno(), select.POLLIN | select.POLLERR)
        self.wake_r, self.wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self.poller.register(self.wake_r, select.POLLIN)
        agent.status_extra = self.status

    def wake(self) -> None:
        """Called from another thread (the daemon stream): look at the table now."""
        try:
            os.write(self.wake_w, b"x")
        except BlockingIOError:
            pass

    # -- the demultiplexer -------------------------------------------------------------------
    def recompile(self) -> None:
        """Give each live tap a ring and the kernel the program that sends it there."""
        table = self.agent.table
        self.compiled_version = table.version
        now = self.clock()
        live = [t for t in table.taps if not t.ended]
        live_ids = {t.tap_id for t in live}
        for tap_id, slot in list(self.by_tap.items()):
            if tap_id not in live_ids and slot.release_at is None:
                slot.release_at = now + self.hold  # drain its ring, then free it
        for tap in live:
            if tap.tap_id not in self.by_tap:
                self._assign(tap, now)
        rules: list[bpf.TapRule] = []
        for tap in reversed(live):  # newest first, as the table's lookup
            slot = self.by_tap.get(tap.tap_id)
            if slot is None or slot.release_at is not None:
                continue
            rules.append(bpf.TapRule(slot.index, tap.vlan_tag, tap.info.get("match"),
                                     bool(tap.info.get("bidirectional"))))
        program, left = bpf.demux_program(rules)
        self.python_taps = [s.tap_id for s in self.slots for r in left if r.ring == s.index and s.tap_id]
        for r in left:
            log.warning("tap ring %d: its match cannot be compiled for the kernel; filed by the Python path", r.ring)
        self.group.set_program(program)

    def _assign(self, tap: Tap, now: float) -> None:
        slot = next((s for s in self.slots if s.tap_id is None), None)
        if slot is None:
            if len(self.slots) + 1 >= self.max_rings:
                log.warning("tap %s: all %d tap rings in use; filed by the Python path", tap.tap_id, self.max_rings)
                return
            try:
                ring = self.group.add_ring()
            except OSError as exc:
                log.warning("tap %s: no ring of its own (%s); filed by the Python path",
                            tap.tap_id, exc.strerror or exc)
                return
            slot = Slot(ring, len(self.group.rings) - 1)
            self.slots.append(slot)
            self.poller.register(ring.fileno(), select.POLLIN | select.POLLERR)
        self._stats(slot)  # drops so far belong to the previous tap
        slot.tap_id = tap.tap_id
        slot.hold_until = now + self.hold
        slot.release_at = None
        self.by_tap[tap.tap_id] = slot

    # -- receiving -----------------------------------------------------------------------------
    def drain(self) -> int:
        """Everything the kernel has handed over: ring 0 first, then tap rings."""
        n = self._drain_catchall()
        now = self.clock()
        for slot in self.slots:
            if slot.tap_id is None or now < slot.hold_until:
                continue
            ring = slot.ring
            sink: Sink | None = None
            for block in ring.blocks():
                if sink is None:
                    tap = self.agent.table.by_id.get(slot.tap_id)
                    sink = self.agent.sink(tap) if tap is not None else self.agent.sinks.get(slot.tap_id)
                try:
                    if sink is None:
                        n += self._frames_to_agent(ring, block)
                    else:
                        n += file_block(ring, block, sink)
                finally:
                    ring.release(block)
            if slot.release_at is not None and now >= slot.release_at:
                self._stats(slot)
                del self.by_tap[slot.tap_id]
                slot.tap_id = None
                slot.release_at = None
        return n

    def _drain_catchall(self) -> int:
        ring = self.group.rings[0]
        n = 0
        for block in ring.blocks():
            try:
                n += self._frames_to_agent(ring, block)
            finally:
                ring.release(block)
        return n

    def _frames_to_agent(self, ring: Ring, block: int) -> int:
        view = ring.view
        handle = self.agent.handle
        count = 0
        for start, sec, nsec, snap, length, st, tci, tpid in ring.frames(block):
            if st & TP_STATUS_VLAN_VALID:
                frame = restore_tag(view, start, snap, st, tci, tpid)[:self.agent.snaplen]
                length += 4
            else:
                frame = bytes(view[start:start + snap])
            handle(frame, sec * 1_000_000_000 + nsec, length)
            count += 1
        return count

    def _stats(self, slot: Slot | None) -> None:
        ring = self.group.rings[0] if slot is None else slot.ring
        got = ring.read_stats()
        self.kernel_packets += got.packets
        self.kernel_drops += got.drops
        if not got.drops:
            return
        if slot is None or slot.tap_id is None:
            self.catchall_drops += got.drops
            log.error("kernel dropped %d frames of ring 0 (taps not known yet, unmatched)", got.drops)
            return
        tap = self.agent.table.by_id.get(slot.tap_id)
        sink = self.agent.sink(tap) if tap is not None else self.agent.sinks.get(slot.tap_id)
        if sink is not None:
            sink.kernel_drops += got.drops
            sink.dirty = True
        log.error("tap %s: kernel dropped %d frames (ring full)", slot.tap_id, got.drops)

    def read_stats(self) -> None:
        self._stats(None)
        for slot in self.slots:
            self._stats(slot)

    def status(self) -> dict[str, Any]:
        return {"interface": self.interface, "kernel_packets": self.kernel_packets,
                "kernel_drops": self.kernel_drops, "kernel_drops_unassigned": self.catchall_drops,
                "rings": {s.tap_id: s.index for s in self.slots if s.tap_id},
                "python_path_taps": self.python_taps}

    # -- the loop --------------------------------------------------------------------------------
    def run(self, should_stop: Callable[[], bool], before: Callable[[], None] | None = None,
            tick_every: float = 0.2, status_every: float = 1.0) -> None:
        agent = self.agent
        self.recompile()
        self.read_stats()
        agent.write_status()
        next_tick = self.clock() + tick_every
        next_status = self.clock() + status_every
        while not should_stop():
            timeout = max(0.0, min(next_tick - self.clock(), 0.05))
            for fd, _ev in self.poller.poll(timeout * 1000):
                if fd == self.wake_r:
                    try:
                        os.read(self.wake_r, 4096)
                    except BlockingIOError:
                        pass
            if before is not None:
                before()  # e.g. apply the daemon's transitions to the table
            self.check_table()
            self.drain()
            now = self.clock()
            if now >= next_tick:
                agent.tick()
                self.check_table()
                next_tick = now + tick_every
            if now >= next_status:
                self.read_stats()
                agent.write_status()
                next_status = now + status_every
        self.finish(before)

    def check_table(self) -> None:
        agent = self.agent
        if agent._stat_due():
            agent.table.reload_if_changed()
        if agent.table.version != self.compiled_version:
            agent.table_changed()
            if agent.pending:
                agent._flush_pending()  # frames that waited for this table go first
            self.recompile()

    def finish(self, before: Callable[[], None] | None = None) -> None:
        """Take what the kernel still holds (blocks retire after their timeout), then close."""
        if before is not None:
            before()
        self.check_table()
        deadline = self.clock() + self.hold + 0.05
        while True:
            for slot in self.slots:
                slot.hold_until = 0.0
            self.drain()
            if self.clock() >= deadline:
                break
            time.sleep(0.01)
        self.drain()
        self.read_stats()
        self.agent.close()
        self.agent.write_status({"stopped_at": time.time()})

    def close(self) -> None:
        self.group.close()
        for fd in (self.wake_r, self.wake_w):
            try:
                os.close(fd)
            except OSError:
                pass
