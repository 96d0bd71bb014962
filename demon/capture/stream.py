"""``demon-capture --daemon URL``: learn taps from the daemon's transition stream.

The daemon API's contract (``GET /api/v1/transitions?after=ID&limit=N&timeout=S``
→ ``{"transitions": [...], "last_id": N}``, a long poll; records carry the
tap as the agent's tap table wants it) is followed by a background thread;
the receive loop applies what it brought to the same :class:`TapTable` the
``--taps`` file feeds, on its own thread, so the table has one writer.

The id of the last transition applied is kept in ``DIR/daemon-cursor.json``:
a restarted agent, or one whose daemon restarted or was out of reach for a
while, asks for what came after it and so misses nothing. Capture goes on
all the while: an unreachable daemon only delays news of taps.
"""

from __future__ import annotations

import json
import logging
import os
import queue
import stat
import threading
import time
from pathlib import Path
from typing import Any, Callable
from urllib.parse import urlparse

from demon.capture.sink import write_json
from demon.capture.taptable import ENDED_STATES, TapTable

log = logging.getLogger("demon.capture")

CURSOR_FILE = "daemon-cursor.json"
BACKOFF = (0.2, 0.5, 1.0, 2.0, 5.0)


class StreamConfigError(ValueError):
    """A bad --daemon URL or token file (the message is one line naming it)."""


def check_url(url: str) -> str:
    parsed = urlparse(url)
    if parsed.scheme not in ("http", "https") or not parsed.netloc:
        raise StreamConfigError(f"--daemon {url!r}: expected http://HOST:PORT or https://HOST:PORT")
    return url.rstrip("/")


def read_token(path: Path) -> str:
    """The secret of the first token in a token file (``name:secret`` or a bare secret)."""
    try:
        st = os.stat(path)
        text = Path(path).read_text()
    except FileNotFoundError:
        raise StreamConfigError(f"--token-file {path}: no such file") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise StreamConfigError(f"--token-file {path}: {getattr(exc, 'strerror', None) or exc}") from None
    if st.st_mode & (stat.S_IRWXG | stat.S_IRWXO):
        log.warning("token file %s is readable by group or others (mode %o): make it 0600",
                    path, stat.S_IMODE(st.st_mode))
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        secret = line.split(":", 1)[1] if ":" in line else line
        if not secret:
            break
        return secret
    raise StreamConfigError(f"--token-file {path}: no token in it")


def load_cursor(out_dir: Path, url: str) -> int:
    """The last transition id applied from this daemon (0: from the beginning)."""
    try:
        doc = json.loads((Path(out_dir) / CURSOR_FILE).read_text())
    except (OSError, ValueError):
        return 0
    if not isinstance(doc, dict) or doc.get("url") != url or not isinstance(doc.get("last_id"), int):
        return 0
    return max(0, doc["last_id"])


