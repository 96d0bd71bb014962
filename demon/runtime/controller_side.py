"""The controller side of the runtime: the RPC channel to the controller component.

* the RPC worker (its own thread) runs ``install_mirror``/``remove_mirror`` so
  that a slow controller never blocks the mutator, and feeds each outcome back
  as ``InstallResult``/``RemoveResult``;
* the subscription's pushed events (``mirror_removed`` → ``MirrorRemoved``,
  switch up/down → ``_Switches``) and its connection coming and going;
* reconciliation: when the controller is seen again (subscription, probe), its
  switches and mirrors go to the mutator as ``_ControllerBack``, which feeds
  the core ``Reconcile`` then ``ControllerStatus(up=True)``.

Like the engine side it decides nothing; it keeps the counters the metrics read
(calls, errors, a latency histogram per method).
"""

from __future__ import annotations

import bisect
import logging
import queue
import threading
import time
from typing import Any, Callable

from demon.model import (Command, ControllerStatus, InstallMirror, InstallResult, MirrorRemoved,
                         RemoveMirror, RemoveResult)
from demon.counter_reader import CounterReader
from demon.rpc.client import ControllerUnreachable, RpcClient, RpcTimeout
from demon.rpc.protocol import RpcError
from demon.runtime.items import _ControllerBack, _Switches
from demon.runtime.options import RuntimeOptions, StartupError

log = logging.getLogger("demon.runtime.controller")

#: Upper bounds (seconds) of the RPC latency histogram's buckets.
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class Latency:
    """A cumulative-bucket histogram kept by hand (read at scrape time)."""

    def __init__(self) -> None:
        self.counts = [0] * (len(LATENCY_BUCKETS) + 1)  # last: +Inf
        self.total = 0.0
        self.calls = 0

    def observe(self, seconds: float) -> None:
        self.counts[bisect.bisect_left(LATENCY_BUCKETS, seconds)] += 1
        self.total += seconds
        self.calls += 1

    def cumulative(self) -> list[tuple[str, int]]:
        out, running = [], 0
        for bound, count in zip([*map(str, LATENCY_BUCKETS), "+Inf"], self.counts):
            running += count
            out.append((bound, running))
        return out


def command_text(cmd: Command) -> str:
    if isinstance(cmd, InstallMirror):
        tap = cmd.tap
        return (f"install mirror {tap.tap_id} on dpid {tap.dpid} port {tap.in_port} → "
                f"{tap.copy_port} match {dict(tap.match)}")
    if isinstance(cmd, RemoveMirror):
        return f"remove mirror {cmd.tap_id} ({cmd.reason})"
    return repr(cmd)


