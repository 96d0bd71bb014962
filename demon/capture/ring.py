"""Kernel-side receive: memory-mapped TPACKET_V3 rings in a ``PACKET_FANOUT_CBPF`` group.

The capture interface gets one fanout group. Ring 0 is the catch-all; every
tap the agent knows gets a ring of its own, and a classic BPF program
(:mod:`demon.capture.bpf`) that the kernel runs on every frame sends each
frame to exactly one ring: its tap's, or ring 0. So the kernel, not Python,
tells taps apart; frames reach user space a block at a time (one wake-up per
block, no system call per frame); a tap's ring holds nothing but its copies,
which the agent writes out without parsing them; and the kernel counts the
frames each ring had to drop, which makes kernel drops a per-tap figure.

Rings are slots, reused but never removed while the group lives (removing a
member renumbers the others under a running program). Replacing the program
is atomic: each frame sees the old or the new one, never both, so a frame is
never filed twice nor lost at a switch-over.

Linux only; standard library (``ctypes`` only to hand the kernel a pointer).
"""

from __future__ import annotations

import ctypes
import errno
import mmap
import socket
import struct
from dataclasses import dataclass
from typing import Iterator, Sequence

from demon.capture import bpf

SOL_PACKET = 263
PACKET_RX_RING = 5
PACKET_STATISTICS = 6
PACKET_VERSION = 10
PACKET_FANOUT = 18
PACKET_FANOUT_DATA = 22
PACKET_IGNORE_OUTGOING = 23
PACKET_FANOUT_CBPF = 6
PACKET_FANOUT_FLAG_UNIQUEID = 0x2000
PACKET_FANOUT_FLAG_IGNORE_OUTGOING = 0x4000
TPACKET_V3 = 2
SO_ATTACH_FILTER = 26
ETH_P_ALL = 0x0003
TP_STATUS_KERNEL = 0
TP_STATUS_USER = 1
TP_STATUS_VLAN_VALID = 0x10
TP_STATUS_VLAN_TPID_VALID = 0x40
TP_FT_REQ_FILL_RXHASH = 1

_BLOCK = struct.Struct("=III")  # block_status, num_pkts, offset_to_first_pkt (at offset 8)
# tp_next_offset, tp_sec, tp_nsec, tp_snaplen, tp_len, tp_status, tp_mac, tp_net, rxhash, vlan_tci, vlan_tpid
HDR = struct.Struct("=IIIIIIHHIIH")
_STATS = struct.Struct("=III")


class RingError(OSError):
    """The interface cannot be captured on this way (the message says why)."""


@dataclass
class RingStats:
    packets: int = 0  # frames the kernel put into the ring (or tried to: drops included)
    drops: int = 0  # frames the kernel dropped because the ring was full


def _fprog(program: Sequence[tuple[int, int, int, int]]) -> tuple[bytes, ctypes.Array]:
    """A ``struct sock_fprog`` and the buffer it points to (keep both alive until set)."""
    raw = bpf.pack(program)
    buf = ctypes.create_string_buffer(raw, len(raw))
    return struct.pack("@HP", len(program), ctypes.addressof(buf)), buf


def set_filter(sock: socket.socket, program: Sequence[tuple[int, int, int, int]]) -> None:
    fprog, buf = _fprog(program)
    sock.setsockopt(socket.SOL_SOCKET, SO_ATTACH_FILTER, fprog)
    del buf


