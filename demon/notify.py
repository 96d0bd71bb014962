"""Notifications: every tap transition to a command and/or a webhook.

* ``--notify-command CMD``: run ``CMD KIND TAP_ID`` for each transition with
  the transition's JSON record (docs/api.md) on standard input, FastNetMon
  style; ``DEMON_TRANSITION_ID``, ``DEMON_KIND``, ``DEMON_TAP_ID``,
  ``DEMON_POLICY`` and ``DEMON_STATE`` are set in its environment. Exit 0 is
  success.
* ``--notify-webhook URL``: ``POST`` the record as JSON; any 2xx is success.

Each sink is a reader of the runtime's transition log (``demon.runtime.view``)
on its own thread, like any other API client: the decision loop never waits
for it, whatever the command or the web server do. A sink delivers one
transition at a time, in order; a failed delivery (non-zero exit, non-2xx,
timeout, refused connection) is retried ``retries`` times with a growing pause,
then recorded as failed (log, status, metrics) and the sink moves on.

Each sink's position (the last transition id it handled) is kept in the state
file, so a restarted daemon carries on where it stopped: nothing is skipped,
and nothing is sent twice unless the daemon was killed between a delivery and
the next save (about a second): the record's ``id`` tells a receiver.
A sink seen for the first time starts with the transitions after start-up.
"""

from __future__ import annotations

import collections
import hashlib
import json
import logging
import os
import shlex
import subprocess
import threading
import time
from dataclasses import dataclass
from typing import Any, Callable

from demon.runtime.view import ReadModel, Transition

log = logging.getLogger("demon.notify")


class DeliveryError(Exception):
    pass


@dataclass(frozen=True)
class SinkConfig:
    """``kind``: ``command`` or ``webhook``; ``target``: the command line or the URL."""

    kind: str
    target: str
    timeout: float = 5.0
    retries: int = 3
    backoff: float = 0.5

    @property
    def name(self) -> str:
        digest = hashlib.sha1(self.target.encode()).hexdigest()[:10]
        return f"{self.kind}:{digest}"

    def check(self) -> None:
        """Raise ValueError (one line) when the configuration cannot work."""
        if self.kind == "command":
            try:
                argv = shlex.split(self.target)
            except ValueError as exc:
                raise ValueError(f"--notify-command {self.target!r}: {exc}") from None
            if not argv:
                raise ValueError("--notify-command: empty command")
        elif self.kind == "webhook":
            from urllib.parse import urlsplit

            parts = urlsplit(self.target)
            if parts.scheme not in ("http", "https") or not parts.netloc:
                raise ValueError(f"--notify-webhook {self.target!r}: an http:// or https:// "
                                 "URL is needed")
        else:
            raise ValueError(f"unknown notification kind {self.kind!r}")
        if not 0 < self.timeout <= 300:
            raise ValueError(f"--notify-timeout: above 0 and at most 300 s, got {self.timeout}")
        if not 0 <= self.retries <= 100:
            raise ValueError(f"--notify-retries: 0..100, got {self.retries}")


def _deliver_command(config: SinkConfig, record: dict[str, Any], body: bytes) -> None:
    argv = shlex.split(config.target) + [str(record["kind"]), str(record.get("tap_id") or "-")]
    env = {**os.environ, "DEMON_TRANSITION_ID": str(record["id"]),
           "DEMON_KIND": str(record["kind"]), "DEMON_TAP_ID": str(record.get("tap_id") or ""),
           "DEMON_POLICY": str(record.get("policy") or ""),
           "DEMON_STATE": str(record.get("state") or "")}
    try:
        proc = subprocess.run(argv, input=body, capture_output=True, timeout=config.timeout,
                              env=env, close_fds=True)
    except subprocess.TimeoutExpired:
        raise DeliveryError(f"timed out after {config.timeout:g}s") from None
    except OSError as exc:
        raise DeliveryError(f"cannot run {argv[0]}: {exc.strerror or exc}") from None
    if proc.returncode != 0:
        tail = proc.stderr.decode("utf-8", "replace").strip().splitlines()[-1:] or [""]
        raise DeliveryError(f"exited with {proc.returncode}" + (f": {tail[0][:200]}"
                                                                 if tail[0] else ""))


