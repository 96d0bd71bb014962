"""The mutating loop: the one thread that owns the daemon's state.

Everything else only puts items on its input queue: the engine side
(``demon.runtime.engine_side``: events, polls, the port map, operator flow
look-ups), the controller side (``demon.runtime.controller_side``: RPC
results, pushed events, reconnections), the scheduler (tick, prune, the
state file's operator queue), the API (operator requests with a future for
the answer) and the signal handlers (reload, stop).

Each batch of inputs is stepped through the pure core (``demon.core.step``);
then the new state, the history entries, the event cursor and the answers to
queued requests are saved in one transaction; then the new snapshot and the
saved transitions are *published* to the read model (``demon.runtime.view``),
the API's futures get their answers, and only then are the RPC commands handed
to the controller side (state first: a crash between the two leaves a tap
marked in flight, which reconciliation settles at restart).

When the state file cannot be written (a full disk), the loop keeps deciding
in memory and keeps sending the commands (the switches' own timeouts bound
every mirror whatever happens), holds the unsaved transitions and saves them,
in order, as soon as the file takes writes again (issue 14 #3).

The class is cut at its borders: start-up (``demon.runtime.startup``) and
configuration while running (``demon.runtime.config``: reload, redefine,
prune) are mixins, since both set the loop's own state; operator requests
(``demon.runtime.requests``) are a collaborator that turns them into the
core's inputs, which this loop steps.
"""

from __future__ import annotations

import itertools
import logging
import queue
import threading
import time
from concurrent.futures import Future
from dataclasses import replace
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

from apscheduler.schedulers.background import BackgroundScheduler

from demon import __version__, core
from demon.core import Context
from demon.model import (Answer, Command, ControllerStatus, HistoryEntry, InstallResult,
                         MirrorRemoved, OperatorRelease, Reconcile, Record, RemoveMirror,
                         RemoveResult, State, Tap, ThresholdEvent, Tick)
from demon.rpc.client import RpcClient
from demon.runtime.config import Configuration
from demon.runtime.controller_side import ControllerSide
from demon.runtime.engine_side import EngineSide, engine_policies, threshold_event
from demon.runtime.items import (Ask, _Call, _ControllerBack, _Events, _Flush, _Located,
                                 _NewTopology, _PollRequests, _PortMap, _Prune, _Redefine,
                                 _Reload, _Stop, _Switches)
from demon.runtime.options import RuntimeOptions
from demon.runtime.requests import OperatorRequests
from demon.runtime.startup import StartUp
from demon.runtime.view import ReadModel, Snapshot, Transition, tap_record
from demon.store import Store, StoreError
from demon.topology import Topology
from sflow.client import SFlowRTError

log = logging.getLogger("demon.runtime")
decisions = logging.getLogger("demon.decisions")


def describe(entry: HistoryEntry) -> str:
    """One log line for a recorded transition."""
    detail = dict(entry.detail)
    cause = detail.pop("cause", "")
    subject = entry.tap_id or detail.get("flow_key") or detail.get("policy")
    head = f"{entry.kind} {subject}" if subject else entry.kind
    return f"{head}: {cause}" if cause else head


#: Every value of the ``cause`` label of ``pytapdemon_daemon_transitions_total``
#: (docs/api.md lists them): ``capacity`` is a flow that waits (caps, budget, its
#: port not in the port map yet, another tap on the same flow), is refused, or is
#: dropped while waiting, when no event or operator is the cause.
CAUSE_CLASSES = ("event", "poll", "operator", "switch", "condition_cleared", "max_duration",
                 "superseded", "policy_removed", "reconcile", "controller", "rpc_error",
                 "capacity", "other")


def cause_class(entry: HistoryEntry) -> str:
    """A bounded label for why a transition happened (metrics never carry the
    sentence): one of :data:`CAUSE_CLASSES`."""
    detail = entry.detail
    cause = str(detail.get("cause", ""))
    if "operator" in detail:
        return "operator"
    if "switch_reason" in detail:
        return "switch"
    if cause.startswith("reconcile"):
        return "reconcile"
    if cause.startswith("condition cleared"):
        return "condition_cleared"
    if cause.startswith("max duration"):
        return "max_duration"
    if cause.startswith("superseded"):
        return "superseded"
    if cause.startswith("policy ") and "removed" in cause:
        return "policy_removed"
    if cause.startswith("controller"):
        return "controller"
    if "install failed" in cause or "remove failed" in cause or "error" in detail:
        return "rpc_error"
    if cause.startswith("event ") or detail.get("event_id") is not None:
        return "event"
    if cause.startswith(("top ", "demon_")) or "activeflows" in cause:
        return "poll"
    if entry.kind in ("waiting", "refused", "dropped"):
        return "capacity"
    return "other"


