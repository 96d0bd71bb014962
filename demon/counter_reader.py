"""Reads the mirrors' switch counters when the decision core says, for the budgets.

The core knows when the counters of its budgeted taps must be read next
(``core.counters_due(state, ctx)``, planned by ``demon.budget``); this thread
only keeps that appointment: it sleeps until the due time (woken early when the
loop publishes a new one), calls ``list_mirrors`` on its own RPC connection (so
a read never waits behind an install, nor an install behind a read) and hands the
counters to the loop as ``MirrorCounters``. No due time: it sleeps.

Times are the runtime's clock; ``speed`` > 1 (tests) shortens the sleeps alike.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any, Callable

from demon.model import MirrorCounters
from demon.rpc.protocol import RpcError

log = logging.getLogger("demon.runtime.counters")


class CounterReader:
    """``start()``, then ``due(t)`` after every batch; ``stop()`` at the end."""

    def __init__(self, read: Callable[[], list[dict[str, Any]]],
                 submit: Callable[[MirrorCounters], None], clock: Callable[[], float] = time.time,
                 speed: float = 1.0, retry: float = 0.5) -> None:
        self._read = read
        self._submit = submit
        self._clock = clock
        self._speed = speed
        self._retry = retry
        self._due: float | None = None
        self._cond = threading.Condition()
        self._stopping = False
        self._thread: threading.Thread | None = None
        self.reads = 0
        self.errors = 0

    def start(self) -> "CounterReader":
        self._thread = threading.Thread(target=self._run, name="demon-counters", daemon=True)
        self._thread.start()
        return self

    def due(self, when: float | None) -> None:
        """The next read the core wants (None: none). Cheap: the loop calls it often."""
        with self._cond:
            if when != self._due:
                self._due = when
                self._cond.notify()

    def stop(self, timeout: float = 5.0) -> None:
        with self._cond:
            self._stopping = True
            self._cond.notify()
        if self._thread is not None:
            self._thread.join(timeout)

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._stopping:
                    due = self._due
                    if due is not None:
                        wait = (due - self._clock()) / self._speed
                        if wait <= 0:
                            break
                        self._cond.wait(min(wait, 1.0))
                    else:
                        self._cond.wait(1.0)
                if self._stopping:
                    return
                self._due = None  # taken; the loop publishes the next one after this read
            self._read_once()

    def _read_once(self) -> None:
        at = self._clock()
        try:
            mirrors = self._read()
        except RpcError as exc:
            self.errors += 1
            if self.errors == 1 or self.errors % 100 == 0:
                log.warning("reading the mirrors' counters failed (%d so far): %s", self.errors,
                            getattr(exc, "message", exc))
            with self._cond:  # try again a little later, unless a newer due time came
                if self._due is None:
                    self._due = self._clock() + self._retry
            return
        self.reads += 1
        counters = [(str(m["tap_id"]), int(m.get("packets") or 0), int(m.get("bytes") or 0))
                    for m in mirrors if m.get("tap_id")]
        self._submit(MirrorCounters(counters, read_at=(at + self._clock()) / 2))