class ControllerSide:
    """The RPC client's users. ``put`` is the mutator's queue."""

    def __init__(self, client: RpcClient, options: RuntimeOptions,
                 put: Callable[[Any], None], clock: Callable[[], float] = time.time) -> None:
        self.client = client
        self.options = options
        self._put = put
        self._clock = clock
        # budgets: the mirrors' counters, read when the core says on a connection of
        # their own (never behind an install); none in a dry run (nothing installed)
        self._counter_client: RpcClient | None = None
        self.counters: CounterReader | None = None
        self.up = False
        self.changed_at = time.time()
        self.switches: list[dict[str, Any]] = []
        self._lock = threading.Lock()
        self._reconnecting = False
        self._halt = threading.Event()
        self._queue: "queue.Queue[Command | None]" = queue.Queue()
        self._thread: threading.Thread | None = None
        self._subscription: Any = None
        self.latency: dict[str, Latency] = {}
        self.calls: dict[tuple[str, str], int] = {}  # (method, outcome) → count
        self.last_error: str | None = None

    @property
    def address(self) -> str:
        return self.client.address

    def status(self) -> dict[str, Any]:
        return {"address": self.address, "reachable": self.up, "since": self.changed_at,
                "last_error": self.last_error,
                "switches": [{k: sw.get(k) for k in ("dpid", "name", "role", "connected_at")}
                             for sw in self.switches],
                "pending_calls": self._queue.qsize()}

    # -- start / stop ------------------------------------------------------------------

    def connect(self) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        """Hello, switches and mirrors at start (raises ``StartupError``, status 4)."""
        try:
            self.client.hello()
            switches = self._call("list_switches", self.client.list_switches)
            mirrors = self._call("list_mirrors", self.client.list_mirrors)
        except ControllerUnreachable as exc:
            raise StartupError(f"cannot reach the controller at {self.address}: "
                               f"{exc.message} — is demon-controller running?", 4) from None
        except RpcError as exc:
            raise StartupError(f"the controller at {self.address} refused us: "
                               f"{exc.message} (check --token-file)", 4) from None
        self.switches = list(switches)
        # Reconcile before declaring the controller up, so nothing is re-sent blindly.
        self._mark(True)
        return list(switches), list(mirrors)

    def start(self) -> None:
        self._thread = threading.Thread(target=self._rpc_loop, name="demon-rpc", daemon=True)
        self._thread.start()
        if not self.options.dry_run:
            self._counter_client = RpcClient(self.client.address, token=self.client.token,
                                             timeout=self.client.timeout)
            self.counters = CounterReader(self._read_counters, self._put, clock=self._clock,
                                          speed=self.options.speed).start()
        self._subscription = self.client.subscribe(self._on_event,
                                                   on_connection=self._on_connection)

    def counters_due(self, when: float | None) -> None:
        """When the core wants the mirrors' counters next (``core.counters_due``)."""
        if self.counters is not None:
            self.counters.due(when)

    def _read_counters(self) -> list[dict[str, Any]]:
        assert self._counter_client is not None
        return self._call("list_mirrors", self._counter_client.list_mirrors)

    def stop(self) -> None:
        """Stop the subscription and let the worker finish what it was given."""
        self._halt.set()
        if self.counters is not None:
            self.counters.stop()
        if self._subscription is not None:
            self._subscription.close()
        self._queue.put(None)
        if self._thread is not None:
            self._thread.join(timeout=self.options.exit_timeout)

    def close(self) -> None:
        self.client.close()
        if self._counter_client is not None:
            self._counter_client.close()

    def _mark(self, up: bool) -> None:
        if up != self.up:
            self.changed_at = time.time()
        self.up = up

    # -- calls ---------------------------------------------------------------------------

    def _call(self, method: str, fn: Callable[..., Any], *args: Any, **kw: Any) -> Any:
        started = time.perf_counter()
        outcome = "ok"
        try:
            return fn(*args, **kw)
        except RpcTimeout:
            outcome = "timeout"
            raise
        except ControllerUnreachable:
            outcome = "unreachable"
            raise
        except RpcError as exc:
            outcome = "error"
            self.last_error = f"{method}: {exc.message}"
            raise
        finally:
            self.latency.setdefault(method, Latency()).observe(time.perf_counter() - started)
            key = (method, outcome)
            self.calls[key] = self.calls.get(key, 0) + 1

    def dispatch(self, cmd: Command) -> None:
        self._queue.put(cmd)

    def _rpc_loop(self) -> None:
        while True:
            cmd = self._queue.get()
            if cmd is None:
                return
            self._put(self.execute(cmd))

    def execute(self, cmd: Command) -> Any:
        """Run one Install/Remove command; return the input that reports its outcome."""
        if self.options.dry_run:
            log.info("dry run: would %s", command_text(cmd))
            if isinstance(cmd, InstallMirror):
                return InstallResult(tap_id=cmd.tap.tap_id, ok=True)
            assert isinstance(cmd, RemoveMirror)
            return RemoveResult(tap_id=cmd.tap_id, ok=True)
        try:
            if isinstance(cmd, InstallMirror):
                result = self._call("install_mirror", self.client.install_mirror,
                                    **cmd.params())
                return InstallResult(tap_id=cmd.tap.tap_id, ok=True,
                                     cookie=result.get("cookie"))
            assert isinstance(cmd, RemoveMirror)
            result = self._call("remove_mirror", self.client.remove_mirror, cmd.tap_id)
            return RemoveResult(tap_id=cmd.tap_id, ok=True,
                                packets=int(result.get("packets") or 0),
                                bytes=int(result.get("bytes") or 0))
        except (ControllerUnreachable, RpcTimeout) as exc:
            # Idempotent by tap id: the core resends it once the controller is back.
            self.last_error = exc.message
            self._on_connection(False)
            return _failure(cmd, exc.message, unreachable=True)
        except RpcError as exc:
            return _failure(cmd, f"{exc.message} ({exc.code})", unreachable=False)

    # -- pushed events and the connection ------------------------------------------------

    def _on_event(self, event: Any) -> None:
        params = event.params or {}
        if event.event == "mirror_removed":
            self._put(MirrorRemoved(tap_id=str(params.get("tap_id", "")),
                                    reason=str(params.get("reason", "unknown")),
                                    packets=int(params.get("packets") or 0),
                                    bytes=int(params.get("bytes") or 0)))
        elif event.event in ("switch_up", "switch_down"):
            threading.Thread(target=self._refetch_switches, daemon=True).start()

    def _refetch_switches(self) -> None:
        try:
            switches = self._call("list_switches", self.client.list_switches)
        except RpcError as exc:
            log.warning("list_switches failed: %s", exc)
            return
        self.switches = list(switches)
        self._put(_Switches(list(switches)))

    def _on_connection(self, up: bool) -> None:
        """The controller came (subscription connected) or went (any failed call)."""
        if self._halt.is_set():
            return  # our own shutdown closing the connection
        if up:
            threading.Thread(target=self.probe, daemon=True).start()
            return
        with self._lock:
            was_up = self.up
            self._mark(False)
        if was_up:
            log.warning("lost the controller at %s; taps wait until it is back", self.address)
            self._put(ControllerStatus(up=False))

    def probe(self) -> None:
        """Reconcile with a controller seen again (from the subscription or the probe).

        Also run every second while the controller is down: a call may have failed
        (timeout) while the event connection stayed up, so no reconnect would tell.
        """
        with self._lock:
            if self.up or self._reconnecting:
                return
            self._reconnecting = True
        try:
            switches = self._call("list_switches", self.client.list_switches)
            mirrors = self._call("list_mirrors", self.client.list_mirrors)
        except RpcError as exc:
            log.debug("controller at %s not back yet: %s", self.address, exc)
            return
        finally:
            with self._lock:
                self._reconnecting = False
        with self._lock:
            if self.up:
                return
            self._mark(True)
        log.info("controller at %s is back: reconciling %d mirror(s)", self.address,
                 len(mirrors))
        self.switches = list(switches)
        self._put(_ControllerBack(switches=list(switches), mirrors=list(mirrors)))


def _failure(cmd: Command, error: str, unreachable: bool) -> Any:
    if isinstance(cmd, InstallMirror):
        return InstallResult(tap_id=cmd.tap.tap_id, ok=False, error=error,
                             unreachable=unreachable)
    assert isinstance(cmd, RemoveMirror)
    return RemoveResult(tap_id=cmd.tap_id, ok=False, error=error, unreachable=unreachable)
