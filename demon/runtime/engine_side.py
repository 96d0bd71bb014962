"""The engine side of the runtime: everything said to and heard from the
analytics engine (sFlow-RT's REST API, or the embedded engine's copy of it).

* the policies' flow and threshold definitions (put, replaced, deleted);
* the ``/events/json`` long poll (its own thread) → ``_Events``;
* every policy's ``/activeflows`` poll (scheduler jobs) → ``TopFlows``;
* the port map (``/demon/portmap/json``) → ``_PortMap``;
* where an operator's flow enters (``/activeflows``) → ``_Located``.

It never decides and never touches the state: it only puts items on the
mutator's queue. It also knows whether its polls are *evidence*
(``TopFlows.complete``): not during the warm-up after the engine (re)learnt a
definition, nor after an outage or a stalled reply, while the engine's
smoothed rates are still building up (issue 14 #4).
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import replace
from typing import Any, Callable, Iterable, Mapping

from demon.model import FlowSighting, OperatorTap, ThresholdEvent, TopFlows
from demon.runtime.items import Ask, _Events, _Located, _PortMap, _Redefine
from demon.runtime.options import RuntimeOptions
from sflow.client import (ActiveFlow, Event, EventStream, NotFound, SFlowRTClient, SFlowRTError,
                          Unsupported)

log = logging.getLogger("demon.runtime.engine")

FLOW_PREFIX = "demon_"
OPERATOR_LOOKUP_FLOWS = 10000  # /activeflows rows searched for an operator's flow
MIN_EMPTY_POLL = 0.1  # seconds between two event polls that both came back empty at once


# -- configuration helpers (also used by ``demon.replay``) ------------------------------


def load_config(directory: Any) -> tuple[Mapping[str, Any], Any]:
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


def top_flows(policy: str, flows: Iterable[ActiveFlow], complete: bool = True) -> TopFlows:
    return TopFlows(policy=policy, flows=tuple(FlowSighting(f.key, f.value, f.agent,
                                                            f.data_source) for f in flows),
                    complete=complete)


def thresholds_of(policies: Mapping[str, Any]) -> dict[str, str]:
    """Engine threshold name → policy name, for the policies that define one."""
    return {p.flow_name: name for name, p in engine_policies(policies).items()
            if p.threshold_spec() is not None}


def _settle_time(pol: Any, options: RuntimeOptions) -> float:
    """Seconds (real time) before the engine's rates of this policy are settled."""
    return max(1.0, options.warmup * float(getattr(pol, "t", 2.0) or 2.0)) / options.speed


