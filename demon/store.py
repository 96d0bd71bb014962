"""The tap store: the daemon's state and the taps' history in one SQLite file.

Written by the runtime (one thread, ``save`` once per batch of steps, one
transaction each, so a crash leaves either the old or the new state, never a
mix), read by ``demon-tap`` through its own connection (WAL: readers never
block the writer).

Tables (schema version in ``PRAGMA user_version``):

* ``taps``: every tap ever created, its latest form as JSON (``data``) plus
  queryable columns; ``in_state`` = 1 while the decision core still holds it
  (the core forgets ended taps after a while; the store keeps them).
* ``history``: every recorded transition (``HistoryEntry``), in order.
* ``watch``, ``holddown``: the core's candidates and hold-downs.
* ``meta``: ``last_event_id`` (the engine's event cursor, advanced in the same
  transaction as the steps that consumed the events: none lost, none applied
  twice), ``paused``, ``next_seq``, ``controller_up``.
* ``requests``: the operator queue ``demon-tap`` writes (release/pause/resume/tap)
  and the daemon consumes, answering in ``outcome``.

``prune`` bounds the file: the runtime calls it hourly with
``limits.history_retain``.
"""

from __future__ import annotations

import json
import os
import sqlite3
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Iterable, Mapping

from demon.model import Candidate, HistoryEntry, State, Tap, tap_from_dict, tap_to_dict

