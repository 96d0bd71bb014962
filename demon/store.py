"""The tap store: the daemon's state and the taps' history in one SQLite file.

Written by the runtime (one thread, ``save`` once per batch of steps, one
transaction each, so a crash leaves either the old or the new state, never a
mix). While the daemon runs, it alone opens the file: everything else (the
API, ``demon-tap --url``, the capture host, notifications) reads through the
daemon. ``demon-tap --state`` reads it directly when the daemon is down
(WAL: readers never block the writer).

Tables (schema version in ``PRAGMA user_version``):

* ``taps``: every tap ever created, its latest form as JSON (``data``) plus
  queryable columns; ``in_state`` = 1 while the decision core still holds it
  (the core forgets ended taps after a while; the store keeps them).
* ``history``: every recorded transition (``HistoryEntry``), in order; ``seq``
  is the transition's id (the API's ``id``: monotonic, never reused) and
  ``tap`` the tap as it was right after the transition (capture-agent form).
* ``watch``, ``holddown``: the core's candidates and hold-downs.
* ``meta``: ``last_event_id`` (the engine's event cursor, advanced in the same
  transaction as the steps that consumed the events: none lost, none applied
  twice), ``paused``, ``next_seq``, ``controller_up``.
* ``requests``: the operator queue ``demon-tap --state`` writes (release/pause/
  resume/tap) and the daemon consumes, answering in ``outcome`` (``code``: the
  core's answer code). Each request expires (``expires_at``): a daemon started
  later never acts on it.

Errors are :class:`StoreError` with one line naming the file: a damaged file
(``StoreCorrupt``) or a failed write (``StoreWriteError``, the real cause kept:
"database or disk is full"), never a bare sqlite3 exception.

``prune`` bounds the file: the runtime calls it hourly with
``limits.history_retain``.

The errors live in ``demon.store_errors``, the operator queue's methods in
``demon.store_requests`` (a mixin of :class:`Store`); all are importable from
here.
"""

from __future__ import annotations

import json
import os
import sqlite3
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

from demon.model import Candidate, HistoryEntry, State, Tap, tap_from_dict, tap_to_dict
from demon.store_errors import StoreCorrupt, StoreError, StoreWriteError, reason
from demon.store_requests import REQUEST_KINDS, REQUEST_TTL, OperatorRequest, RequestQueue

__all__ = ["REQUEST_KINDS", "REQUEST_TTL", "SCHEMA_VERSION", "Loaded", "OperatorRequest", "Store",
           "StoreCorrupt", "StoreError", "StoreWriteError", "StoredTransition"]

SCHEMA_VERSION = 2

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
    detail TEXT NOT NULL,
    tap TEXT
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
    outcome TEXT,
    expires_at REAL,
    code TEXT
);
"""

# Schema version n-1 -> n.
_UPGRADES = {
    2: ["ALTER TABLE history ADD COLUMN tap TEXT",
        "ALTER TABLE requests ADD COLUMN expires_at REAL",
        "ALTER TABLE requests ADD COLUMN code TEXT",
        # A v1 request never expired: the ones still pending are stale by now.
        "UPDATE requests SET done_at = created_at, outcome = 'expired (queued by an older "
        "pytapdemon)', code = 'expired' WHERE done_at IS NULL"],
}


@dataclass(frozen=True)
class StoredTransition:
    """One history row: its id (``seq``), the entry, and the tap as it was then
    (None for transitions without a tap, or rows from schema 1)."""

    id: int
    entry: HistoryEntry
    tap: Mapping[str, Any] | None


@dataclass(frozen=True)
class Loaded:
    """What ``Store.load`` gives back: the core's state and the event cursor."""

    state: State
    last_event_id: int


