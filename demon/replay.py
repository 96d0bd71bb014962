"""Backtest: run the policies over a recorded engine session, no network.

``demon-watch --policies DIR --replay FILE [--fabric FABRIC.json] [--json]``
reads a recording (``docs/recordings.md``: JSON lines, or a directory of
numbered files) and feeds what the daemon would have seen to the same decision
core, with the clock taken from the recording (``t``):

* ``/events/json`` answers → threshold events (each event id once, as the
  daemon's event stream delivers them);
* ``/activeflows/{agent}/demon_<policy>/json`` answers → that policy's top-N;
* ``/demon/portmap/json`` answers → the port map;
* a ``Tick`` every second of recorded time between exchanges.

The controller is simulated: every install and remove succeeds at once. The
switches' roles come from the fabric description (``docs/fabric.md``), since a
recording holds no controller answers. Output: the decisions in order
(created, active, released, removed, waiting, refused… with their causes),
then one line per tap.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, Callable, Iterable, Mapping

from demon import core
from demon.core import Context
from demon.model import (Command, ControllerStatus, HistoryEntry, InstallMirror, InstallResult,
                         Reconcile, Record, RemoveMirror, RemoveResult, State, Tap, Tick)
from demon.runtime import engine_policies, load_config, threshold_event, thresholds_of, top_flows
from demon.topology import Topology
from sflow.client import ActiveFlow, SFlowRTError, parse_event, parse_port_map_entry

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


def load_fabric(path: str | Path) -> list[dict[str, Any]]:
    """The ``switches`` of a fabric description, shaped like ``list_switches``."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except OSError as exc:
        raise ReplayError(f"cannot read the fabric description {path}: {exc}") from None
    except ValueError as exc:
        raise ReplayError(f"fabric description {path} is not JSON: {exc}") from None
    switches = data.get("switches") if isinstance(data, dict) else None
    if not isinstance(switches, list) or not switches:
        raise ReplayError(f"fabric description {path}: 'switches' must be a non-empty list "
                          "(see docs/fabric.md)")
    for n, sw in enumerate(switches):
        if not isinstance(sw, dict) or not isinstance(sw.get("dpid"), int):
            raise ReplayError(f"fabric description {path}: switches[{n}].dpid must be an "
                              "integer")
    return switches


def default_fabric_path(recording: Path) -> Path:
    """Where a recording's fabric is looked for when ``--fabric`` is not given."""
    if recording.is_dir():
        return recording / "fabric.json"
    return recording.with_name(recording.name.split(".")[0] + ".fabric.json")


class Backtest:
    """The core driven by recorded answers; feed exchanges in order, then ``finish``."""

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

    def advance(self, now: float) -> None:
        """Run the once-a-second sweep up to ``now``."""
        while self.next_tick <= now:
            self._step(Tick(), self.next_tick)
            self.next_tick += TICK
        self.result.end = max(self.result.end, now)

    def feed(self, exchange: Any) -> None:
        """One recorded exchange (an ``sflow.recorder.Exchange``)."""
        self.advance(exchange.t)
        if exchange.error is not None or exchange.status != 200 or exchange.method != "GET":
            return
        path, body, now = exchange.path, exchange.body, exchange.t
        where = f"recorded {path} at t={now}"
        try:
            if path == "/events/json":
                events = sorted((parse_event(obj) for obj in _array(body, where)),
                                key=lambda e: e.event_id)
                for event in events:
                    if event.event_id <= self.cursor:
                        continue
                    self.cursor = event.event_id
                    self.result.events += 1
                    inp = threshold_event(event, self.by_threshold)
                    if inp is not None:
                        self._step(inp, now)
            elif path.startswith("/activeflows/"):
                parts = path.strip("/").split("/")
                policy = self.by_flow.get(parts[2]) if len(parts) == 4 else None
                if policy is not None:
                    self.result.polls += 1
                    flows = [ActiveFlow(key=str(r.get("key", "")), value=float(r["value"]),
                                        agent=str(r.get("agent", "")),
                                        data_source=str(r.get("dataSource", "")), keys=[])
                             for r in _array(body, where)]
                    self._step(top_flows(policy, flows), now)
            elif path == "/demon/portmap/json":
                self.port_map = [parse_port_map_entry(obj) for obj in _array(body, where)]
                self.ctx = Context(policies=self.ctx.policies,
                                   topology=Topology(self.port_map, self.switches),
                                   limits=self.ctx.limits)
        except (SFlowRTError, KeyError, TypeError, ValueError) as exc:
            raise ReplayError(f"{where}: {exc}") from None


