"""Requests awaiting a switch's answer, paired by OpenFlow transaction id (xid).

Standard library only; both adapters use it: a thread that sent a batch (or a
stats request) waits here while the framework's event thread hands in barrier
replies, stats replies, errors and lost connections. Errors are the RPC's error
replies (``demon.rpc.protocol`` codes).
"""

from __future__ import annotations

import threading
from typing import Any, Iterable

from demon.rpc import protocol as p
from demon.rpc.protocol import RpcError


class Waiter:
    """One batch or request: done on its last xid's reply (or an error to it, or a lost connection)."""

    def __init__(self, final_xid: int, connection: Any) -> None:
        self.final_xid = final_xid
        self.connection = connection
        self.done = threading.Event()
        self.items: list[Any] = []
        self.errors: list[str] = []
        self.lost = False


class Replies:
    """Thread-safe: ``expect`` before sending, ``wait`` after; the event thread calls the rest."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._by_xid: dict[int, Waiter] = {}

    def expect(self, xids: list[int], connection: Any = None) -> Waiter:
        """Register a batch whose last xid is the barrier (or the one request)."""
        waiter = Waiter(xids[-1], connection)
        with self._lock:
            for xid in xids:
                self._by_xid[xid] = waiter
        return waiter

    def reply(self, xid: int, items: Iterable[Any] = (), last: bool = True) -> None:
        with self._lock:
            waiter = self._by_xid.get(xid)
        if waiter is not None:
            waiter.items.extend(items)
            if last:
                waiter.done.set()

    def error(self, xid: int, type_: int, code: int) -> bool:
        """An OpenFlow error answered ``xid``; True if someone waits for it."""
        with self._lock:
            waiter = self._by_xid.get(xid)
        if waiter is None:
            return False
        waiter.errors.append(f"OpenFlow error type={type_} code={code}")
        if xid == waiter.final_xid:  # an error answers a stats request
            waiter.done.set()
        return True

    def lost(self, connection: Any) -> None:
        """The connection went down: everything waiting on it gives up at once."""
        with self._lock:
            waiters = [w for w in self._by_xid.values() if w.connection is connection]
        for waiter in waiters:
            waiter.lost = True
            waiter.done.set()

    def wait(self, waiter: Waiter, what: str, dpid: int, timeout: float) -> list[Any]:
        """The reply's items; raises RpcError (-32002 lost, -32004 rejected, -32005 timeout)."""
        ok = waiter.done.wait(timeout)
        with self._lock:
            for xid in [x for x, w in self._by_xid.items() if w is waiter]:
                del self._by_xid[xid]
        if waiter.lost:
            raise RpcError(p.UNKNOWN_SWITCH, f"switch {dpid} disconnected during {what}")
        if waiter.errors:
            raise RpcError(p.SWITCH_REJECTED, f"switch {dpid} rejected {what}: {'; '.join(waiter.errors)}")
        if not ok:
            raise RpcError(p.SWITCH_TIMEOUT, f"switch {dpid}: no reply to {what} within {timeout:g} s")
        return waiter.items