class _Batch:
    """What one batch produced, in order."""

    def __init__(self) -> None:
        self.entries: list[HistoryEntry] = []
        self.taps_then: list[dict[str, Any] | None] = []
        self.outbox: list[Command] = []
        self.answers: list[Answer] = []


class Runtime(StartUp, Configuration):
    """``start()`` (raises :class:`~demon.runtime.options.StartupError`), then ``run()``
    until stopped. Readers use :attr:`view`; operator requests go through :meth:`ask`."""

    def __init__(self, policies_dir: str | Path, engine_url: str, controller: RpcClient,
                 store: Store, options: RuntimeOptions = RuntimeOptions(), *,
                 clock: Callable[[], float] = time.time, engine_timeout: float = 5.0,
                 engine_retries: int = 2, embedded_engine: bool = False,
                 sflow_listen: str | None = None, notify: Sequence[Any] = (),
                 engine_token: str | None = None) -> None:
        self.policies_dir = Path(policies_dir)
        self.engine_url = engine_url
        self.controller = controller
        self.store = store
        self.options = options
        self.clock = clock
        self.inputs: "queue.Queue[Any]" = queue.Queue()
        self.engine = EngineSide(engine_url, options, self.inputs.put, timeout=engine_timeout,
                                 retries=engine_retries, embedded=embedded_engine,
                                 sflow_listen=sflow_listen, token=engine_token)
        self.controller_side = ControllerSide(controller, options, self.inputs.put, clock=clock)
        self.requests = OperatorRequests(store, self.engine)
        self.view = ReadModel()
        self.state = State()
        self.ctx: Context | None = None
        self.last_event_id = -1
        self.steps = 0
        self.started_at = time.time()
        self._by_threshold: dict[str, str] = {}
        self._switches: list[dict[str, Any]] = []
        self._port_map: list[Any] = []
        self._archive: Mapping[str, Tap] = {}
        self._published_taps: Mapping[str, Tap] = {}
        self._calls: dict[str, Future[Any]] = {}
        self._asks = itertools.count(1)
        self._awaiting_placement = False
        self._halt = threading.Event()
        self._stopping = False
        self._scheduler: BackgroundScheduler | None = None
        # Saved later when the state file refuses writes (disk full).
        self._unsaved: list[tuple[HistoryEntry, dict[str, Any] | None]] = []
        self._unsaved_answered: list[tuple[int, str, str]] = []
        self._unsaved_cursor: int | None = None
        self.store_error: str | None = None
        self._store_failed_at: float | None = None
        self.reload_info: dict[str, Any] = {}
        #: Other threads' progress the state file keeps (e.g. notification cursors).
        self.meta_out: dict[str, str] = {}
        self.notifier: Any = None
        self._notify_configs = list(notify)
        self.counters: dict[str, int] = {"events": 0, "core_errors": 0, "store_errors": 0,
                                         "reloads_ok": 0, "reloads_rejected": 0,
                                         "operator_requests": 0}
        self.transition_counts: dict[tuple[str, str], int] = {}
        from demon.runtime.metrics import DaemonMetrics

        self.metrics = DaemonMetrics(self)

    # -- public, thread-safe ---------------------------------------------------------

    def submit(self, item: Any) -> None:
        """Queue a core input (or an internal item) for the mutator."""
        self.inputs.put(item)

    def request_reload(self) -> None:
        self.inputs.put(_Reload())

    def request_stop(self, why: str = "stop requested") -> None:
        self.inputs.put(_Stop(why))

    def render_metrics(self) -> tuple[bytes, str]:
        """The Prometheus exposition (``GET /metrics``)."""
        return self.metrics.render()

    def ask(self, ask: Ask) -> "Future[Answer]":
        """An operator's request (the API): the future gets the core's ``Answer``
        once it is decided (and saved, unless the state file refuses writes)."""
        future: Future[Answer] = Future()
        self.inputs.put(_Call(ask, future))
        return future

    # -- the mutator ------------------------------------------------------------------

    def run(self) -> None:
        """Process inputs until a stop is requested; then shut down."""
        try:
            while not self._stopping:
                try:
                    first = self.inputs.get(timeout=0.5)
                except queue.Empty:
                    continue
                batch = [first]
                while len(batch) < self.options.batch_max:
                    try:
                        batch.append(self.inputs.get_nowait())
                    except queue.Empty:
                        break
                self.process(batch)
        finally:
            self.shutdown()

    def process(self, batch: list[Any]) -> list[Command]:
        """Apply a batch of inputs, persist once, publish, then dispatch the RPC commands."""
        out = _Batch()
        cursor: int | None = None
        for item in batch:
            if isinstance(item, _Events):
                assert self.ctx is not None
                for event in item.events:
                    cursor = event.event_id
                    if item.skip_before and event.timestamp_ms / 1000.0 < item.skip_before:
                        log.debug("skipping event %d from before the start", event.event_id)
                        continue
                    inp = threshold_event(event, self._by_threshold)
                    if inp is not None:
                        self._step(inp, out)
            elif isinstance(item, _Call):
                ref = f"api:{next(self._asks)}"
                self._calls[ref] = item.future
                self._handle_ask(replace(item.ask, ref=ref), out)
            elif isinstance(item, _PollRequests):
                self._poll_requests(out)
            elif isinstance(item, _Located):
                self.requests.located(item.ask.ref)
                self._step(item.tap, out)
            elif isinstance(item, _PortMap):
                assert self.ctx is not None
                self._port_map = list(item.port_map)
                self.ctx = replace(self.ctx, topology=Topology(self._port_map, self._switches))
            elif isinstance(item, _Switches):
                assert self.ctx is not None
                self._switches = list(item.switches)
                self.ctx = replace(self.ctx, topology=Topology(self._port_map, self._switches))
            elif isinstance(item, _NewTopology):
                assert self.ctx is not None
                self.ctx = replace(self.ctx, topology=item.topology)
            elif isinstance(item, _ControllerBack):
                assert self.ctx is not None
                self._switches = item.switches
                self.ctx = replace(self.ctx, topology=Topology(self._port_map, item.switches))
                self._step(Reconcile(mirrors=item.mirrors), out)
                self._step(ControllerStatus(up=True), out)
            elif isinstance(item, _Reload):
                self._reload()
            elif isinstance(item, _Redefine):
                self._redefine(item.why)
            elif isinstance(item, _Prune):
                self._prune()
            elif isinstance(item, _Flush):
                pass  # the save below writes it
            elif isinstance(item, _Stop):
                log.info("stopping: %s", item.why)
                self._stopping = True
            else:
                self._step(item, out)
        self._commit(out, cursor)
        return out.outbox

    def _step(self, inp: Any, out: _Batch) -> None:
        assert self.ctx is not None
        try:
            self.state, commands = core.step(self.state, self.ctx, inp, self.clock())
        except Exception:
            # A bug must not turn one input into a crash loop (a restart would read
            # the same event again): skip it, state unchanged, and say so loudly.
            log.exception("decision core failed on %r; input skipped", inp)
            self.counters["core_errors"] += 1
            ref = getattr(inp, "ref", None)
            if ref:
                out.answers.append(Answer(ref, "refused", "error", "the decision core failed "
                                          "on this request (see the daemon's log)"))
            return
        self.steps += 1
        if isinstance(inp, ThresholdEvent):
            self.counters["events"] += 1
        for cmd in commands:
            if isinstance(cmd, Record):
                entry = cmd.entry
                out.entries.append(entry)
                tap = self.state.taps.get(entry.tap_id) if entry.tap_id else None
                out.taps_then.append(tap_record(tap) if tap is not None else None)
                key = (entry.kind, cause_class(entry))
                self.transition_counts[key] = self.transition_counts.get(key, 0) + 1
            elif isinstance(cmd, Answer):
                out.answers.append(cmd)
            else:
                out.outbox.append(cmd)

    def _commit(self, out: _Batch, cursor: int | None) -> None:
        """Save, publish, answer, dispatch (in that order)."""
        answered = [(int(a.ref[4:]), a.message, a.code) for a in out.answers
                    if a.ref.startswith("req:")]
        self._unsaved.extend(zip(out.entries, out.taps_then))
        self._unsaved_answered.extend(answered)
        if cursor is not None:
            self._unsaved_cursor = cursor
        transitions: list[Transition] = []
        try:
            ids = self.store.save(self.state, [e for e, _ in self._unsaved],
                                  last_event_id=self._unsaved_cursor,
                                  answered=self._unsaved_answered, now=self.clock(),
                                  taps_then=[t for _, t in self._unsaved],
                                  meta=self.meta_out)
        except StoreError as exc:
            self._store_failed(exc)
        else:
            transitions = [Transition.of(i, e, t) for i, (e, t) in zip(ids, self._unsaved)]
            if self.store_error is not None:
                log.warning("state file %s takes writes again: saved %d transition(s) held "
                            "since %s", self.store.path, len(ids),
                            time.strftime("%H:%M:%S", time.localtime(self._store_failed_at)))
                self.store_error, self._store_failed_at = None, None
            if self._unsaved_cursor is not None:
                self.last_event_id = self._unsaved_cursor
            self._unsaved, self._unsaved_answered, self._unsaved_cursor = [], [], None
        self._publish(transitions)
        for answer in out.answers:
            future = self._calls.pop(answer.ref, None)
            if future is not None and not future.done():
                future.set_result(answer)
        awaiting = core.awaiting_placement(self.state)
        if awaiting and not self._awaiting_placement:
            # A flow just started waiting for its port (agents announce ports with
            # their counters, after their first flow samples): re-read the map now;
            # the tick after it re-tries the waiting flows on the new map.
            self.engine.reread_for_placement(lambda: self.inputs.put(Tick()))
        self._awaiting_placement = awaiting
        self.engine.awaiting_placement = awaiting
        for entry in out.entries:
            decisions.info(describe(entry), extra={"tap_id": entry.tap_id, "kind": entry.kind,
                                                   "detail": dict(entry.detail)})
        for cmd in out.outbox:
            self.controller_side.dispatch(cmd)
        if self.ctx is not None:
            self.controller_side.counters_due(core.counters_due(self.state, self.ctx))

    def _store_failed(self, exc: StoreError) -> None:
        self.counters["store_errors"] += 1
        message = str(exc)
        if self.store_error is None:
            self._store_failed_at = time.time()
            log.error("%s — decisions go on in memory and the switches' timeouts still bound "
                      "every mirror; %d transition(s) wait to be saved, retried every "
                      "batch", message, len(self._unsaved))
        self.store_error = message

    def _publish(self, transitions: list[Transition]) -> None:
        taps = self.state.taps
        if taps is not self._published_taps:
            gone = [t for k, t in self._published_taps.items() if k not in taps]
            if gone:
                archive = dict(self._archive)
                archive.update((t.tap_id, t) for t in gone)
                self._archive = archive
            self._published_taps = taps
        ctx = self.ctx
        snapshot = Snapshot(
            at=time.time(), state=self.state, archive=self._archive,
            policies=ctx.policies if ctx else {}, limits=ctx.limits if ctx else None,
            last_id=self.store.last_transition_id, started_at=self.started_at,
            version=__version__, engine=self.engine.status(),
            controller=self.controller_side.status(), reload=dict(self.reload_info),
            store={"path": self.store.path, "writable": self.store_error is None,
                   "error": self.store_error, "unsaved_transitions": len(self._unsaved)},
            notifications=self.notifier.status() if self.notifier is not None else {},
            counters={**self.counters, "decisions": self.steps})
        self.view.publish(snapshot, transitions)

    # -- operator requests (the API and the state file's queue) --------------------------

    def _poll_requests(self, out: _Batch) -> None:
        for item in self.requests.queued({a.ref for a in out.answers}, time.time()):
            if isinstance(item, Answer):
                out.answers.append(item)  # a request that does not parse
            else:
                self._handle_ask(item, out)

    def _handle_ask(self, ask: Ask, out: _Batch) -> None:
        """Turn an operator's request into the core's input; the core answers it."""
        self.counters["operator_requests"] += 1
        inp = self.requests.to_input(ask, self.state, self.ctx)
        if isinstance(inp, Answer):
            out.answers.append(inp)
        elif inp is not None:
            self._step(inp, out)

    # -- shutdown ---------------------------------------------------------------------

    def shutdown(self) -> None:
        """Stop producers; with ``on_exit=remove`` remove every live tap; delete our
        engine definitions; close the controller connections."""
        self._halt.set()
        self.engine.stop()
        if self._scheduler is not None and self._scheduler.running:
            self._scheduler.shutdown(wait=False)
        if self.notifier is not None:
            self.notifier.stop()
        self.controller_side.stop()
        late = self._settle_late_results()
        if self.options.on_exit == "remove" and self.ctx is not None:
            self._remove_all(late)
        elif late.entries:
            self._unsaved.extend(zip(late.entries, late.taps_then))
            try:
                self.store.save(self.state, [e for e, _ in self._unsaved], now=self.clock(),
                                taps_then=[t for _, t in self._unsaved], meta=self.meta_out)
                self._unsaved = []
            except StoreError as exc:
                log.error("could not save the final state: %s", exc)
        if self.ctx is not None:
            for pol in engine_policies(self.ctx.policies).values():
                try:
                    self.engine.undefine(pol)
                except SFlowRTError as exc:
                    log.warning("could not delete %s from the engine: %s", pol.flow_name, exc)
        if self.notifier is not None and self.options.on_exit != "remove":
            try:  # the sinks' last positions
                self.store.save(self.state, meta=self.meta_out, now=self.clock())
            except StoreError as exc:
                log.error("could not save the final state: %s", exc)
        for future in self._calls.values():
            if not future.done():
                future.set_result(Answer("", "refused", "stopping", "the daemon is stopping"))
        self._calls.clear()
        self.controller_side.close()
        self.view.wake()
        left = len(self.state.live_taps())
        log.info("stopped; %d live tap(s)%s", left,
                 " left to their hard timeouts" if left else "")

    def _settle_late_results(self) -> _Batch:
        """The controller's answers that reached the queue after the loop stopped
        reading it (the RPC worker finishes what it was given): step them, so that
        the state knows what is in the switches. Without this an install answered
        during the stop stayed in flight for ever, and ``on_exit=remove`` left its
        mirror in the switch (the remove waits for the install's answer). Other
        inputs (events, polls, requests) are dropped: nothing new starts on the way
        out."""
        out = _Batch()
        if self.ctx is None:
            return out
        while True:
            try:
                item = self.inputs.get_nowait()
            except queue.Empty:
                return out
            if isinstance(item, (InstallResult, RemoveResult, MirrorRemoved)):
                self._step(item, out)

    def _remove_all(self, late: _Batch | None = None) -> None:
        """Release every live tap through the core and run the removals here
        (``late``: what settling the late answers produced, saved with the rest)."""
        deadline = time.monotonic() + self.options.exit_timeout
        out = late if late is not None else _Batch()
        for tap in self.state.live_taps():
            if tap.state != "expiring":
                self._step(OperatorRelease(tap_id=tap.tap_id, who="demon-watch exit"), out)
            elif tap.inflight is None:
                out.outbox.append(RemoveMirror(tap.tap_id, "exit"))
        pending: list[Command] = out.outbox
        out.outbox = []
        while pending and time.monotonic() < deadline:
            cmd = pending.pop(0)
            if not isinstance(cmd, RemoveMirror):
                continue  # nothing new is installed on the way out
            result = self.controller_side.execute(cmd)
            if getattr(result, "unreachable", False):
                log.warning("controller unreachable at exit: taps left to their hard timeouts")
                break
            self._step(result, out)
            pending += out.outbox
            out.outbox = []
        self._unsaved.extend(zip(out.entries, out.taps_then))
        try:
            self.store.save(self.state, [e for e, _ in self._unsaved], now=self.clock(),
                            taps_then=[t for _, t in self._unsaved], meta=self.meta_out)
        except StoreError as exc:
            log.error("could not save the final state: %s", exc)