def _deliver_webhook(session: Any, config: SinkConfig, record: dict[str, Any],
                     body: bytes) -> None:
    import requests

    from demon import __version__

    try:
        resp = session.post(config.target, data=body, timeout=config.timeout,
                            headers={"Content-Type": "application/json",
                                     "User-Agent": f"pytapdemon/{__version__}",
                                     "X-Demon-Transition-Id": str(record["id"])})
    except requests.Timeout:
        raise DeliveryError(f"no answer within {config.timeout:g}s") from None
    except requests.RequestException as exc:
        raise DeliveryError(f"{type(exc).__name__}: {str(exc)[:200]}") from None
    if not 200 <= resp.status_code < 300:
        raise DeliveryError(f"HTTP {resp.status_code} {resp.reason}")


class _Sink:
    def __init__(self, config: SinkConfig, cursor: int) -> None:
        self.config = config
        self.cursor = cursor
        self.delivered = 0
        self.failed = 0
        self.attempts = 0
        self.last_error: str | None = None
        self.last_ok_at: float | None = None
        self.failures: collections.deque[dict[str, Any]] = collections.deque(maxlen=20)
        self.seconds = 0.0
        self.thread: threading.Thread | None = None


class Notifier:
    """The sinks of one daemon. ``cursors``: where each sink stopped last time
    (by ``SinkConfig.name``); ``save_cursor(name, id)`` keeps a new position
    (called from the sinks' threads)."""

    def __init__(self, view: ReadModel, configs: list[SinkConfig], cursors: dict[str, int],
                 save_cursor: Callable[[str, int], None]) -> None:
        self.view = view
        self._save = save_cursor
        self._halt = threading.Event()
        start = view.last_id
        self.sinks = [_Sink(c, cursors.get(c.name, start)) for c in configs]

    def start(self) -> "Notifier":
        for sink in self.sinks:
            sink.thread = threading.Thread(target=self._run, args=(sink,), daemon=True,
                                           name=f"demon-notify-{sink.config.kind}")
            sink.thread.start()
            log.info("notifications: %s %s from transition %d", sink.config.kind,
                     sink.config.target, sink.cursor + 1)
        return self

    def stop(self, timeout: float = 5.0) -> None:
        self._halt.set()
        self.view.wake()
        for sink in self.sinks:
            if sink.thread is not None:
                sink.thread.join(timeout)

    def status(self) -> dict[str, Any]:
        last = self.view.last_id
        return {s.config.name: {"kind": s.config.kind, "target": s.config.target,
                                "cursor": s.cursor, "behind": max(0, last - s.cursor),
                                "delivered": s.delivered, "failed": s.failed,
                                "last_error": s.last_error, "last_ok_at": s.last_ok_at,
                                "failures": list(s.failures)}
                for s in self.sinks}

    # -- the sinks' threads -------------------------------------------------------------

    def _run(self, sink: _Sink) -> None:
        session = None
        if sink.config.kind == "webhook":
            import requests

            session = requests.Session()
        try:
            while not self._halt.is_set():
                if sink.cursor < self.view.first_id - 1:
                    sink.cursor = self.view.first_id - 1  # pruned meanwhile
                items = self.view.wait_after(sink.cursor, 1.0, limit=100)
                for item in items:
                    if self._halt.is_set() or not self._deliver(sink, item, session):
                        return  # stopping: this one is delivered after the restart
                    sink.cursor = item.id
                    self._save(sink.config.name, item.id)
        finally:
            if session is not None:
                session.close()

    def _deliver(self, sink: _Sink, item: Transition, session: Any) -> bool:
        """Deliver (with retries) or record the failure: True. False: interrupted
        by a stop before it was settled."""
        record = item.to_json()
        body = json.dumps(record, separators=(",", ":"), default=str).encode()
        config = sink.config
        pause = config.backoff
        for attempt in range(config.retries + 1):
            sink.attempts += 1
            started = time.perf_counter()
            try:
                if config.kind == "command":
                    _deliver_command(config, record, body)
                else:
                    _deliver_webhook(session, config, record, body)
            except DeliveryError as exc:
                sink.last_error = str(exc)
                if attempt < config.retries:
                    if self._halt.wait(pause):
                        return False
                    pause = min(pause * 2, 30.0)
                    continue
                sink.failed += 1
                sink.failures.append({"id": item.id, "at": time.time(), "error": str(exc),
                                      "attempts": attempt + 1})
                log.warning("notification %s %s failed for transition %d after %d attempt(s): "
                            "%s", config.kind, config.target, item.id, attempt + 1, exc)
                return True
            finally:
                sink.seconds += time.perf_counter() - started
            sink.delivered += 1
            sink.last_ok_at = time.time()
            return True
        return True