def _array(body: Any, where: str) -> list[Any]:
    if not isinstance(body, list):
        raise ReplayError(f"{where}: body is not an array")
    return body


def backtest(policies_dir: str | Path, recording: str | Path,
             fabric: str | Path | None = None,
             progress: Callable[..., Iterable[Any]] | None = None) -> ReplayResult:
    """Replay ``recording`` through the policies of ``policies_dir``; ``progress``
    wraps the loop over exchanges (``sflow.cliopts.progress``: a bar on a terminal)."""
    from demon.policy import PolicyError
    from sflow.recorder import load_recording

    recording = Path(recording)
    try:
        policies, limits = load_config(policies_dir)
    except PolicyError as exc:
        raise ReplayError(f"bad policy set in {policies_dir}:\n{exc}") from None
    fabric_path = Path(fabric) if fabric else default_fabric_path(recording)
    if not fabric and not fabric_path.exists():
        raise ReplayError(f"a replay needs the switches' roles: pass --fabric FILE (docs/"
                          f"fabric.md; `python -m topo.fabricgen` prints the lab's) or put "
                          f"it at {fabric_path}")
    switches = load_fabric(fabric_path)
    try:
        exchanges = load_recording(recording)
    except (OSError, ValueError) as exc:
        raise ReplayError(f"cannot read the recording {recording}: {exc}") from None
    if not exchanges:
        raise ReplayError(f"recording {recording} holds no exchanges")
    exchanges.sort(key=lambda e: e.t)  # stable: same-time exchanges keep their order
    run = Backtest(policies, limits, switches, exchanges[0].t)
    loop = progress(exchanges, total=len(exchanges), desc="backtest", unit="exchange") \
        if progress else exchanges
    for exchange in loop:
        run.feed(exchange)
    return run.result


# -- output ------------------------------------------------------------------------


def tap_summary(result: ReplayResult, tap: Tap) -> dict[str, Any]:
    return {"tap_id": tap.tap_id, "policy": tap.policy, "flow_key": tap.flow_key,
            "dpid": tap.dpid, "in_port": tap.in_port, "copy_port": tap.copy_port,
            "state": tap.state, "created": round(tap.created_at - result.start, 3),
            "ended": None if tap.ended_at is None else round(tap.ended_at - result.start, 3),
            "extended": result.extensions.get(tap.tap_id, 0), "reason": tap.reason,
            "trigger": tap.trigger}


def write_text(result: ReplayResult, out: IO[str]) -> None:
    print(f"replayed {result.end - result.start:.1f}s: {result.events} event(s), "
          f"{result.polls} top-N poll(s)", file=out)
    for entry in result.timeline:
        detail = dict(entry.detail)
        cause = detail.pop("cause", "")
        print(f"+{entry.at - result.start:7.1f}s  {entry.kind:<14} {entry.tap_id or '-':<16} "
              f"{cause}", file=out)
    taps = sorted(result.taps.values(), key=lambda t: (t.created_at, t.tap_id))
    print(f"{len(taps)} tap(s):", file=out)
    for tap in taps:
        s = tap_summary(result, tap)
        ended = "still active at the end" if s["ended"] is None else f"ended +{s['ended']}s"
        print(f"  {tap.tap_id:<16} {tap.policy:<16} {tap.flow_key:<40} dpid {tap.dpid} port "
              f"{tap.in_port} -> {tap.copy_port}  +{s['created']}s, extended {s['extended']}x, "
              f"{ended}, {tap.state}{': ' + tap.reason if tap.reason else ''}", file=out)


def write_json(result: ReplayResult, out: IO[str]) -> None:
    for entry in result.timeline:
        print(json.dumps({"t": round(entry.at - result.start, 3), "tap_id": entry.tap_id,
                          "kind": entry.kind, "detail": dict(entry.detail)}, default=str),
              file=out)
    for tap in sorted(result.taps.values(), key=lambda t: (t.created_at, t.tap_id)):
        print(json.dumps({"tap": tap_summary(result, tap)}, default=str), file=out)


def replay_main(policies_dir: str | Path, recording: str | Path, *, as_json: bool = False,
                fabric: str | Path | None = None, out: IO[str],
                progress: Callable[..., Iterable[Any]] | None = None) -> int:
    result = backtest(policies_dir, recording, fabric, progress)
    (write_json if as_json else write_text)(result, out)
    return 0
