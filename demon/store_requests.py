"""The operator queue of the state file (table ``requests``): ``demon-tap --state``
queues release/pause/resume/tap requests, the daemon takes them up and answers
them (the answer is written by ``Store.save``, in the batch that decided it).

A mixin of :class:`demon.store.Store`, not a collaborator: these methods are
part of the store's own interface (``demon-tap`` and the runtime call them on
the store) and they use its one connection and its reading helper; a
collaborator would need the same three back-references plus a forwarding
method on the store for each of them.
"""

from __future__ import annotations

import sqlite3
import time
from dataclasses import dataclass
from typing import Callable

from demon.store_errors import StoreError, StoreWriteError, reason

REQUEST_KINDS = ("release", "pause", "resume", "tap")
REQUEST_TTL = 60.0  # seconds a queued request stays valid by default


@dataclass(frozen=True)
class OperatorRequest:
    """One row of the ``requests`` queue."""

    id: int
    kind: str
    target: str
    who: str
    created_at: float
    done_at: float | None = None
    outcome: str | None = None
    expires_at: float | None = None
    code: str | None = None

    def pending(self, now: float) -> bool:
        return self.done_at is None and (self.expires_at is None or self.expires_at > now)


class RequestQueue:
    """Queue, cancel, read and expire operator requests."""

    # What it uses of the store.
    path: str
    _db: sqlite3.Connection

    _read: Callable[..., list[sqlite3.Row]]  # errors as StoreError, naming the file

    def pending_requests(self, now: float | None = None) -> list[OperatorRequest]:
        """Operator requests not answered yet and not expired, oldest first (a read that
        fails is a :class:`StoreError`, which the daemon's loop survives)."""
        return self.requests(pending_only=True, now=now)

    def expire_requests(self, now: float | None = None) -> int:
        """Answer the requests whose time ran out (so nobody acts on them later)."""
        stamp = time.time() if now is None else now
        try:
            cursor = self._db.execute(
                "UPDATE requests SET done_at = ?, outcome = 'expired: not taken up in time', "
                "code = 'expired' WHERE done_at IS NULL AND expires_at <= ?", (stamp, stamp))
        except sqlite3.Error as exc:
            raise StoreWriteError(f"cannot write state file {self.path}: {reason(exc)}",
                                  reason(exc)) from None
        return int(cursor.rowcount or 0)

    def enqueue_request(self, kind: str, target: str, who: str,
                        now: float | None = None, ttl: float = REQUEST_TTL) -> int:
        """Queue a request for the daemon; it expires ``ttl`` seconds from now."""
        if kind not in REQUEST_KINDS:
            raise StoreError(f"request kind must be one of {', '.join(REQUEST_KINDS)}, "
                             f"got {kind!r}")
        if not target:
            raise StoreError("request target must not be empty")
        stamp = time.time() if now is None else now
        try:
            cursor = self._db.execute(
                "INSERT INTO requests (kind, target, who, created_at, expires_at) "
                "VALUES (?, ?, ?, ?, ?)", (kind, target, who, stamp, stamp + ttl))
        except sqlite3.Error as exc:
            raise StoreWriteError(f"cannot write state file {self.path}: {reason(exc)}",
                                  reason(exc)) from None
        return int(cursor.lastrowid or 0)

    def cancel_request(self, request_id: int, who: str, now: float | None = None) -> bool:
        """Withdraw a pending request; False if it was already answered (or unknown)."""
        stamp = time.time() if now is None else now
        try:
            cursor = self._db.execute(
                "UPDATE requests SET done_at = ?, outcome = ?, code = 'cancelled' "
                "WHERE id = ? AND done_at IS NULL", (stamp, f"cancelled by {who}", request_id))
        except sqlite3.Error as exc:
            raise StoreWriteError(f"cannot write state file {self.path}: {reason(exc)}",
                                  reason(exc)) from None
        return bool(cursor.rowcount)

    def request(self, request_id: int) -> OperatorRequest | None:
        rows = self._read("SELECT * FROM requests WHERE id = ?", (request_id,))
        return _request(rows[0]) if rows else None

    def requests(self, *, pending_only: bool = False, now: float | None = None
                 ) -> list[OperatorRequest]:
        """Requests, oldest first; ``pending_only``: not answered and not expired."""
        if pending_only:
            stamp = time.time() if now is None else now
            rows = self._read("SELECT * FROM requests WHERE done_at IS NULL AND (expires_at "
                              "IS NULL OR expires_at > ?) ORDER BY id", (stamp,))
        else:
            rows = self._read("SELECT * FROM requests ORDER BY id")
        return [_request(row) for row in rows]


def _request(row: sqlite3.Row) -> OperatorRequest:
    keys = row.keys()
    return OperatorRequest(id=row["id"], kind=row["kind"], target=row["target"],
                           who=row["who"], created_at=row["created_at"],
                           done_at=row["done_at"], outcome=row["outcome"],
                           expires_at=row["expires_at"] if "expires_at" in keys else None,
                           code=row["code"] if "code" in keys else None)
