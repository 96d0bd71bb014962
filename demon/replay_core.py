"""The backtest core: the decision core driven by recorded inputs, no network.

:class:`Backtest` takes what the daemon would have seen (threshold events,
``/activeflows`` answers, the port map, the once-a-second ``Tick``) at the times
they were recorded and collects the decisions in a :class:`ReplayResult`; the
controller is simulated (every install and remove succeeds at once). Both kinds
of recording drive it: an engine's recorded answers (``Backtest.feed``) and raw
sFlow through the embedded engine (``demon.replay_sflow``). ``demon.replay`` reads
a recording, picks the kind and writes the output.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Iterable, Mapping

from demon import core
from demon.core import Context
from demon.model import (Command, ControllerStatus, HistoryEntry, InstallMirror, InstallResult,
                         Reconcile, Record, RemoveMirror, RemoveResult, State, Tap, Tick)
from demon.runtime import engine_policies, threshold_event, thresholds_of, top_flows
from demon.topology import Topology
from sflow.client import ActiveFlow, Event, SFlowRTError, parse_event, parse_port_map_entry


TICK = 1.0


class ReplayError(Exception):
    """The recording, the fabric or the policies cannot be replayed (names which)."""


@dataclass
class ReplayResult:
    """What the policies would have done: the recorded decisions and every tap."""

    start: float
    end: float
    timeline: list[HistoryEntry] = field(default_factory=list)
    taps: dict[str, Tap] = field(default_factory=dict)
    extensions: dict[str, int] = field(default_factory=dict)
    events: int = 0
    polls: int = 0
    datagrams: int | None = None  # raw sFlow backtests: datagrams fed to the engine
    malformed: int = 0


class Backtest:
    """The core driven by recorded answers: feed exchanges in order, then read ``result``."""

    def __init__(self, policies: Mapping[str, Any], limits: Any,
                 switches: list[dict[str, Any]], start: float) -> None:
        self.switches = switches
        self.port_map: list[Any] = []
        self.ctx = Context(policies=policies, topology=Topology([], switches), limits=limits)
        self.by_threshold = thresholds_of(policies)
        self.by_flow = {p.flow_name: name for name, p in engine_policies(policies).items()}
        self.state = State()
        self.cursor = -1
        self.next_tick = start + TICK
        self.result = ReplayResult(start=start, end=start)
        self._step(Reconcile(mirrors=[]), start)
        self._step(ControllerStatus(up=True), start)

    def _step(self, inp: Any, now: float) -> None:
        before = self.state.taps
        self.state, commands = core.step(self.state, self.ctx, inp, now)
        for tap_id, tap in self.state.taps.items():
            old = before.get(tap_id)
            if old is not None and tap.last_trigger_at > old.last_trigger_at:
                self.result.extensions[tap_id] = self.result.extensions.get(tap_id, 0) + 1
            self.result.taps[tap_id] = tap
        self._run(commands, now)

    def _run(self, commands: Iterable[Command], now: float) -> None:
        for cmd in commands:
            if isinstance(cmd, Record):
                self.result.timeline.append(cmd.entry)
            elif isinstance(cmd, InstallMirror):  # the simulated controller always agrees
                self._step(InstallResult(tap_id=cmd.tap.tap_id, ok=True), now)
            elif isinstance(cmd, RemoveMirror):
                self._step(RemoveResult(tap_id=cmd.tap_id, ok=True), now)

    def tick(self, now: float) -> None:
        """An extra sweep now (the daemon's re-read of the port map is followed by one)."""
        self._step(Tick(), now)

    def advance(self, now: float) -> None:
        """Run the once-a-second sweep up to ``now``."""
        while self.next_tick <= now:
            self._step(Tick(), self.next_tick)
            self.next_tick += TICK
        self.result.end = max(self.result.end, now)

    def on_events(self, events: Iterable[Event], now: float) -> None:
        """Threshold events (any order), each id once, as the daemon's stream delivers them."""
        for event in sorted(events, key=lambda e: e.event_id):
            if event.event_id <= self.cursor:
                continue
            self.cursor = event.event_id
            self.result.events += 1
            inp = threshold_event(event, self.by_threshold)
            if inp is not None:
                self._step(inp, now)

    def on_poll(self, policy: str, rows: Iterable[Any], now: float) -> None:
        """A policy's ``/activeflows`` answer (JSON rows)."""
        self.result.polls += 1
        flows = [ActiveFlow(key=str(r.get("key", "")), value=float(r["value"]),
                            agent=str(r.get("agent", "")),
                            data_source=str(r.get("dataSource", "")), keys=[]) for r in rows]
        self._step(top_flows(policy, flows), now)

    def on_port_map(self, entries: Iterable[Any]) -> None:
        port_map = list(entries)
        if port_map != self.port_map:
            self.port_map = port_map
            self.ctx = Context(policies=self.ctx.policies,
                               topology=Topology(self.port_map, self.switches),
                               limits=self.ctx.limits)

    def feed(self, exchange: Any) -> None:
        """One recorded exchange (an ``sflow.recorder.Exchange``)."""
        self.advance(exchange.t)
        if exchange.error is not None or exchange.status != 200 or exchange.method != "GET":
            return
        path, body, now = exchange.path, exchange.body, exchange.t
        where = f"recorded {path} at t={now}"
        try:
            if path == "/events/json":
                self.on_events([parse_event(obj) for obj in _array(body, where)], now)
            elif path.startswith("/activeflows/"):
                parts = path.strip("/").split("/")
                policy = self.by_flow.get(parts[2]) if len(parts) == 4 else None
                if policy is not None:
                    self.on_poll(policy, _array(body, where), now)
            elif path == "/demon/portmap/json":
                self.on_port_map([parse_port_map_entry(obj) for obj in _array(body, where)])
        except (SFlowRTError, KeyError, TypeError, ValueError) as exc:
            raise ReplayError(f"{where}: {exc}") from None


def _array(body: Any, where: str) -> list[Any]:
    if not isinstance(body, list):
        raise ReplayError(f"{where}: body is not an array")
    return body