class Ring:
    """One TPACKET_V3 receive ring on one packet socket."""

    def __init__(self, ifindex: int, block_size: int = 1 << 20, block_count: int = 8,
                 block_timeout_ms: int = 20, snaplen: int = 262144, keep_noise: bool = False) -> None:
        if block_size < 4096 or block_size & (block_size - 1):
            raise ValueError("block_size: a power of two >= 4096")
        self.sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, 0)
        try:
            # Nothing enters before the ring is in its group: reject until then.
            set_filter(self.sock, bpf.reject_all())
            self.sock.setsockopt(SOL_PACKET, PACKET_VERSION, TPACKET_V3)
            frame_size = 2048  # only a hint for V3 (frames are packed in blocks)
            req = struct.pack("=IIIIIII", block_size, block_count, frame_size,
                              block_size // frame_size * block_count, block_timeout_ms, 0, 0)
            self.sock.setsockopt(SOL_PACKET, PACKET_RX_RING, req)
            self.size = block_size * block_count
            self.map = mmap.mmap(self.sock.fileno(), self.size, mmap.MAP_SHARED,
                                 mmap.PROT_READ | mmap.PROT_WRITE)
            try:
                self.sock.setsockopt(SOL_PACKET, PACKET_IGNORE_OUTGOING, 1)
            except OSError:
                pass  # old kernel: the filters drop outgoing frames anyway
        except BaseException:
            self.sock.close()
            raise
        self.block_size = block_size
        self.block_count = block_count
        self.next_block = 0
        self.view = memoryview(self.map)
        self.stats = RingStats()
        self.snaplen = snaplen
        self.keep_noise = keep_noise
        self.ifindex = ifindex

    def fileno(self) -> int:
        return self.sock.fileno()

    def accept(self) -> None:
        """Start taking frames (the ring filter: outgoing and noise dropped, snap length)."""
        set_filter(self.sock, bpf.ring_filter(self.snaplen, self.keep_noise))

    def blocks(self) -> Iterator[int]:
        """Offsets of the blocks the kernel has handed over, in order. The caller
        must :meth:`release` each before asking for the next."""
        while True:
            off = self.next_block * self.block_size
            status = _BLOCK.unpack_from(self.map, off + 8)[0]
            if not status & TP_STATUS_USER:
                return
            yield off

    def frames(self, block: int) -> Iterator[tuple[int, int, int, int, int, int, int, int]]:
        """``(offset, sec, nsec, snaplen, length, status, vlan_tci, vlan_tpid)`` of each
        frame of a block; the frame's bytes are ``view[offset: offset + snaplen]``."""
        _status, count, first = _BLOCK.unpack_from(self.map, block + 8)
        off = block + first
        unpack = HDR.unpack_from
        m = self.map
        for _ in range(count):
            nxt, sec, nsec, snap, length, st, mac, _net, _hash, tci, tpid = unpack(m, off)
            yield off + mac, sec, nsec, snap, length, st, tci, tpid
            off += nxt

    def block_header(self, block: int) -> tuple[int, int]:
        """``(frame count, offset of the first frame)``."""
        _status, count, first = _BLOCK.unpack_from(self.map, block + 8)
        return count, block + first

    def release(self, block: int) -> None:
        struct.pack_into("=I", self.map, block + 8, TP_STATUS_KERNEL)
        self.next_block = (self.next_block + 1) % self.block_count

    def read_stats(self) -> RingStats:
        """Add what the kernel counted since the last read (it resets on each read)."""
        raw = self.sock.getsockopt(SOL_PACKET, PACKET_STATISTICS, _STATS.size)
        packets, drops, _freeze = _STATS.unpack(raw[:_STATS.size].ljust(_STATS.size, b"\0"))
        self.stats.packets += packets
        self.stats.drops += drops
        return RingStats(packets, drops)

    def close(self) -> None:
        try:
            self.view.release()
            self.map.close()
        except (BufferError, ValueError):
            pass
        self.sock.close()


class FanoutGroup:
    """Ring 0 plus one ring per tap slot on one interface, demultiplexed by the kernel."""

    def __init__(self, interface: str, *, block_size: int = 1 << 20, blocks: int = 8,
                 block_timeout_ms: int = 20, snaplen: int = 262144, keep_noise: bool = False) -> None:
        self.interface = interface
        try:
            self.ifindex = socket.if_nametoindex(interface)
        except OSError as exc:
            raise RingError(errno.ENODEV, f"no such interface {interface!r}") from exc
        self.options = dict(block_size=block_size, block_count=blocks, block_timeout_ms=block_timeout_ms,
                            snaplen=snaplen, keep_noise=keep_noise)
        self.rings: list[Ring] = []
        self.group_id: int | None = None
        self.program: list[tuple[int, int, int, int]] = [(bpf.RET | bpf.K, 0, 0, 0)]
        self.add_ring()  # ring 0: the catch-all

    def add_ring(self) -> Ring:
        ring = Ring(self.ifindex, **self.options)  # type: ignore[arg-type]
        try:
            ring.sock.bind((self.interface, ETH_P_ALL))
            if self.group_id is None:
                arg = PACKET_FANOUT_CBPF | PACKET_FANOUT_FLAG_UNIQUEID | PACKET_FANOUT_FLAG_IGNORE_OUTGOING
                try:
                    ring.sock.setsockopt(SOL_PACKET, PACKET_FANOUT, arg << 16)
                except OSError:  # a kernel without the outgoing flag: the filters drop them
                    ring.sock.setsockopt(SOL_PACKET, PACKET_FANOUT,
                                         (PACKET_FANOUT_CBPF | PACKET_FANOUT_FLAG_UNIQUEID) << 16)
                raw = ring.sock.getsockopt(SOL_PACKET, PACKET_FANOUT)
                self.group_id = raw & 0xFFFF
                self._set_program(ring, self.program)
            else:
                arg = PACKET_FANOUT_CBPF | PACKET_FANOUT_FLAG_IGNORE_OUTGOING
                try:
                    ring.sock.setsockopt(SOL_PACKET, PACKET_FANOUT, self.group_id | arg << 16)
                except OSError:
                    ring.sock.setsockopt(SOL_PACKET, PACKET_FANOUT, self.group_id | PACKET_FANOUT_CBPF << 16)
            ring.accept()
        except BaseException:
            ring.close()
            raise
        self.rings.append(ring)
        return ring

    @staticmethod
    def _set_program(ring: Ring, program: Sequence[tuple[int, int, int, int]]) -> None:
        fprog, buf = _fprog(program)
        ring.sock.setsockopt(SOL_PACKET, PACKET_FANOUT_DATA, fprog)
        del buf

    def set_program(self, program: Sequence[tuple[int, int, int, int]]) -> None:
        """Replace the demultiplexer (atomically, for the whole group)."""
        self._set_program(self.rings[0], program)
        self.program = list(program)

    def close(self) -> None:
        for ring in self.rings:
            ring.close()
        self.rings = []