class EngineSide:
    """Producers of engine inputs. ``put`` is the mutator's queue."""

    def __init__(self, url: str, options: RuntimeOptions, put: Callable[[Any], None], *,
                 timeout: float = 5.0, retries: int = 2, embedded: bool = False,
                 sflow_listen: str | None = None, token: str | None = None) -> None:
        self.url = url
        self.options = options
        self.embedded = embedded
        self.sflow_listen = sflow_listen
        self._put = put
        self._timeout, self._retries = timeout, retries
        self._token = token  # for an engine whose API asks writes for one (exposed)
        # One client (one requests.Session) per thread: sessions are not thread-safe,
        # and scheduler jobs run on a pool.
        self._local = threading.local()
        self.policies: Mapping[str, Any] = {}  # the running set (the mutator replaces it)
        self._settled: dict[str, float] = {}  # policy → monotonic time its polls count from
        self._settled_all = 0.0               # after an outage: for every policy
        self._health = threading.Lock()
        self.reachable = True
        self.last_error: str | None = None
        self.changed_at = time.time()
        self.port_map: list[Any] = []
        self._port_map_lock = threading.Lock()
        self._topology_read_at = 0.0
        self.awaiting_placement = False  # set by the mutator, read by the topology job
        self._halt = threading.Event()
        self._stream: EventStream | None = None
        self._thread: threading.Thread | None = None
        # counters (read at scrape time)
        self.events_received = 0
        self.polls_ok = 0
        self.polls_failed = 0
        self.polls_unsettled = 0
        self.redefinitions = 0
        #: ``(policy name, policy, flows, at, settled)`` after each good ``/activeflows``
        #: poll (the dashboard's rate history: no extra request to the engine).
        self.poll_listeners: list[Callable[[str, Any, list[ActiveFlow], float, bool], None]] = []

    # -- plumbing ----------------------------------------------------------------------

    def client(self) -> SFlowRTClient:
        client = getattr(self._local, "client", None)
        if client is None:
            client = SFlowRTClient(self.url, timeout=self._timeout, retries=self._retries,
                                   token=self._token)
            self._local.client = client
        return client

    def _ok(self) -> None:
        with self._health:
            if self.reachable:
                return
            self.reachable, self.last_error, self.changed_at = True, None, time.time()
            # Rates decayed or stalled while we could not ask: settle before trusting them.
            self._settled_all = time.monotonic() + max(
                [_settle_time(p, self.options) for p in self.policies.values()] or [1.0])
        log.info("engine at %s answers again", self.url)

    def _failed(self, exc: Exception) -> None:
        with self._health:
            self.last_error = str(exc)
            if not self.reachable:
                return
            self.reachable, self.changed_at = False, time.time()
        log.warning("engine at %s unreachable (%s); taps are kept while it is away", self.url,
                    exc)

    def status(self) -> dict[str, Any]:
        return {"url": self.url, "embedded": self.embedded, "sflow_listen": self.sflow_listen,
                "reachable": self.reachable, "last_error": self.last_error,
                "since": self.changed_at,
                "event_cursor": self._stream.last_event_id if self._stream else None,
                "events_received": self.events_received}

    # -- start -------------------------------------------------------------------------

    def check(self) -> str:
        """The engine's version (raises ``SFlowRTError``)."""
        return self.client().version()

    def define(self, policies: Mapping[str, Any], previous: Mapping[str, Any]) -> None:
        """Define every policy's flow (and threshold) in the engine; delete the ones
        of policies that went away. A definition the engine did not hold as it is
        now starts a warm-up (its rates build up from zero)."""
        policies, previous = engine_policies(policies), engine_policies(previous)
        client = self.client()
        for name, pol in policies.items():
            old = previous.get(name)
            if old is None or old.flow_spec() != pol.flow_spec():
                self._settled[name] = time.monotonic() + _settle_time(pol, self.options)
            client.define_flow(pol.flow_name, pol.flow_spec())
            spec = pol.threshold_spec()
            if spec is not None:
                client.define_threshold(pol.flow_name, spec)
            elif old is not None and old.threshold_spec() is not None:
                client.delete_threshold(old.flow_name)
        for name, pol in previous.items():
            if name not in policies:
                self.undefine(pol)
                self._settled.pop(name, None)

    def undefine(self, pol: Any) -> None:
        client = self.client()
        if pol.threshold_spec() is not None:
            client.delete_threshold(pol.flow_name)
        client.delete_flow(pol.flow_name)

    def read_port_map(self) -> list[Any]:
        try:
            port_map = self.client().port_map()
        except Unsupported:
            return []
        except SFlowRTError as exc:
            log.warning("port map unavailable from %s: %s", self.url, exc)
            return self.port_map
        return port_map

    def start(self, last_event_id: int) -> None:
        stream = EventStream(SFlowRTClient(self.url, timeout=self._timeout, retries=0),
                             max_events=self.options.max_events,
                             poll_timeout=self.options.event_poll_timeout,
                             on_restart=lambda: self._put(_Redefine("the engine restarted")))
        if last_event_id >= 0:
            stream.last_event_id = last_event_id
        self._stream = stream
        self._thread = threading.Thread(target=self._event_loop, args=(last_event_id < 0,),
                                        name="demon-events", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._halt.set()

    # -- producers ---------------------------------------------------------------------

    def _event_loop(self, backlog: bool) -> None:
        assert self._stream is not None
        backoff, failing = 0.2, False
        while not self._halt.is_set():
            began = time.monotonic()
            try:
                events = self._stream.poll()
            except SFlowRTError as exc:
                if not failing:
                    log.warning("engine event poll failed (%s); retrying from event %d",
                                exc, self._stream.last_event_id)
                    self._failed(exc)
                failing = True
                self._halt.wait(backoff)
                backoff = min(backoff * 2, self.options.engine_backoff_max)
                continue
            if failing:
                log.info("engine events back; resuming after event %d",
                         self._stream.last_event_id)
                self._ok()
            failing, backoff = False, 0.2
            if not events and time.monotonic() - began < MIN_EMPTY_POLL:
                # An engine that answers a long poll at once with nothing (no events
                # yet, or no long-poll support) must not make this a busy loop.
                self._halt.wait(MIN_EMPTY_POLL)
            if events and not self._halt.is_set():
                self.events_received += len(events)
                skip_before = None
                if backlog:
                    # A first start (no saved cursor) gets the engine's retained events:
                    # act on recent ones only, as sFlow-RT apps do.
                    skip_before = time.time() - self.options.backlog_max_age
                self._put(_Events(events, skip_before))
                backlog = False

    def poll_flows(self, name: str) -> None:
        """One ``/activeflows`` poll of a policy (a scheduler job)."""
        pol = self.policies.get(name)
        if pol is None or self._halt.is_set():
            return
        started = time.monotonic()
        try:
            flows = self.client().activeflows(pol.flow_name, max_flows=pol.max_flows,
                                              min_value=pol.min_value)
        except NotFound:
            # The engine restarted and forgot our definitions: the mutator puts back
            # the running set (never a set a reload has since replaced).
            self._ok()
            log.warning("flow %s vanished from the engine; defining the policies again",
                        pol.flow_name)
            self._put(_Redefine(f"flow {pol.flow_name} vanished from the engine"))
            return
        except SFlowRTError as exc:
            self.polls_failed += 1
            self._failed(exc)
            log.debug("activeflows %s failed: %s", pol.flow_name, exc)
            return
        done = time.monotonic()
        self._ok()
        self.polls_ok += 1
        took = done - started
        if took > self.options.slow_poll:
            # A reply this late comes from an engine that stalled: its rates missed
            # samples. Not evidence until they have settled again.
            log.warning("engine took %.1fs to answer activeflows %s; settling before "
                        "trusting its rates", took, pol.flow_name)
            with self._health:
                self._settled_all = max(self._settled_all, done + max(
                    [_settle_time(p, self.options) for p in self.policies.values()] or [1.0]))
        complete = started >= max(self._settled.get(name, 0.0), self._settled_all)
        if not complete:
            self.polls_unsettled += 1
        self._put(top_flows(name, flows, complete))
        for listener in list(self.poll_listeners):
            try:
                listener(name, pol, flows, time.time(), complete)
            except Exception:  # noqa: BLE001 - a reader's hook never stops the polls
                log.exception("poll listener failed")

    def refresh_topology(self) -> None:
        """Every second while the map is empty or a flow waits for its port to
        appear in it, else every ``topology_interval`` (a scheduler job)."""
        now = time.monotonic()
        due = self._topology_read_at + self.options.topology_interval / self.options.speed
        if self.port_map and now < due and not self.awaiting_placement:
            return
        self._topology_read_at = now
        self.reload_port_map()

    def reload_port_map(self) -> None:
        """Read the port map and hand a changed one to the mutator.

        Serialised, so that the maps reach the queue in the order they were read:
        a slow periodic read finishing after a placement re-read must not put an
        older map back in force.
        """
        with self._port_map_lock:
            port_map = self.read_port_map()
            if port_map != self.port_map:
                self.port_map = port_map
                self._put(_PortMap(port_map))

    def reread_for_placement(self, then: Callable[[], None]) -> None:
        """A flow just started waiting for its port: re-read the map now, on a thread."""
        def run() -> None:
            self.reload_port_map()
            then()

        threading.Thread(target=run, name="demon-portmap", daemon=True).start()

    def locate(self, ask: Ask, base: OperatorTap) -> None:
        """Where does the operator's flow enter? Ask ``/activeflows`` on a thread;
        the answer comes back to the mutator as ``_Located``."""
        pol = self.policies.get(ask.policy)

        def lookup() -> None:
            if pol is None:  # the core says so (it owns the decision)
                self._put(_Located(ask, base))
                return
            try:
                flows = self.client().activeflows(pol.flow_name,
                                                  max_flows=OPERATOR_LOOKUP_FLOWS)
            except SFlowRTError as exc:
                self._put(_Located(ask, replace(base, unlocated=(
                    f"cannot ask the engine where the flow enters ({exc}); name its "
                    "ingress with --at DPID/PORT"))))
                return
            for flow in flows:
                if flow.key == ask.flow_key:
                    self._put(_Located(ask, replace(
                        base, agent=flow.agent, data_source=str(flow.data_source),
                        rate_bps=pol.to_bps(flow.value))))
                    return
            self._put(_Located(ask, replace(base, unlocated=(
                f"flow {ask.flow_key!r} is not among the active flows of {pol.flow_name} in "
                "the engine; name its ingress with --at DPID/PORT"))))

        threading.Thread(target=lookup, name="demon-operator-tap", daemon=True).start()
