"""Start-up: from the policy directory, the state file, the engine and the
controller to a running daemon (its context, its read model, its threads).

A mixin of :class:`demon.runtime.loop.Runtime`, not a collaborator: starting
sets most of the runtime's own state (the core's state and context, the event
cursor, switches and port map, thresholds, read model, scheduler, notifier);
a collaborator would need a back-reference to all of it and would only hand
it back. ``start`` runs once, before the mutator's thread; the jobs it
schedules only put items on the runtime's input queue.
"""

from __future__ import annotations

import logging
import queue
import time
from dataclasses import replace
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

from apscheduler.schedulers.background import BackgroundScheduler

from demon.core import Context
from demon.model import ControllerStatus, Reconcile, State, Tap, Tick
from demon.rpc.client import RpcClient
from demon.runtime.controller_side import ControllerSide
from demon.runtime.engine_side import EngineSide, engine_policies, load_config, thresholds_of
from demon.runtime.items import _Flush, _PollRequests, _Prune
from demon.runtime.options import RuntimeOptions, StartupError
from demon.runtime.view import ReadModel, Transition, tap_record
from demon.store import Store, StoreError
from demon.topology import Topology
from sflow.client import SFlowRTError

log = logging.getLogger("demon.runtime")


class StartUp:
    """``start`` and what it sets going."""

    # What it uses of the runtime (set by ``Runtime.__init__``).
    policies_dir: Path
    engine_url: str
    engine: EngineSide
    controller: RpcClient
    controller_side: ControllerSide
    store: Store
    options: RuntimeOptions
    inputs: "queue.Queue[Any]"
    view: ReadModel
    state: State
    ctx: Context | None
    last_event_id: int
    reload_info: dict[str, Any]
    meta_out: dict[str, str]
    notifier: Any
    _notify_configs: Sequence[Any]
    _by_threshold: dict[str, str]
    _switches: list[dict[str, Any]]
    _port_map: list[Any]
    _archive: Mapping[str, Tap]
    _published_taps: Mapping[str, Tap]
    _scheduler: BackgroundScheduler | None
    _publish: Callable[[list[Transition]], None]

    def start(self) -> None:
        """Load policies and the store, check the engine and the controller, define
        the engine flows and thresholds, reconcile, start the threads."""
        from demon.policy import PolicyError

        try:
            policies, limits = load_config(self.policies_dir)
        except PolicyError as exc:
            raise StartupError(f"bad policy set in {self.policies_dir}: {exc}", 2) from None
        try:
            self.engine.check()
        except SFlowRTError as exc:
            raise StartupError(f"cannot reach the analytics engine at {self.engine_url}: "
                               f"{exc} — is sFlow-RT (or demon-sflow) running?", 3) from None
        switches, mirrors = self.controller_side.connect()
        try:
            loaded = self.store.load()
            # Evidence rule on (see State.observed): nothing has been observed yet.
            self.state = replace(loaded.state, observed={})
            self.last_event_id = loaded.last_event_id
            self._load_view()
        except StoreError as exc:
            raise StartupError(str(exc), 5) from None
        try:
            self.engine.define(policies, {})
        except SFlowRTError as exc:
            raise StartupError(f"the analytics engine at {self.engine_url} refused the "
                               f"policies' flow definitions: {exc}", 3) from None
        self.engine.policies = policies
        self._switches = list(switches)
        self._port_map = self.engine.read_port_map()
        self.engine.port_map = self._port_map
        self.ctx = Context(policies=policies, topology=Topology(self._port_map, self._switches),
                           limits=limits)
        self._by_threshold = thresholds_of(policies)
        self.reload_info = {"at": time.time(), "ok": True, "error": None,
                            "policies": sorted(policies), "what": "start"}
        log.info("started: %d polic%s (%s), %d tap(s) restored, event cursor %d, "
                 "controller %s, engine %s%s", len(policies),
                 "y" if len(policies) == 1 else "ies", ", ".join(sorted(policies)),
                 len(self.state.live_taps()), self.last_event_id, self.controller.address,
                 self.engine_url, " (dry run: no RPC writes)" if self.options.dry_run else "")
        self._publish([])
        self.inputs.put(Reconcile(mirrors=list(mirrors)))
        self.inputs.put(ControllerStatus(up=True))
        self._start_threads()
        if self._notify_configs:
            self._start_notifier()

    def _start_notifier(self) -> None:
        from demon.notify import Notifier

        cursors: dict[str, int] = {}
        for config in self._notify_configs:
            try:
                value = self.store.meta(f"notify:{config.name}")
                if value is not None:
                    cursors[config.name] = int(value)
            except (StoreError, ValueError) as exc:
                log.warning("notification cursor of %s unreadable (%s): starting from now",
                            config.target, exc)
        self.notifier = Notifier(self.view, self._notify_configs, cursors, self._keep_cursor)
        for sink in self.notifier.sinks:  # every key now: later writes only change values
            self.meta_out[f"notify:{sink.config.name}"] = str(sink.cursor)
        self.notifier.start()

    def _keep_cursor(self, name: str, transition_id: int) -> None:
        """A sink handled ``transition_id`` (its thread): saved at once (a batch of its
        own), so that a daemon killed just after a delivery does not repeat it."""
        self.meta_out[f"notify:{name}"] = str(transition_id)
        self.inputs.put(_Flush())

    def _load_view(self) -> None:
        """The read model from the state file: every tap and transition it holds."""
        taps = {t.tap_id: t for t in self.store.taps()}
        stored = self.store.transitions(0)
        live = self.state.taps
        self._archive = {k: t for k, t in taps.items() if k not in live}
        self._published_taps = live
        latest = {**taps, **live}
        self.view.replace(
            Transition.of(s.id, s.entry, s.tap if s.tap is not None else (
                tap_record(latest[s.entry.tap_id]) if s.entry.tap_id in latest else None))
            for s in stored)

    def _start_threads(self) -> None:
        self.engine.start(self.last_event_id)
        self.controller_side.start()
        speed = self.options.speed
        scheduler = BackgroundScheduler(timezone="UTC")

        def every(seconds: float, job: Callable[[], None], job_id: str) -> None:
            scheduler.add_job(job, "interval", seconds=seconds / speed, id=job_id,
                              coalesce=True, max_instances=1)

        every(self.options.tick_interval, lambda: self.inputs.put(Tick()), "tick")
        every(self.options.requests_interval, lambda: self.inputs.put(_PollRequests()),
              "requests")
        every(self.options.prune_interval, lambda: self.inputs.put(_Prune()), "prune")
        self.inputs.put(_Prune())  # at start too: a daemon restarted often still prunes
        every(self.options.controller_probe_interval, self.controller_side.probe,
              "controller-probe")
        # Every second while the port map is empty (agents still appearing), then
        # every topology_interval.
        every(min(1.0, self.options.topology_interval), self.engine.refresh_topology,
              "topology")
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
                self._scheduler.add_job(self.engine.poll_flows, "interval", args=[name],
                                        seconds=interval / self.options.speed,
                                        id=f"poll:{name}", coalesce=True, max_instances=1)