class TransitionFollower:
    """Long-polls the daemon for transitions after the last one applied."""

    def __init__(self, url: str, out_dir: Path, *, token: str | None = None, poll_timeout: float = 25,
                 limit: int = 500, wake: Callable[[], None] | None = None,
                 clock: Callable[[], float] = time.time) -> None:
        import requests

        self.url = check_url(url)
        self.out_dir = Path(out_dir)
        self.out_dir.mkdir(parents=True, exist_ok=True)
        self.token = token
        self.poll_timeout = poll_timeout
        self.limit = limit
        self.wake = wake
        self.clock = clock
        self.session = requests.Session()
        if token:
            self.session.headers["Authorization"] = f"Bearer {token}"
        self.applied_id = load_cursor(self.out_dir, self.url)
        self.fetched_id = self.applied_id
        self.queue: queue.Queue[list[dict[str, Any]]] = queue.Queue()
        self.up = False
        self.last_error: str | None = None
        self.last_contact: float | None = None
        self.received = 0
        self.errors = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # -- the polling thread -------------------------------------------------------------
    def start(self) -> "TransitionFollower":
        self._thread = threading.Thread(target=self._run, name="daemon-stream", daemon=True)
        self._thread.start()
        return self

    def stop(self, timeout: float = 1.0) -> None:
        self._stop.set()
        try:
            self.session.close()
        except Exception:  # noqa: BLE001 - closing a pool mid-request may raise anything
            pass
        if self._thread is not None:
            self._thread.join(timeout)

    def _run(self) -> None:
        failures = 0
        while not self._stop.is_set():
            try:
                got = self.poll_once()
            except Exception as exc:  # noqa: BLE001 - the daemon may be down or speak nonsense
                self._down(str(exc).splitlines()[0] if str(exc) else type(exc).__name__)
                self._stop.wait(BACKOFF[min(failures, len(BACKOFF) - 1)])
                failures += 1
                continue
            failures = 0
            if got and self.wake is not None:
                self.wake()

    def _down(self, why: str) -> None:
        self.errors += 1
        if self.up or self.last_error is None:
            log.warning("daemon %s unreachable (%s); capturing on, will catch up from transition %d",
                        self.url, why, self.fetched_id)
        self.up = False
        self.last_error = why

    def poll_once(self) -> int:
        """One long poll; queues what it got and returns how many transitions."""
        resp = self.session.get(f"{self.url}/api/v1/transitions",
                                params={"after": self.fetched_id, "limit": self.limit,
                                        "timeout": self.poll_timeout},
                                timeout=(5, self.poll_timeout + 10))
        if resp.status_code in (401, 403):
            raise RuntimeError(f"HTTP {resp.status_code}: {_error_text(resp)} (check --token-file)")
        if resp.status_code != 200:
            raise RuntimeError(f"HTTP {resp.status_code}: {_error_text(resp)}")
        doc = resp.json()
        records = doc.get("transitions") if isinstance(doc, dict) else None
        if not isinstance(records, list):
            raise RuntimeError("answer without a transitions list")
        if not self.up:
            log.info("daemon %s reached; following transitions after %d", self.url, self.fetched_id)
        self.up = True
        self.last_error = None
        self.last_contact = self.clock()
        records = [r for r in records if isinstance(r, dict) and isinstance(r.get("id"), int)
                   and r["id"] > self.fetched_id]
        if records:
            records.sort(key=lambda r: r["id"])
            self.fetched_id = records[-1]["id"]
            self.queue.put(records)
        else:
            last = doc.get("last_id")
            if isinstance(last, int) and last < self.fetched_id:
                # The daemon's history is behind us: a new state file. Start over with it.
                log.warning("daemon %s: its last transition is %d, ours %d: following its history anew",
                            self.url, last, self.fetched_id)
                self.fetched_id = last
        return len(records)

    # -- applying (the receive loop's thread) ----------------------------------------------
    def apply(self, table: TapTable, note: Callable[[dict[str, Any]], None] | None = None) -> int:
        """Apply queued transitions to the tap table; persist the cursor. Returns how many."""
        n = 0
        while True:
            try:
                batch = self.queue.get_nowait()
            except queue.Empty:
                break
            for record in batch:
                apply_transition(table, record)
                if note is not None:
                    note(record)
                self.applied_id = max(self.applied_id, record["id"])
                n += 1
        if n:
            self.received += n
            self.save_cursor()
        return n

    def save_cursor(self) -> None:
        try:
            write_json(self.out_dir / CURSOR_FILE, {"url": self.url, "last_id": self.applied_id,
                                                    "saved_at": self.clock()})
        except OSError as exc:
            log.warning("cursor not saved: %s", exc.strerror or exc)

    def status(self) -> dict[str, Any]:
        return {"daemon": {"url": self.url, "up": self.up, "last_id": self.applied_id,
                           "error": self.last_error, "last_contact": self.last_contact,
                           "transitions": self.received}}


def apply_transition(table: TapTable, record: dict[str, Any]) -> None:
    """One transition record into the tap table (records without a tap change nothing)."""
    tap = record.get("tap")
    if not isinstance(tap, dict) or not tap.get("tap_id"):
        return
    entry = dict(tap)
    if record.get("state") and not entry.get("state"):
        entry["state"] = record["state"]
    if entry.get("state") in ENDED_STATES and entry.get("stop") is None:
        entry["stop"] = record.get("at")
    if record.get("kind") in ("removed", "failed") and entry.get("stop") is None:
        entry["stop"] = record.get("at")
    table.upsert(entry)


def _error_text(resp: Any) -> str:
    try:
        doc = resp.json()
        if isinstance(doc, dict) and "error" in doc:
            return str(doc["error"])[:200]
    except ValueError:
        pass
    return (resp.text or "").strip().splitlines()[0][:200] if resp.text else resp.reason or ""
