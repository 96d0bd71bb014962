"""The one read interface of a running daemon: what the mutator publishes.

The mutator (``demon.runtime.loop``) is the only thread that changes state or
touches the state file. After every batch it *publishes*: a new immutable
:class:`Snapshot` (the core's state, the taps it has forgotten, the policies,
the status of the engine, the controller, the state file and the
notifications) and the transitions that batch saved. Readers (the HTTP API,
the notifications, the metrics) only ever call :class:`ReadModel`'s methods:
no lock is held by the mutator while they read, and nobody else opens the
state file.

Transitions are the history rows with their ids (``Store`` ``seq``); the read
model holds every one the state file holds (``limits.history_retain`` bounds
both), so a client can resume from any id it has seen.
"""

from __future__ import annotations

import bisect
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Mapping

from demon.model import LIVE_STATES, HistoryEntry, State, Tap


def tap_record(tap: Tap | Mapping[str, Any]) -> dict[str, Any]:
    """A tap as the capture agent's tap table wants it (``tap_table_entry``
    fields) plus its counters."""
    from demon.capture.taptable import tap_table_entry

    if isinstance(tap, Tap):  # shallow (asdict deep-copies every value: per transition)
        data = dict(vars(tap))
        data["match"] = dict(tap.match)
    else:
        data = dict(tap)
    record = tap_table_entry(data)
    record["packets"] = int(data.get("packets") or 0)
    record["bytes"] = int(data.get("bytes") or 0)
    return record


@dataclass(frozen=True)
class Transition:
    """One recorded transition, as the API and the notifications give it."""

    id: int
    at: float
    tap_id: str | None
    policy: str | None
    kind: str
    state: str | None
    cause: str
    detail: Mapping[str, Any]
    tap: Mapping[str, Any] | None

    @classmethod
    def of(cls, tid: int, entry: HistoryEntry, tap: Mapping[str, Any] | None) -> "Transition":
        detail = dict(entry.detail)
        cause = str(detail.pop("cause", ""))
        policy = detail.get("policy") or (tap.get("policy") if tap else None)
        state = detail.get("state") or (tap.get("state") if tap else None)
        return cls(tid, float(entry.at), entry.tap_id, None if policy is None else str(policy),
                   entry.kind, None if state is None else str(state), cause, detail, tap)

    def to_json(self) -> dict[str, Any]:
        return {"id": self.id, "at": self.at, "tap_id": self.tap_id, "policy": self.policy,
                "kind": self.kind, "state": self.state, "cause": self.cause,
                "detail": dict(self.detail), "tap": dict(self.tap) if self.tap else None}


@dataclass(frozen=True)
class Snapshot:
    """The daemon as of one batch. Everything in it is immutable (the core never
    changes a ``State`` it returned; the mutator replaces ``archive``)."""

    at: float
    state: State
    archive: Mapping[str, Tap]  # ended taps the core has forgotten (the state file keeps them)
    policies: Mapping[str, Any]
    limits: Any
    last_id: int
    started_at: float
    version: str
    engine: Mapping[str, Any] = field(default_factory=dict)
    controller: Mapping[str, Any] = field(default_factory=dict)
    reload: Mapping[str, Any] = field(default_factory=dict)
    store: Mapping[str, Any] = field(default_factory=dict)
    notifications: Mapping[str, Any] = field(default_factory=dict)
    counters: Mapping[str, Any] = field(default_factory=dict)

    def tap(self, tap_id: str) -> Tap | None:
        return self.state.taps.get(tap_id) or self.archive.get(tap_id)

    def taps(self) -> list[Tap]:
        """Every tap known, newest first."""
        out = list(self.state.taps.values())
        out += [t for k, t in self.archive.items() if k not in self.state.taps]
        out.sort(key=lambda t: (-t.created_at, t.tap_id))
        return out

    def live_taps(self) -> list[Tap]:
        return [t for t in self.state.taps.values() if t.state in LIVE_STATES]


class ReadModel:
    """Written by the mutator only (``load``, ``publish``, ``replace``); read by anyone."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._changed = threading.Condition(self._lock)
        self._snapshot: Snapshot | None = None
        self._ids: list[int] = []
        self._items: list[Transition] = []
        self._by_tap: dict[str, list[Transition]] = {}
        self._listeners: list[Callable[[], None]] = []

    # -- the mutator's side ------------------------------------------------------------

    def replace(self, transitions: Iterable[Transition]) -> None:
        """Start over from these (start-up, and after the state file was pruned)."""
        items = sorted(transitions, key=lambda t: t.id)
        by_tap: dict[str, list[Transition]] = {}
        for t in items:
            if t.tap_id is not None:
                by_tap.setdefault(t.tap_id, []).append(t)
        with self._lock:
            self._items, self._ids, self._by_tap = items, [t.id for t in items], by_tap

    def publish(self, snapshot: Snapshot, transitions: Iterable[Transition] = ()) -> None:
        """Make a new snapshot and the transitions saved with it visible at once."""
        new = list(transitions)
        with self._lock:
            for t in new:
                self._items.append(t)
                self._ids.append(t.id)
                if t.tap_id is not None:
                    self._by_tap.setdefault(t.tap_id, []).append(t)
            self._snapshot = snapshot
            self._changed.notify_all()
            listeners = list(self._listeners)
        if new:
            for listener in listeners:
                try:
                    listener()
                except Exception:  # noqa: BLE001 - a reader's hook must not stop the mutator
                    pass

    # -- readers -------------------------------------------------------------------------

    def snapshot(self) -> Snapshot:
        snap = self._snapshot
        if snap is None:
            raise RuntimeError("the daemon has not published its state yet")
        return snap

    @property
    def ready(self) -> bool:
        return self._snapshot is not None

    @property
    def last_id(self) -> int:
        with self._lock:
            return self._ids[-1] if self._ids else (self._snapshot.last_id if self._snapshot
                                                     else 0)

    @property
    def first_id(self) -> int:
        """The oldest transition still held (0 when none)."""
        with self._lock:
            return self._ids[0] if self._ids else 0

    def transitions_after(self, after: int, limit: int = 1000) -> list[Transition]:
        with self._lock:
            start = bisect.bisect_right(self._ids, after)
            return self._items[start:start + max(0, limit)]

    def transitions_of(self, tap_id: str) -> list[Transition]:
        with self._lock:
            return list(self._by_tap.get(tap_id, ()))

    def wait_after(self, after: int, timeout: float, limit: int = 1000) -> list[Transition]:
        """Block (a thread) until some transition has ``id > after`` or ``timeout``."""
        deadline = time.monotonic() + timeout
        with self._lock:
            while True:
                start = bisect.bisect_right(self._ids, after)
                if start < len(self._items):
                    return self._items[start:start + max(0, limit)]
                left = deadline - time.monotonic()
                if left <= 0:
                    return []
                self._changed.wait(left)

    def add_listener(self, callback: Callable[[], None]) -> None:
        """``callback()`` (from the mutator's thread: keep it tiny) after each
        publish that brought new transitions."""
        with self._lock:
            self._listeners.append(callback)

    def remove_listener(self, callback: Callable[[], None]) -> None:
        with self._lock:
            if callback in self._listeners:
                self._listeners.remove(callback)

    def wake(self) -> None:
        """Wake every thread blocked in :meth:`wait_after` (shutdown)."""
        with self._lock:
            self._changed.notify_all()
