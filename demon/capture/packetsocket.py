"""One inbound frame per system call from an AF_PACKET socket, with kernel
timestamps and the VLAN tag the kernel strips put back.

Too slow for a capture host (see :mod:`demon.capture.ring`), but the right
tool for a sniffer that prints a line per frame (``demon-traffic sniff``).
"""

from __future__ import annotations

import socket
import struct
import time

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