def _dumps(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"), sort_keys=True, default=str)


# What reading a damaged file can raise besides sqlite3.DatabaseError: bad JSON,
# rows whose values do not fit the dataclasses, non-numbers in numeric columns.
_DAMAGE = (sqlite3.DatabaseError, ValueError, TypeError, KeyError, AttributeError,
           IndexError, OverflowError)


class Store(RequestQueue):
    """One connection to the state file. Not shared between threads.

    ``create``: make the file (and its directory) when missing; ``demon-tap``
    opens with ``create=False`` so that pointing it at the wrong path never
    leaves a new state file behind. ``readonly`` implies ``create=False``.
    """

    def __init__(self, path: str | os.PathLike[str], *, readonly: bool = False,
                 create: bool = True, timeout: float = 10.0, check: bool = False) -> None:
        self.path = str(path)
        self.readonly = readonly
        if self.path != ":memory:":
            parent = Path(self.path).parent
            if (readonly or not create) and not Path(self.path).exists():
                raise StoreError(f"state file {self.path} does not exist "
                                 "(is demon-watch using another --state?)")
            if create and not readonly:
                try:
                    parent.mkdir(parents=True, exist_ok=True)
                except OSError as exc:
                    raise StoreError(f"cannot create the directory of state file "
                                     f"{self.path}: {exc.strerror or exc}") from None
        try:
            # isolation_level=None: transactions are explicit (BEGIN IMMEDIATE … COMMIT).
            self._db = sqlite3.connect(self.path, timeout=timeout, isolation_level=None,
                                       check_same_thread=False)
        except sqlite3.Error as exc:
            raise StoreError(f"cannot open state file {self.path}: {reason(exc)}") from None
        try:
            self._db.row_factory = sqlite3.Row
            if self.path != ":memory:" and not readonly:
                self._db.execute("PRAGMA journal_mode=WAL")
            # WAL + NORMAL: a commit survives a process crash (not a power cut) without fsync.
            self._db.execute("PRAGMA synchronous=NORMAL")
            if check and self.path != ":memory:":
                self._check()
            self._migrate()
            self._next_id = self._max_history_id() + 1
        except StoreError:
            self._db.close()
            raise
        except sqlite3.OperationalError as exc:
            self._db.close()
            raise StoreError(f"cannot open state file {self.path}: {reason(exc)}") from None
        except _DAMAGE as exc:
            self._db.close()
            raise self._corrupt(exc) from None
        # What the last save wrote, so the next one writes only what changed.
        self._saved_taps: dict[str, Tap] = {}
        self._saved_watch: dict[tuple[str, str], Candidate] = {}
        self._saved_holddown: dict[tuple[str, str], float] = {}
        self._saved_meta: dict[str, str] = {}

    def _check(self) -> None:
        """``PRAGMA quick_check`` (the daemon, once at start): a damaged page is found
        now, not at the first write hours later."""
        rows = [str(r[0]) for r in self._db.execute("PRAGMA quick_check(3)")]
        if rows != ["ok"]:
            words = " ".join(rows).replace("*** in database main ***", "").split()
            raise StoreCorrupt(f"state file {self.path} is damaged ({' '.join(words)[:200]}); "
                               "move it aside to start afresh, or restore it from a backup")

    def _corrupt(self, exc: BaseException) -> StoreCorrupt:
        return StoreCorrupt(f"state file {self.path} is damaged ({reason(exc)}); move it "
                            "aside to start afresh, or restore it from a backup")

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
        if version == SCHEMA_VERSION:
            return
        if self.readonly:
            raise StoreError(f"state file {self.path} has schema version {version}: start "
                             "demon-watch on it once to upgrade it")
        self._db.execute("BEGIN IMMEDIATE")
        try:
            if version == 0:
                for statement in _SCHEMA.split(";"):
                    if statement.strip():
                        self._db.execute(statement)
            else:
                for step in range(version + 1, SCHEMA_VERSION + 1):
                    for statement in _UPGRADES[step]:
                        self._db.execute(statement)
            self._db.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
            self._db.execute("COMMIT")
        except BaseException:
            self._rollback()
            raise

    def _rollback(self) -> None:
        """Roll back if a transaction is still open. SQLite ends a transaction by
        itself on some errors (a full disk among them): a ROLLBACK then fails with
        "no transaction is active" and would hide the real cause."""
        if self._db.in_transaction:
            try:
                self._db.execute("ROLLBACK")
            except sqlite3.Error:
                pass

    def _max_history_id(self) -> int:
        row = self._db.execute("SELECT seq FROM sqlite_sequence WHERE name = 'history'").fetchone()
        top = self._db.execute("SELECT max(seq) FROM history").fetchone()[0]
        return max(int(row[0]) if row else 0, int(top or 0))

    @property
    def schema_version(self) -> int:
        return int(self._db.execute("PRAGMA user_version").fetchone()[0])

    @property
    def last_transition_id(self) -> int:
        """The id of the newest saved transition (0 before the first)."""
        return self._next_id - 1

    # -- the daemon's side --------------------------------------------------------

    def load(self) -> Loaded:
        """The state the daemon last saved (an empty State on a new file).
        Raises :class:`StoreCorrupt` when the file cannot be read back."""
        try:
            return self._load()
        except _DAMAGE as exc:
            raise self._corrupt(exc) from None

    def _load(self) -> Loaded:
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
        paused = json.loads(meta.get("paused", "[]"))
        if not isinstance(paused, list) or not all(isinstance(p, str) for p in paused):
            raise ValueError(f"meta 'paused' is not a list of names: {meta.get('paused')!r}")
        state = State(
            taps=taps, holddown=holddown, watch=watch,
            paused=frozenset(paused),
            controller_up=bool(json.loads(meta.get("controller_up", "false"))),
            next_seq=int(meta.get("next_seq", "1")),
        )
        self._saved_taps = dict(taps)
        self._saved_watch = dict(watch)
        self._saved_holddown = dict(holddown)
        self._saved_meta = dict(meta)
        return Loaded(state=state, last_event_id=int(meta.get("last_event_id", "-1")))

    def meta(self, key: str) -> str | None:
        row = self._db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return None if row is None else str(row["value"])

    def save(self, state: State, entries: Iterable[HistoryEntry] = (), *,
             last_event_id: int | None = None,
             answered: Iterable[tuple[int, str] | tuple[int, str, str]] = (),
             now: float | None = None, taps_then: Sequence[Mapping[str, Any] | None] = (),
             meta: Mapping[str, str] | None = None) -> list[int]:
        """Persist ``state``, append ``entries``, advance the cursor and answer
        operator requests (``(request id, outcome[, code])``), all in one
        transaction. ``taps_then[i]``: the tap as it was right after ``entries[i]``.
        ``meta``: other keys to keep (e.g. notification cursors).
        Returns the ids given to the entries. Raises :class:`StoreWriteError`
        (nothing written) when the file cannot take it."""
        entries = list(entries)
        ids = list(range(self._next_id, self._next_id + len(entries)))
        db = self._db
        changed: dict[str, str] = {}
        try:
            db.execute("BEGIN IMMEDIATE")
            self._write_taps(state.taps)
            self._write_watch(state.watch)
            self._write_holddown(state.holddown)
            values = {
                "paused": _dumps(sorted(state.paused)),
                "controller_up": _dumps(bool(state.controller_up)),
                "next_seq": str(int(state.next_seq)),
                **(meta or {}),
            }
            if last_event_id is not None:
                values["last_event_id"] = str(int(last_event_id))
            changed = {k: v for k, v in values.items() if self._saved_meta.get(k) != v}
            if changed:
                db.executemany("INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)",
                               list(changed.items()))
            rows = [(seq, e.tap_id, float(e.at), e.kind, self._policy_of(state, e),
                     _dumps(dict(e.detail)),
                     _dumps(taps_then[i]) if i < len(taps_then) and taps_then[i] is not None
                     else None)
                    for i, (seq, e) in enumerate(zip(ids, entries))]
            if rows:
                db.executemany("INSERT INTO history (seq, tap_id, at, kind, policy, detail, tap) "
                               "VALUES (?, ?, ?, ?, ?, ?, ?)", rows)
            stamp = time.time() if now is None else now
            answers = [(stamp, a[1], a[2] if len(a) > 2 else None, a[0])  # type: ignore[misc]
                       for a in answered]
            if answers:
                db.executemany("UPDATE requests SET done_at = ?, outcome = ?, code = ? "
                               "WHERE id = ? AND done_at IS NULL", answers)
            db.execute("COMMIT")
        except BaseException as exc:
            self._rollback()
            # The caches may now be ahead of the file: force a full rewrite next time.
            self._saved_taps.clear()
            self._saved_watch.clear()
            self._saved_holddown.clear()
            self._saved_meta.clear()
            if isinstance(exc, sqlite3.Error):
                raise StoreWriteError(f"cannot write state file {self.path}: {reason(exc)}",
                                      reason(exc)) from None
            raise
        self._saved_meta.update(changed)
        self._next_id += len(entries)
        return ids

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
        try:
            db.execute("BEGIN IMMEDIATE")
            ended = "SELECT tap_id FROM taps WHERE in_state = 0 AND ended_at < ?"
            history = db.execute(
                f"DELETE FROM history WHERE at < ? AND (tap_id IS NULL OR tap_id IN ({ended}))",
                (before, before)).rowcount
            taps = db.execute("DELETE FROM taps WHERE in_state = 0 AND ended_at < ?",
                              (before,)).rowcount
            requests = db.execute("DELETE FROM requests WHERE done_at < ?", (before,)).rowcount
            db.execute("COMMIT")
        except sqlite3.Error as exc:
            self._rollback()
            raise StoreWriteError(f"cannot prune state file {self.path}: {reason(exc)}",
                                  reason(exc)) from None
        except BaseException:
            self._rollback()
            raise
        return {"taps": taps, "history": history, "requests": requests}

    # -- reading (the daemon's read model at start; demon-tap --state) ---------------

    def _read(self, sql: str, args: Sequence[Any] = ()) -> list[sqlite3.Row]:
        try:
            return list(self._db.execute(sql, args))
        except sqlite3.OperationalError as exc:
            raise StoreError(f"cannot read state file {self.path}: {reason(exc)}") from None
        except sqlite3.DatabaseError as exc:
            raise self._corrupt(exc) from None

    def transitions(self, after: int = 0, limit: int | None = None) -> list[StoredTransition]:
        """History rows with ``seq > after``, in order."""
        sql = "SELECT seq, tap_id, at, kind, detail, tap FROM history WHERE seq > ? ORDER BY seq"
        if limit is not None:
            sql += f" LIMIT {int(limit)}"
        try:
            return [StoredTransition(int(r["seq"]), HistoryEntry(r["tap_id"], float(r["at"]),
                                                                 r["kind"], _detail(r["detail"])),
                                     json.loads(r["tap"]) if r["tap"] else None)
                    for r in self._read(sql, (after,))]
        except _DAMAGE as exc:
            raise self._corrupt(exc) from None

    # -- the operator's side (its requests: RequestQueue) ---------------------------

    def taps(self, *, live_only: bool = False) -> list[Tap]:
        """Taps, newest first; ``live_only``: pending, active or expiring ones."""
        sql = "SELECT data FROM taps"
        if live_only:
            sql += " WHERE in_state = 1 AND state IN ('pending', 'active', 'expiring')"
        sql += " ORDER BY created_at DESC, tap_id"
        try:
            return [tap_from_dict(json.loads(row["data"])) for row in self._read(sql)]
        except _DAMAGE as exc:
            raise self._corrupt(exc) from None

    def tap(self, tap_id: str) -> Tap | None:
        rows = self._read("SELECT data FROM taps WHERE tap_id = ?", (tap_id,))
        try:
            return tap_from_dict(json.loads(rows[0]["data"])) if rows else None
        except _DAMAGE as exc:
            raise self._corrupt(exc) from None

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
        try:
            return [HistoryEntry(row["tap_id"], float(row["at"]), row["kind"],
                                 _detail(row["detail"])) for row in self._read(sql, args)]
        except _DAMAGE as exc:
            raise self._corrupt(exc) from None

    def paused(self) -> frozenset[str]:
        rows = self._read("SELECT value FROM meta WHERE key = 'paused'")
        try:
            return frozenset(json.loads(rows[0]["value"])) if rows else frozenset()
        except _DAMAGE as exc:
            raise self._corrupt(exc) from None

    def last_event_id(self) -> int:
        rows = self._read("SELECT value FROM meta WHERE key = 'last_event_id'")
        try:
            return int(rows[0]["value"]) if rows else -1
        except _DAMAGE as exc:
            raise self._corrupt(exc) from None


def _detail(text: str) -> dict[str, Any]:
    detail = json.loads(text)
    if not isinstance(detail, dict):
        raise ValueError(f"history detail is not an object: {text[:40]!r}")
    return detail