SCHEMA_VERSION = 1
REQUEST_KINDS = ("release", "pause", "resume", "tap")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS taps (
    tap_id TEXT PRIMARY KEY,
    policy TEXT NOT NULL,
    flow_key TEXT NOT NULL,
    state TEXT NOT NULL,
    dpid INTEGER, in_port INTEGER, copy_port INTEGER,
    created_at REAL NOT NULL, updated_at REAL NOT NULL,
    expires_at REAL, ended_at REAL,
    in_state INTEGER NOT NULL DEFAULT 1,
    data TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS taps_live ON taps (in_state, state);
CREATE TABLE IF NOT EXISTS history (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    tap_id TEXT,
    at REAL NOT NULL,
    kind TEXT NOT NULL,
    policy TEXT,
    detail TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS history_tap ON history (tap_id, seq);
CREATE INDEX IF NOT EXISTS history_at ON history (at);
CREATE TABLE IF NOT EXISTS watch (
    policy TEXT NOT NULL, flow_key TEXT NOT NULL, data TEXT NOT NULL,
    PRIMARY KEY (policy, flow_key)
);
CREATE TABLE IF NOT EXISTS holddown (
    policy TEXT NOT NULL, flow_key TEXT NOT NULL, until REAL NOT NULL,
    PRIMARY KEY (policy, flow_key)
);
CREATE TABLE IF NOT EXISTS requests (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    kind TEXT NOT NULL,
    target TEXT NOT NULL,
    who TEXT NOT NULL,
    created_at REAL NOT NULL,
    done_at REAL,
    outcome TEXT
);
"""


class StoreError(Exception):
    """The state file cannot be used (unreadable, newer schema, bad request)."""


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


@dataclass(frozen=True)
class Loaded:
    """What ``Store.load`` gives back: the core's state and the event cursor."""

    state: State
    last_event_id: int


def _dumps(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"), sort_keys=True, default=str)


class Store:
    """One connection to the state file. Not shared between threads."""

    def __init__(self, path: str | os.PathLike[str], *, readonly: bool = False,
                 timeout: float = 10.0) -> None:
        self.path = str(path)
        if self.path != ":memory:":
            parent = Path(self.path).parent
            if readonly and not Path(self.path).exists():
                raise StoreError(f"state file {self.path} does not exist "
                                 "(is demon-watch using another --state?)")
            if not readonly:
                try:
                    parent.mkdir(parents=True, exist_ok=True)
                except OSError as exc:
                    raise StoreError(f"cannot create the directory of state file "
                                     f"{self.path}: {exc.strerror or exc}") from None
        try:
            # isolation_level=None: transactions are explicit (BEGIN IMMEDIATE … COMMIT).
            self._db = sqlite3.connect(self.path, timeout=timeout, isolation_level=None,
                                       check_same_thread=False)
            self._db.row_factory = sqlite3.Row
            if self.path != ":memory:":
                self._db.execute("PRAGMA journal_mode=WAL")
            # WAL + NORMAL: a commit survives a process crash (not a power cut) without fsync.
            self._db.execute("PRAGMA synchronous=NORMAL")
            self._migrate()
        except sqlite3.Error as exc:
            raise StoreError(f"cannot open state file {self.path}: {exc}") from exc
        # What the last save wrote, so the next one writes only what changed.
        self._saved_taps: dict[str, Tap] = {}
        self._saved_watch: dict[tuple[str, str], Candidate] = {}
        self._saved_holddown: dict[tuple[str, str], float] = {}
        self._saved_meta: dict[str, str] = {}

    def close(self) -> None:
        self._db.close()

    def __enter__(self) -> "Store":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- schema ------------------------------------------------------------------

    def _migrate(self) -> None:
        version = self._db.execute("PRAGMA user_version").fetchone()[0]
        if version > SCHEMA_VERSION:
            raise StoreError(f"state file {self.path} has schema version {version}, newer "
                             f"than this pytapdemon's ({SCHEMA_VERSION}); upgrade pytapdemon")
        if version < SCHEMA_VERSION:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                for statement in _SCHEMA.split(";"):
                    if statement.strip():
                        self._db.execute(statement)
                self._db.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise

    @property
    def schema_version(self) -> int:
        return int(self._db.execute("PRAGMA user_version").fetchone()[0])

    # -- the daemon's side --------------------------------------------------------

    def load(self) -> Loaded:
        """The state the daemon last saved (an empty State on a new file)."""
        taps = {}
        for row in self._db.execute("SELECT data FROM taps WHERE in_state = 1"):
            tap = tap_from_dict(json.loads(row["data"]))
            taps[tap.tap_id] = tap
        watch = {}
        for row in self._db.execute("SELECT data FROM watch"):
            cand = Candidate(**json.loads(row["data"]))
            watch[(cand.policy, cand.flow_key)] = cand
        holddown = {(r["policy"], r["flow_key"]): float(r["until"])
                    for r in self._db.execute("SELECT policy, flow_key, until FROM holddown")}
        meta = {r["key"]: r["value"] for r in self._db.execute("SELECT key, value FROM meta")}
        state = State(
            taps=taps, holddown=holddown, watch=watch,
            paused=frozenset(json.loads(meta.get("paused", "[]"))),
            controller_up=json.loads(meta.get("controller_up", "false")),
            next_seq=int(meta.get("next_seq", "1")),
        )
        self._saved_taps = dict(taps)
        self._saved_watch = dict(watch)
        self._saved_holddown = dict(holddown)
        self._saved_meta = dict(meta)
        return Loaded(state=state, last_event_id=int(meta.get("last_event_id", "-1")))

    def save(self, state: State, entries: Iterable[HistoryEntry] = (), *,
             last_event_id: int | None = None,
             answered: Iterable[tuple[int, str]] = (), now: float | None = None) -> None:
        """Persist ``state``, append ``entries``, advance the cursor and answer
        operator requests (``(request id, outcome)``), all in one transaction."""
        db = self._db
        db.execute("BEGIN IMMEDIATE")
        try:
            self._write_taps(state.taps)
            self._write_watch(state.watch)
            self._write_holddown(state.holddown)
            meta = {
                "paused": _dumps(sorted(state.paused)),
                "controller_up": _dumps(bool(state.controller_up)),
                "next_seq": str(int(state.next_seq)),
            }
            if last_event_id is not None:
                meta["last_event_id"] = str(int(last_event_id))
            changed = {k: v for k, v in meta.items() if self._saved_meta.get(k) != v}
            if changed:
                db.executemany("INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)",
                               list(changed.items()))
            rows = [(e.tap_id, float(e.at), e.kind, self._policy_of(state, e),
                     _dumps(dict(e.detail))) for e in entries]
            if rows:
                db.executemany("INSERT INTO history (tap_id, at, kind, policy, detail) "
                               "VALUES (?, ?, ?, ?, ?)", rows)
            stamp = time.time() if now is None else now
            answers = [(stamp, outcome, rid) for rid, outcome in answered]
            if answers:
                db.executemany("UPDATE requests SET done_at = ?, outcome = ? WHERE id = ?",
                               answers)
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            # The caches may now be ahead of the file: force a full rewrite next time.
            self._saved_taps.clear()
            self._saved_watch.clear()
            self._saved_holddown.clear()
            self._saved_meta.clear()
            raise
        self._saved_meta.update(changed)

    def _policy_of(self, state: State, entry: HistoryEntry) -> str | None:
        tap = state.taps.get(entry.tap_id or "") or self._saved_taps.get(entry.tap_id or "")
        if tap is not None:
            return tap.policy
        policy = entry.detail.get("policy")
        return None if policy is None else str(policy)

    def _write_taps(self, taps: Mapping[str, Tap]) -> None:
        saved = self._saved_taps
        upserts = []
        for tap_id, tap in taps.items():
            old = saved.get(tap_id)
            if old is tap or old == tap:
                continue
            upserts.append((tap.tap_id, tap.policy, tap.flow_key, tap.state, tap.dpid,
                            tap.in_port, tap.copy_port, tap.created_at, tap.updated_at,
                            tap.expires_at, tap.ended_at, _dumps(tap_to_dict(tap))))
        gone = [(tap_id,) for tap_id in saved if tap_id not in taps]
        if upserts:
            self._db.executemany(
                "INSERT OR REPLACE INTO taps (tap_id, policy, flow_key, state, dpid, in_port, "
                "copy_port, created_at, updated_at, expires_at, ended_at, in_state, data) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, 1, ?)", upserts)
        if gone:
            self._db.executemany("UPDATE taps SET in_state = 0 WHERE tap_id = ?", gone)
        self._saved_taps = dict(taps)

    def _write_watch(self, watch: Mapping[tuple[str, str], Candidate]) -> None:
        saved = self._saved_watch
        upserts = [(key[0], key[1], _dumps(asdict(cand))) for key, cand in watch.items()
                   if saved.get(key) != cand]
        gone = [key for key in saved if key not in watch]
        if upserts:
            self._db.executemany("INSERT OR REPLACE INTO watch (policy, flow_key, data) "
                                 "VALUES (?, ?, ?)", upserts)
        if gone:
            self._db.executemany("DELETE FROM watch WHERE policy = ? AND flow_key = ?", gone)
        self._saved_watch = dict(watch)

    def _write_holddown(self, holddown: Mapping[tuple[str, str], float]) -> None:
        saved = self._saved_holddown
        upserts = [(key[0], key[1], float(until)) for key, until in holddown.items()
                   if saved.get(key) != until]
        gone = [key for key in saved if key not in holddown]
        if upserts:
            self._db.executemany("INSERT OR REPLACE INTO holddown (policy, flow_key, until) "
                                 "VALUES (?, ?, ?)", upserts)
        if gone:
            self._db.executemany("DELETE FROM holddown WHERE policy = ? AND flow_key = ?",
                                 gone)
        self._saved_holddown = dict(holddown)

    def prune(self, before: float) -> dict[str, int]:
        """Delete what ended before ``before``: taps the core no longer holds, their
        history, history without a tap, and answered requests. Returns the counts.

        A tap the core still holds keeps its whole history, however old.
        """
        db = self._db
        db.execute("BEGIN IMMEDIATE")
        try:
            ended = "SELECT tap_id FROM taps WHERE in_state = 0 AND ended_at < ?"
            history = db.execute(
                f"DELETE FROM history WHERE at < ? AND (tap_id IS NULL OR tap_id IN ({ended}))",
                (before, before)).rowcount
            taps = db.execute("DELETE FROM taps WHERE in_state = 0 AND ended_at < ?",
                              (before,)).rowcount
            requests = db.execute("DELETE FROM requests WHERE done_at < ?", (before,)).rowcount
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise
        return {"taps": taps, "history": history, "requests": requests}

    def pending_requests(self) -> list[OperatorRequest]:
        """Operator requests not answered yet, oldest first."""
        rows = self._db.execute("SELECT * FROM requests WHERE done_at IS NULL ORDER BY id")
        return [_request(row) for row in rows]

    # -- the operator's side ------------------------------------------------------

    def enqueue_request(self, kind: str, target: str, who: str,
                        now: float | None = None) -> int:
        """Queue a request for the daemon; returns its id."""
        if kind not in REQUEST_KINDS:
            raise StoreError(f"request kind must be one of {', '.join(REQUEST_KINDS)}, "
                             f"got {kind!r}")
        if not target:
            raise StoreError("request target must not be empty")
        cursor = self._db.execute(
            "INSERT INTO requests (kind, target, who, created_at) VALUES (?, ?, ?, ?)",
            (kind, target, who, time.time() if now is None else now))
        return int(cursor.lastrowid or 0)

    def request(self, request_id: int) -> OperatorRequest | None:
        row = self._db.execute("SELECT * FROM requests WHERE id = ?", (request_id,)).fetchone()
        return None if row is None else _request(row)

    def taps(self, *, live_only: bool = False) -> list[Tap]:
        """Taps, newest first; ``live_only``: pending, active or expiring ones."""
        sql = "SELECT data FROM taps"
        if live_only:
            sql += " WHERE in_state = 1 AND state IN ('pending', 'active', 'expiring')"
        sql += " ORDER BY created_at DESC, tap_id"
        return [tap_from_dict(json.loads(row["data"])) for row in self._db.execute(sql)]

    def tap(self, tap_id: str) -> Tap | None:
        row = self._db.execute("SELECT data FROM taps WHERE tap_id = ?", (tap_id,)).fetchone()
        return None if row is None else tap_from_dict(json.loads(row["data"]))

    def history(self, tap_id: str | None = None, since: float | None = None,
                limit: int | None = None) -> list[HistoryEntry]:
        """Recorded transitions in order, of one tap or all, from ``since``."""
        clauses, args = [], []
        if tap_id is not None:
            clauses.append("tap_id = ?")
            args.append(tap_id)
        if since is not None:
            clauses.append("at >= ?")
            args.append(since)
        sql = "SELECT tap_id, at, kind, detail FROM history"
        if clauses:
            sql += " WHERE " + " AND ".join(clauses)
        sql += " ORDER BY seq"
        if limit is not None:
            sql += f" LIMIT {int(limit)}"
        return [HistoryEntry(row["tap_id"], float(row["at"]), row["kind"],
                             json.loads(row["detail"])) for row in self._db.execute(sql, args)]

    def paused(self) -> frozenset[str]:
        row = self._db.execute("SELECT value FROM meta WHERE key = 'paused'").fetchone()
        return frozenset(json.loads(row["value"])) if row else frozenset()

    def last_event_id(self) -> int:
        row = self._db.execute("SELECT value FROM meta WHERE key = 'last_event_id'").fetchone()
        return int(row["value"]) if row else -1


def _request(row: sqlite3.Row) -> OperatorRequest:
    return OperatorRequest(id=row["id"], kind=row["kind"], target=row["target"],
                           who=row["who"], created_at=row["created_at"],
                           done_at=row["done_at"], outcome=row["outcome"])
