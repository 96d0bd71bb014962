"""The daemon's runtime: threads, scheduler, signals, RPC and persistence around
the pure decision core (``demon.core.step``).

One thread (the *mutator*, the one that calls :meth:`Runtime.run`) owns the
state. Everything else only puts items on its input queue:

* the event thread: ``/events/json`` long polls through ``EventStream``;
* APScheduler jobs: the ``Tick`` sweep, every policy's ``/activeflows`` poll,
  operator-request polling (the ``requests`` table ``demon-tap`` writes), the
  topology refresh;
* the controller's pushed events (``mirror_removed``, switch up/down) and its
  connection coming and going (``subscribe``);
* the RPC worker, which runs ``install_mirror``/``remove_mirror`` so that a
  slow controller never blocks the mutator, and feeds the results back;
* signal handlers (reload, stop), which only enqueue.

The mutator drains a batch of inputs, steps the core on each, saves the new
state, the history entries and the event cursor in one transaction, and only
then hands the commands to the RPC worker (state first: a crash between the
two leaves a tap marked in flight, which reconciliation settles at restart).
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping

from apscheduler.schedulers.background import BackgroundScheduler

from demon import core
from demon.core import Context
from demon.model import (Command, ControllerStatus, FlowSighting, HistoryEntry, InstallMirror,
                         InstallResult, MirrorRemoved, OperatorRelease, OperatorTap,
                         PausePolicy, Reconcile, Record, RemoveMirror, RemoveResult,
                         ResumePolicy, State, ThresholdEvent, Tick, TopFlows)
from demon.counter_reader import CounterReader
from demon.rpc.client import ControllerUnreachable, RpcClient, RpcTimeout
from demon.rpc.protocol import RpcError
from demon.store import OperatorRequest, Store
from demon.tap_request import NOT_TAPPED, TapRequest, answer as tap_answer
from demon.topology import Topology
from sflow.client import (ActiveFlow, Event, EventStream, NotFound,
                          SFlowRTClient, SFlowRTError, Unsupported)

log = logging.getLogger("demon.runtime")
decisions = logging.getLogger("demon.decisions")

ON_EXIT_CHOICES = ("leave", "remove")
FLOW_PREFIX = "demon_"
OPERATOR_LOOKUP_FLOWS = 10000  # /activeflows rows searched for an operator's flow


class StartupError(Exception):
    """The daemon cannot start; ``status`` is the process exit status to use."""

    def __init__(self, message: str, status: int) -> None:
        super().__init__(message)
        self.status = status


@dataclass(frozen=True)
class RuntimeOptions:
    """How the runtime behaves (the CLI maps its flags onto these).

    ``speed`` > 1 runs every periodic job that many times faster; pair it with
    :func:`accelerated_clock` (tests, demos). ``dry_run``: decide, log and
    persist, but send no RPC write (installs/removes are answered as if they
    had succeeded). ``backlog_max_age``: on a first start (no saved event
    cursor) the engine's retained events older than this (wall-clock seconds)
    are skipped, not acted on.
    """

    on_exit: str = "leave"
    dry_run: bool = False
    speed: float = 1.0
    tick_interval: float = 1.0
    requests_interval: float = 1.0
    topology_interval: float = 10.0
    prune_interval: float = 3600.0
    controller_probe_interval: float = 1.0
    backlog_max_age: float = 60.0
    event_poll_timeout: float = 20.0
    max_events: int = 100
    batch_max: int = 500
    engine_backoff_max: float = 5.0
    exit_timeout: float = 10.0

    def __post_init__(self) -> None:
        if self.on_exit not in ON_EXIT_CHOICES:
            raise ValueError(f"on_exit must be one of {ON_EXIT_CHOICES}, got {self.on_exit!r}")
        if self.speed <= 0:
            raise ValueError(f"speed must be > 0, got {self.speed}")


def accelerated_clock(speed: float, start: float | None = None) -> Callable[[], float]:
    """Epoch seconds running ``speed`` times faster than real time from ``start``."""
    origin = time.time() if start is None else start
    t0 = time.monotonic()
    return lambda: origin + (time.monotonic() - t0) * speed


# -- configuration -----------------------------------------------------------------


def load_config(directory: str | Path) -> tuple[Mapping[str, Any], Any]:
    """Policies and global limits from a policy directory (raises ``PolicyError``)."""
    from demon.policy import load_policy_set

    loaded = load_policy_set(directory)
    return loaded.policies, loaded.limits


def engine_policies(policies: Mapping[str, Any]) -> dict[str, Any]:
    """The enabled policies that get engine definitions and polls (not scheduled ones)."""
    from demon.policy import engine_policies as chosen

    return chosen(policies)


def threshold_event(event: Event, by_threshold: Mapping[str, str]) -> ThresholdEvent | None:
    """The core's input for an engine event, or None when it is not ours
    (another app's threshold, or a threshold without per-flow keys)."""
    policy = by_threshold.get(event.threshold_id)
    if policy is None or not event.flow_key:
        return None
    return ThresholdEvent(event_id=event.event_id, threshold_id=event.threshold_id,
                          policy=policy, agent=event.agent, data_source=event.data_source,
                          flow_key=event.flow_key, value=event.value,
                          threshold=event.threshold, timestamp=event.timestamp_ms / 1000.0)


def top_flows(policy: str, flows: Iterable[ActiveFlow]) -> TopFlows:
    return TopFlows(policy=policy, flows=tuple(FlowSighting(f.key, f.value, f.agent,
                                                            f.data_source) for f in flows))


def thresholds_of(policies: Mapping[str, Any]) -> dict[str, str]:
    """Engine threshold name → policy name, for the policies that define one."""
    return {p.flow_name: name for name, p in engine_policies(policies).items()
            if p.threshold_spec() is not None}


def describe(entry: HistoryEntry) -> str:
    """One log line for a recorded transition."""
    detail = dict(entry.detail)
    cause = detail.pop("cause", "")
    subject = entry.tap_id or detail.get("flow_key") or detail.get("policy")
    head = f"{entry.kind} {subject}" if subject else entry.kind
    return f"{head}: {cause}" if cause else head


# -- internal queue items -----------------------------------------------------------


@dataclass(frozen=True)
class _Events:
    events: list[Event]
    #: Epoch seconds: events stamped earlier are skipped (the cursor still advances).
    skip_before: float | None = None


@dataclass(frozen=True)
class _PollRequests:
    pass


@dataclass(frozen=True)
class _Reload:
    pass


@dataclass(frozen=True)
class _Stop:
    why: str


@dataclass(frozen=True)
class _OperatorTapReady:
    """The engine said where an operator's flow enters (``tap``), or why not (``error``)."""

    request: OperatorRequest
    tap: OperatorTap | None
    error: str = ""


@dataclass(frozen=True)
class _Prune:
    pass


@dataclass(frozen=True)
class _NewTopology:
    topology: Topology


@dataclass(frozen=True)
class _ControllerBack:
    switches: list[dict[str, Any]]
    mirrors: list[dict[str, Any]]


class Runtime:
    """``start()`` (raises :class:`StartupError`), then ``run()`` until stopped."""

    def __init__(self, policies_dir: str | Path, engine_url: str, controller: RpcClient,
                 store: Store, options: RuntimeOptions = RuntimeOptions(), *,
                 clock: Callable[[], float] = time.time, engine_timeout: float = 5.0,
                 engine_retries: int = 2) -> None:
        self.policies_dir = Path(policies_dir)
        self.engine_url = engine_url
        self.controller = controller
        self.store = store
        self.options = options
        self.clock = clock
        # Separate clients (and HTTP sessions) per thread: requests.Session is not
        # thread-safe, and the long poll must not hold up the other calls.
        self._engine = SFlowRTClient(engine_url, timeout=engine_timeout, retries=engine_retries)
        self._events_engine = SFlowRTClient(engine_url, timeout=engine_timeout, retries=0)
        self.inputs: "queue.Queue[Any]" = queue.Queue()
        self.state = State()
        self.ctx: Context | None = None
        self.last_event_id = -1
        self.steps = 0
        self._by_threshold: dict[str, str] = {}
        self._switches: list[dict[str, Any]] = []
        self._port_map: list[Any] = []
        self._topology_read_at = 0.0
        self._port_map_lock = threading.Lock()
        self._looking_up: set[int] = set()  # operator tap requests waiting for the engine
        self._awaiting_placement = False  # set by the mutator, read by the topology job
        self._halt = threading.Event()
        self._stopping = False
        self._controller_up = False
        self._controller_lock = threading.Lock()
        self._reconnecting = False
        self._rpc_queue: "queue.Queue[Command | None]" = queue.Queue()
        self._threads: list[threading.Thread] = []
        self._scheduler: BackgroundScheduler | None = None
        self._subscription: Any = None
        self._counters: CounterReader | None = None
        self._counter_rpc: Any = None
        self._stream: EventStream | None = None

    # -- public, thread-safe ---------------------------------------------------------

    def submit(self, item: Any) -> None:
        """Queue a core input (or an internal item) for the mutator."""
        self.inputs.put(item)

    def request_reload(self) -> None:
        self.inputs.put(_Reload())

    def request_stop(self, why: str = "stop requested") -> None:
        self.inputs.put(_Stop(why))

    # -- start -----------------------------------------------------------------------

    def start(self) -> None:
        """Load policies and the store, check the engine and the controller, define
        the engine flows and thresholds, reconcile, start the threads."""
        from demon.policy import PolicyError

        try:
            policies, limits = load_config(self.policies_dir)
        except PolicyError as exc:
            raise StartupError(f"bad policy set in {self.policies_dir}: {exc}", 2) from None
        try:
            self._engine.version()
        except SFlowRTError as exc:
            raise StartupError(f"cannot reach the analytics engine at {self.engine_url}: "
                               f"{exc} — is sFlow-RT (or demon-sflow) running?", 3) from None
        try:
            self.controller.hello()
            switches = self.controller.list_switches()
            mirrors = self.controller.list_mirrors()
        except ControllerUnreachable as exc:
            raise StartupError(f"cannot reach the controller at {self.controller.address}: "
                               f"{exc.message} — is demon-controller running?", 4) from None
        except RpcError as exc:
            raise StartupError(f"the controller at {self.controller.address} refused us: "
                               f"{exc.message} (check --token-file)", 4) from None
        loaded = self.store.load()
        self.state = loaded.state
        self.last_event_id = loaded.last_event_id
        try:
            self._define(policies, {})
        except SFlowRTError as exc:
            raise StartupError(f"the analytics engine at {self.engine_url} refused the "
                               f"policies' flow definitions: {exc}", 3) from None
        self._switches = list(switches)
        self._port_map = self._read_port_map()
        self.ctx = Context(policies=policies, topology=Topology(self._port_map, self._switches),
                           limits=limits)
        self._by_threshold = thresholds_of(policies)
        log.info("started: %d polic%s (%s), %d tap(s) restored, event cursor %d, "
                 "controller %s, engine %s%s", len(policies),
                 "y" if len(policies) == 1 else "ies", ", ".join(sorted(policies)),
                 len(self.state.live_taps()), self.last_event_id, self.controller.address,
                 self.engine_url, " (dry run: no RPC writes)" if self.options.dry_run else "")
        # Reconcile before declaring the controller up, so nothing is re-sent blindly.
        self._controller_up = True
        self.inputs.put(Reconcile(mirrors=list(mirrors)))
        self.inputs.put(ControllerStatus(up=True))
        self._start_threads()

    def _read_port_map(self) -> list[Any]:
        try:
            return self._engine.port_map()
        except Unsupported:
            return []
        except SFlowRTError as exc:
            log.warning("port map unavailable from %s: %s", self.engine_url, exc)
            return self._port_map

    def _define(self, policies: Mapping[str, Any], previous: Mapping[str, Any]) -> None:
        """Define every policy's flow (and threshold) in the engine; delete the ones
        of policies that went away."""
        policies, previous = engine_policies(policies), engine_policies(previous)
        for name, pol in policies.items():
            self._engine.define_flow(pol.flow_name, pol.flow_spec())
            spec = pol.threshold_spec()
            if spec is not None:
                self._engine.define_threshold(pol.flow_name, spec)
            elif name in previous and previous[name].threshold_spec() is not None:
                self._engine.delete_threshold(previous[name].flow_name)
        for name, pol in previous.items():
            if name not in policies:
                self._undefine(pol)

    def _undefine(self, pol: Any) -> None:
        if pol.threshold_spec() is not None:
            self._engine.delete_threshold(pol.flow_name)
        self._engine.delete_flow(pol.flow_name)

    def _start_threads(self) -> None:
        stream = EventStream(self._events_engine, max_events=self.options.max_events,
                             poll_timeout=self.options.event_poll_timeout)
        if self.last_event_id >= 0:
            stream.last_event_id = self.last_event_id
        self._stream = stream
        for name, target in (("demon-events", self._event_loop), ("demon-rpc", self._rpc_loop)):
            thread = threading.Thread(target=target, name=name, daemon=True)
            thread.start()
            self._threads.append(thread)
        if not self.options.dry_run:
            # budgets: the switch counters, read on their own connection when the core says
            reader_rpc = RpcClient(self.controller.address, token=self.controller.token,
                                   timeout=self.controller.timeout)
            self._counter_rpc = reader_rpc
            self._counters = CounterReader(reader_rpc.list_mirrors, self.inputs.put,
                                           clock=self.clock, speed=self.options.speed).start()
        self._subscription = self.controller.subscribe(self._on_controller_event,
                                                       on_connection=self._on_connection)
        speed = self.options.speed
        scheduler = BackgroundScheduler(timezone="UTC")
        scheduler.add_job(lambda: self.inputs.put(Tick()), "interval",
                          seconds=self.options.tick_interval / speed, id="tick",
                          coalesce=True, max_instances=1)
        scheduler.add_job(lambda: self.inputs.put(_PollRequests()), "interval",
                          seconds=self.options.requests_interval / speed, id="requests",
                          coalesce=True, max_instances=1)
        scheduler.add_job(lambda: self.inputs.put(_Prune()), "interval",
                          seconds=self.options.prune_interval / speed, id="prune",
                          coalesce=True, max_instances=1)
        self.inputs.put(_Prune())  # at start too: a daemon restarted often still prunes
        scheduler.add_job(self._controller_back, "interval",
                          seconds=self.options.controller_probe_interval / speed,
                          id="controller-probe", coalesce=True, max_instances=1)
        # Every second while the port map is empty (agents still appearing), then
        # every topology_interval.
        scheduler.add_job(self._refresh_topology, "interval",
                          seconds=min(1.0, self.options.topology_interval) / speed,
                          id="topology",
                          coalesce=True, max_instances=1)
        self._scheduler = scheduler
        self._schedule_polls()
        scheduler.start()

    def _schedule_polls(self) -> None:
        assert self._scheduler is not None and self.ctx is not None
        for job in self._scheduler.get_jobs():
            if job.id.startswith("poll:"):
                job.remove()
        for name, pol in engine_policies(self.ctx.policies).items():
            interval = float(getattr(pol, "interval", 0) or 0)
            if interval > 0:
                self._scheduler.add_job(self._poll_flows, "interval", args=[name],
                                        seconds=interval / self.options.speed,
                                        id=f"poll:{name}", coalesce=True, max_instances=1)

    # -- producers (other threads) ----------------------------------------------------

    def _event_loop(self) -> None:
        assert self._stream is not None
        backoff, failing = 0.2, False
        backlog = self.last_event_id < 0
        while not self._halt.is_set():
            try:
                events = self._stream.poll()
            except SFlowRTError as exc:
                if not failing:
                    log.warning("engine event poll failed (%s); retrying from event %d",
                                exc, self._stream.last_event_id)
                failing = True
                self._halt.wait(backoff)
                backoff = min(backoff * 2, self.options.engine_backoff_max)
                continue
            if failing:
                log.info("engine events back; resuming after event %d",
                         self._stream.last_event_id)
            failing, backoff = False, 0.2
            if events and not self._halt.is_set():
                skip_before = None
                if backlog:
                    # A first start (no saved cursor) gets the engine's retained events:
                    # act on recent ones only, as sFlow-RT apps do.
                    skip_before = time.time() - self.options.backlog_max_age
                self.inputs.put(_Events(events, skip_before))
                backlog = False

    def _poll_flows(self, name: str) -> None:
        ctx = self.ctx
        if ctx is None or name not in ctx.policies:
            return
        pol = ctx.policies[name]
        try:
            flows = self._engine.activeflows(pol.flow_name, max_flows=pol.max_flows,
                                             min_value=pol.min_value)
        except NotFound:
            # The engine restarted and forgot our definitions: put them back.
            log.warning("flow %s vanished from the engine; defining it again", pol.flow_name)
            try:
                self._define(ctx.policies, {})
            except SFlowRTError as exc:
                log.warning("cannot redefine flows: %s", exc)
            return
        except SFlowRTError as exc:
            log.debug("activeflows %s failed: %s", pol.flow_name, exc)
            return
        self.inputs.put(top_flows(name, flows))

    def _refresh_topology(self) -> None:
        """Every second while the map is empty or a flow waits for its port to
        appear in it, else every ``topology_interval``."""
        now = time.monotonic()
        due = self._topology_read_at + self.options.topology_interval / self.options.speed
        if self._port_map and now < due and not self._awaiting_placement:
            return
        self._topology_read_at = now
        self._reload_port_map()

    def _reread_for_placement(self) -> None:
        self._reload_port_map()
        self.inputs.put(Tick())  # the tick re-tries the waiting flows on the new map

    def _reload_port_map(self) -> None:
        """Read the port map and hand a changed one to the mutator.

        Serialised, so that the topologies reach the queue in the order the maps
        were read: a slow periodic read finishing after a placement re-read must
        not put an older map back in force.
        """
        with self._port_map_lock:
            port_map = self._read_port_map()
            if port_map != self._port_map:
                self._port_map = port_map
                self.inputs.put(_NewTopology(Topology(port_map, self._switches)))

    def _on_controller_event(self, event: Any) -> None:
        params = event.params or {}
        if event.event == "mirror_removed":
            self.inputs.put(MirrorRemoved(tap_id=str(params.get("tap_id", "")),
                                          reason=str(params.get("reason", "unknown")),
                                          packets=int(params.get("packets") or 0),
                                          bytes=int(params.get("bytes") or 0)))
        elif event.event in ("switch_up", "switch_down"):
            threading.Thread(target=self._refetch_switches, daemon=True).start()

    def _refetch_switches(self) -> None:
        try:
            self._switches = self.controller.list_switches()
        except RpcError as exc:
            log.warning("list_switches failed: %s", exc)
            return
        with self._port_map_lock:
            self.inputs.put(_NewTopology(Topology(self._port_map, self._switches)))

    def _on_connection(self, up: bool) -> None:
        """The controller came (subscription connected) or went (any failed call)."""
        if self._halt.is_set():
            return  # our own shutdown closing the connection
        if up:
            threading.Thread(target=self._controller_back, daemon=True).start()
            return
        with self._controller_lock:
            was_up, self._controller_up = self._controller_up, False
        if was_up:
            log.warning("lost the controller at %s; taps wait until it is back",
                        self.controller.address)
            self.inputs.put(ControllerStatus(up=False))

    def _controller_back(self) -> None:
        """Reconcile with a controller seen again (from the subscription or the probe).

        Also run every second while the controller is down: a call may have failed
        (timeout) while the event connection stayed up, so no reconnect would tell.
        """
        with self._controller_lock:
            if self._controller_up or self._reconnecting:
                return
            self._reconnecting = True
        try:
            switches = self.controller.list_switches()
            mirrors = self.controller.list_mirrors()
        except RpcError as exc:
            log.debug("controller at %s not back yet: %s", self.controller.address, exc)
            return
        finally:
            with self._controller_lock:
                self._reconnecting = False
        with self._controller_lock:
            if self._controller_up:
                return
            self._controller_up = True
        log.info("controller at %s is back: reconciling %d mirror(s)",
                 self.controller.address, len(mirrors))
        self.inputs.put(_ControllerBack(switches=list(switches), mirrors=list(mirrors)))

    # -- the RPC worker ---------------------------------------------------------------

    def _rpc_loop(self) -> None:
        while True:
            cmd = self._rpc_queue.get()
            if cmd is None:
                return
            self.inputs.put(self.execute(cmd))

    def execute(self, cmd: Command) -> Any:
        """Run one Install/Remove command; return the input that reports its outcome."""
        if self.options.dry_run:
            log.info("dry run: would %s", _command_text(cmd))
            if isinstance(cmd, InstallMirror):
                return InstallResult(tap_id=cmd.tap.tap_id, ok=True)
            assert isinstance(cmd, RemoveMirror)
            return RemoveResult(tap_id=cmd.tap_id, ok=True)
        try:
            if isinstance(cmd, InstallMirror):
                result = self.controller.install_mirror(**cmd.params())
                return InstallResult(tap_id=cmd.tap.tap_id, ok=True,
                                     cookie=result.get("cookie"))
            assert isinstance(cmd, RemoveMirror)
            result = self.controller.remove_mirror(cmd.tap_id)
            return RemoveResult(tap_id=cmd.tap_id, ok=True,
                                packets=int(result.get("packets") or 0),
                                bytes=int(result.get("bytes") or 0))
        except (ControllerUnreachable, RpcTimeout) as exc:
            # Idempotent by tap id: the core resends it once the controller is back.
            self._on_connection(False)
            return self._failure(cmd, exc.message, unreachable=True)
        except RpcError as exc:
            return self._failure(cmd, f"{exc.message} ({exc.code})", unreachable=False)

    @staticmethod
    def _failure(cmd: Command, error: str, unreachable: bool) -> Any:
        if isinstance(cmd, InstallMirror):
            return InstallResult(tap_id=cmd.tap.tap_id, ok=False, error=error,
                                 unreachable=unreachable)
        assert isinstance(cmd, RemoveMirror)
        return RemoveResult(tap_id=cmd.tap_id, ok=False, error=error, unreachable=unreachable)

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
        """Apply a batch of inputs, persist once, then dispatch the RPC commands."""
        entries: list[HistoryEntry] = []
        outbox: list[Command] = []
        answered: list[tuple[int, str]] = []
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
                        self._step(inp, entries, outbox)
            elif isinstance(item, _PollRequests):
                handled = {rid for rid, _ in answered} | self._looking_up
                for request in self.store.pending_requests():
                    if request.id not in handled:
                        outcome = self._operator(request, entries, outbox)
                        if outcome is not None:
                            answered.append((request.id, outcome))
            elif isinstance(item, _OperatorTapReady):
                self._looking_up.discard(item.request.id)
                outcome = item.error
                if item.tap is not None:
                    outcome = self._apply_operator_tap(item.tap, entries, outbox)
                answered.append((item.request.id, outcome))
            elif isinstance(item, _NewTopology):
                assert self.ctx is not None
                self.ctx = replace(self.ctx, topology=item.topology)
            elif isinstance(item, _ControllerBack):
                assert self.ctx is not None
                self._switches = item.switches
                self.ctx = replace(self.ctx, topology=Topology(self._port_map, item.switches))
                self._step(Reconcile(mirrors=item.mirrors), entries, outbox)
                self._step(ControllerStatus(up=True), entries, outbox)
            elif isinstance(item, _Reload):
                self._reload()
            elif isinstance(item, _Prune):
                self._prune()
            elif isinstance(item, _Stop):
                log.info("stopping: %s", item.why)
                self._stopping = True
            else:
                self._step(item, entries, outbox)
        self.store.save(self.state, entries, last_event_id=cursor, answered=answered,
                        now=self.clock())
        if cursor is not None:
            self.last_event_id = cursor
        if self._counters is not None:
            self._counters.due(core.counters_due(self.state, self.ctx))
        awaiting = core.awaiting_placement(self.state)
        if awaiting and not self._awaiting_placement:
            # A flow just started waiting for its port (agents announce ports with
            # their counters, after their first flow samples): re-read the map now.
            threading.Thread(target=self._reread_for_placement, name="demon-portmap",
                             daemon=True).start()
        self._awaiting_placement = awaiting
        for entry in entries:
            decisions.info(describe(entry), extra={"tap_id": entry.tap_id, "kind": entry.kind,
                                                   "detail": dict(entry.detail)})
        for cmd in outbox:
            self._rpc_queue.put(cmd)
        return outbox

    def _step(self, inp: Any, entries: list[HistoryEntry], outbox: list[Command]) -> None:
        assert self.ctx is not None
        try:
            self.state, commands = core.step(self.state, self.ctx, inp, self.clock())
        except Exception:
            # A bug must not turn one input into a crash loop (a restart would read
            # the same event again): skip it, state unchanged, and say so loudly.
            log.exception("decision core failed on %r; input skipped", inp)
            return
        self.steps += 1
        for cmd in commands:
            if isinstance(cmd, Record):
                entries.append(cmd.entry)
            else:
                outbox.append(cmd)

    def _operator_tap(self, request: OperatorRequest, entries: list[HistoryEntry],
                      outbox: list[Command]) -> str | None:
        """``demon-tap tap``. Where the flow enters: the operator's ``at``, else where
        the daemon last saw it, else the engine's ``/activeflows`` (asked on another
        thread: the answer is then written when it is back, so None here)."""
        assert self.ctx is not None
        try:
            req = TapRequest.from_target(request.target)
        except ValueError as exc:
            return f"{NOT_TAPPED}: bad request: {exc}"
        pol = self.ctx.policies.get(req.policy)
        if pol is None:
            return f"{NOT_TAPPED}: no policy named {req.policy!r}"
        base = OperatorTap(policy=req.policy, flow_key=req.flow_key, who=request.who,
                           hold=req.hold or float(pol.duration))
        if req.at is not None:
            return self._apply_operator_tap(replace(base, dpid=req.at[0], in_port=req.at[1]),
                                            entries, outbox)
        cand = self.state.watch.get((req.policy, req.flow_key))
        if cand is not None:
            return self._apply_operator_tap(
                replace(base, agent=cand.agent, data_source=cand.data_source,
                        rate_bps=cand.rate_bps), entries, outbox)
        seen = [t for t in self.state.taps.values()
                if t.policy == req.policy and t.flow_key == req.flow_key and t.dpid]
        if seen:
            last = max(seen, key=lambda t: t.created_at)
            return self._apply_operator_tap(
                replace(base, dpid=last.dpid, in_port=last.in_port, rate_bps=last.rate_bps),
                entries, outbox)
        self._looking_up.add(request.id)

        def lookup() -> None:
            try:
                flows = self._engine.activeflows(pol.flow_name, max_flows=OPERATOR_LOOKUP_FLOWS)
            except SFlowRTError as exc:
                self.inputs.put(_OperatorTapReady(request, None, f"{NOT_TAPPED}: cannot ask the "
                                                  f"engine where the flow enters ({exc}); name "
                                                  "its ingress with --at DPID/PORT"))
                return
            for flow in flows:
                if flow.key == req.flow_key:
                    self.inputs.put(_OperatorTapReady(request, replace(
                        base, agent=flow.agent, data_source=str(flow.data_source),
                        rate_bps=pol.to_bps(flow.value))))
                    return
            self.inputs.put(_OperatorTapReady(
                request, None, f"{NOT_TAPPED}: flow {req.flow_key!r} is not among the active "
                f"flows of {pol.flow_name} in the engine; name its ingress with --at DPID/PORT"))

        threading.Thread(target=lookup, name="demon-operator-tap", daemon=True).start()
        return None

    def _apply_operator_tap(self, op: OperatorTap, entries: list[HistoryEntry],
                            outbox: list[Command]) -> str:
        first = len(entries)
        self._step(op, entries, outbox)
        return tap_answer(entries[first:])

    def _operator(self, request: OperatorRequest, entries: list[HistoryEntry],
                  outbox: list[Command]) -> str | None:
        """Turn a queued operator request into a core input; return the answer
        (None: answered later, see ``_operator_tap``)."""
        assert self.ctx is not None
        who = request.who
        if request.kind == "release":
            tap = self.state.taps.get(request.target)
            if tap is None or not tap.live:
                return f"no live tap {request.target!r}"
            self._step(OperatorRelease(tap_id=request.target, who=who), entries, outbox)
            return "release requested"
        if request.kind == "tap":
            return self._operator_tap(request, entries, outbox)
        if request.target not in self.ctx.policies:
            return f"no policy named {request.target!r}"
        if request.kind == "pause":
            if request.target in self.state.paused:
                return "already paused"
            self._step(PausePolicy(name=request.target, who=who), entries, outbox)
            return "paused"
        if request.target not in self.state.paused:
            return "not paused"
        self._step(ResumePolicy(name=request.target, who=who), entries, outbox)
        return "resumed"

    def _prune(self) -> None:
        """Keep the state file bounded (``limits.history_retain``; 0 keeps all)."""
        assert self.ctx is not None
        keep = self.ctx.limits.history_retain
        if keep <= 0:
            return
        gone = self.store.prune(self.clock() - keep)
        if any(gone.values()):
            log.info("pruned from the state file (older than %gs): %d tap(s), %d history "
                     "entries, %d operator request(s)", keep, gone["taps"], gone["history"],
                     gone["requests"])

    def _reload(self) -> None:
        from demon.policy import PolicyError

        assert self.ctx is not None
        old = self.ctx.policies
        try:
            policies, limits = load_config(self.policies_dir)
        except PolicyError as exc:
            log.error("reload rejected, keeping the %d running polic%s: %s", len(old),
                      "y" if len(old) == 1 else "ies", exc)
            return
        try:
            self._define(policies, old)
        except SFlowRTError as exc:
            log.error("reload rejected: the engine refused the definitions (%s); "
                      "restoring the running set", exc)
            try:
                self._define(old, policies)
            except SFlowRTError:
                log.exception("could not restore the running definitions")
            return
        self.ctx = replace(self.ctx, policies=policies, limits=limits)
        self._by_threshold = thresholds_of(policies)
        if self._scheduler is not None:
            self._schedule_polls()
        log.info("reloaded %d polic%s: %s", len(policies), "y" if len(policies) == 1 else "ies",
                 ", ".join(sorted(policies)))

    # -- shutdown ---------------------------------------------------------------------

    def shutdown(self) -> None:
        """Stop producers; with ``on_exit=remove`` remove every live tap; delete our
        engine definitions; close the controller connections."""
        self._halt.set()
        if self._scheduler is not None and self._scheduler.running:
            self._scheduler.shutdown(wait=False)
        if self._subscription is not None:
            self._subscription.close()
        self._rpc_queue.put(None)
        if self._counters is not None:
            self._counters.stop()
            self._counter_rpc.close()
        for thread in self._threads:
            if thread.name == "demon-rpc":
                thread.join(timeout=self.options.exit_timeout)
        if self.options.on_exit == "remove" and self.ctx is not None:
            self._remove_all()
        if self.ctx is not None:
            for pol in engine_policies(self.ctx.policies).values():
                try:
                    self._undefine(pol)
                except SFlowRTError as exc:
                    log.warning("could not delete %s from the engine: %s", pol.flow_name, exc)
        self.controller.close()
        left = len(self.state.live_taps())
        log.info("stopped; %d live tap(s)%s", left,
                 " left to their hard timeouts" if left else "")

    def _remove_all(self) -> None:
        """Release every live tap through the core and run the removals here."""
        deadline = time.monotonic() + self.options.exit_timeout
        entries: list[HistoryEntry] = []
        pending: list[Command] = []
        for tap in self.state.live_taps():
            if tap.state != "expiring":
                self._step(OperatorRelease(tap_id=tap.tap_id, who="demon-watch exit"),
                           entries, pending)
            elif tap.inflight is None:
                pending.append(RemoveMirror(tap.tap_id, "exit"))
        while pending and time.monotonic() < deadline:
            cmd = pending.pop(0)
            if not isinstance(cmd, RemoveMirror):
                continue  # nothing new is installed on the way out
            result = self.execute(cmd)
            if getattr(result, "unreachable", False):
                log.warning("controller unreachable at exit: taps left to their hard timeouts")
                break
            self._step(result, entries, pending)
        self.store.save(self.state, entries, now=self.clock())


def _command_text(cmd: Command) -> str:
    if isinstance(cmd, InstallMirror):
        tap = cmd.tap
        return (f"install mirror {tap.tap_id} on dpid {tap.dpid} port {tap.in_port} → "
                f"{tap.copy_port} match {dict(tap.match)}")
    if isinstance(cmd, RemoveMirror):
        return f"remove mirror {cmd.tap_id} ({cmd.reason})"
    return repr(cmd)
