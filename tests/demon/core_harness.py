"""Drive the pure decision core in tests: the seed fabric, policies, an injected clock.

``Harness`` keeps the state and the time, feeds inputs and, when ``auto`` is on,
plays an obedient controller (every install/remove answered OK), keeping the
mirrors it "holds" in ``mirrors`` so caps can be checked against what a switch
would hold, not only against the core's own bookkeeping.
"""

from __future__ import annotations

from typing import Any, Iterable

from demon.core import Context, step
from demon.model import (Command, ControllerStatus, InstallMirror, InstallResult, Record,
                         RemoveMirror, RemoveResult, State, ThresholdEvent, Tick)
from demon.policy import GlobalLimits, Policy, parse_policy
from demon.topology import Topology

AGENT = "10.9.9.9"
T0 = 1_700_000_000.0
TCP_KEYS = "ipsource,ipdestination,tcpsourceport,tcpdestinationport"


def seed_switches() -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = [
        {"dpid": d, "name": f"s{d}", "role": "filter", "host_ports": [1, 2, 3, 4, 5],
         "uplinks": [6, 7, 8, 9, 10], "capture_port": None,
         "ports": [{"port_no": n, "name": f"s{d}-eth{n}"} for n in range(1, 11)]}
        for d in (1, 2)]
    out.append({"dpid": 3, "name": "s3", "role": "aggregation", "host_ports": [],
                "uplinks": list(range(1, 11)), "capture_port": 11,
                "ports": [{"port_no": n, "name": f"s3-eth{n}"} for n in range(1, 12)]})
    return out


def seed_port_map() -> list[dict[str, Any]]:
    """ifIndex = 100 * dpid + port, one agent for all three bridges (as OVS in Mininet)."""
    return [{"agent": AGENT, "ifIndex": 100 * d + p, "dpid": d, "ofPort": p, "name": f"s{d}-eth{p}"}
            for d, n in ((1, 10), (2, 10), (3, 11)) for p in range(1, n + 1)]


def seed_topology() -> Topology:
    return Topology(seed_port_map(), seed_switches())


def policy(**fields: Any) -> Policy:
    data = {"name": "big", "kind": "elephant", "keys": TCP_KEYS, "threshold": "50Mbps",
            "duration": "30s", "max_duration": "300s", "holddown": "60s", **fields}
    data = {k: v for k, v in data.items() if v is not None}  # None: leave the field out
    pol, errors = parse_policy(data, "test.yaml")
    assert pol is not None, errors
    return pol


def flow(n: int, sport: int = 40000) -> str:
    """A distinct TCP flow key: 10.1.<n/250>.<n%250+1> → 10.0.0.2, port sport+n → 5201."""
    return f"10.1.{n // 250}.{n % 250 + 1},10.0.0.2,{sport + n},5201"


class Harness:
    def __init__(self, policies: Iterable[Policy] = (), limits: GlobalLimits | None = None,
                 topology: Topology | None = None, controller_up: bool = True,
                 auto: bool = True) -> None:
        self.ctx = Context(policies={p.name: p for p in policies},
                           topology=topology or seed_topology(),
                           limits=limits or GlobalLimits())
        self.state = State(controller_up=controller_up)
        self.now = T0
        self.auto = auto
        self.commands: list[Command] = []   # everything ever returned
        self.mirrors: dict[str, InstallMirror] = {}  # what the fake switch holds
        self.event_seq = 0

    # -- feeding ------------------------------------------------------------------------

    def feed(self, inp: Any) -> list[Command]:
        self.state, out = step(self.state, self.ctx, inp, self.now)
        self.commands += out
        if self.auto:
            for cmd in out:
                self._obey(cmd)
        return out

    def _obey(self, cmd: Command) -> None:
        if isinstance(cmd, InstallMirror):
            self.mirrors[cmd.tap.tap_id] = cmd
            self.feed(InstallResult(cmd.tap.tap_id, ok=True, cookie=0xDE30_0000_0000_0001))
        elif isinstance(cmd, RemoveMirror):
            held = self.mirrors.pop(cmd.tap_id, None)
            self.feed(RemoveResult(cmd.tap_id, ok=True, packets=10 if held else 0,
                                   bytes=1000 if held else 0))

    def at(self, seconds: float) -> "Harness":
        self.now = T0 + seconds
        return self

    def tick(self, seconds: float | None = None) -> list[Command]:
        if seconds is not None:
            self.at(seconds)
        return self.feed(Tick())

    def event(self, flow_key: str, policy: str = "big", mbps: float = 100.0, port: int = 1,
              dpid: int = 1, agent: str = AGENT) -> list[Command]:
        self.event_seq += 1
        return self.feed(ThresholdEvent(
            event_id=self.event_seq, threshold_id=f"demon_{policy}", policy=policy, agent=agent,
            data_source=str(100 * dpid + port), flow_key=flow_key, value=mbps * 1e6 / 8,
            threshold=50e6 / 8, timestamp=self.now))

    def controller(self, up: bool) -> list[Command]:
        return self.feed(ControllerStatus(up=up))

    # -- looking ----------------------------------------------------------------------------

    def live(self, policy: str | None = None) -> list:
        return [t for t in self.state.taps.values()
                if t.live and (policy is None or t.policy == policy)]

    def only_tap(self):
        taps = list(self.state.taps.values())
        assert len(taps) == 1, taps
        return taps[0]

    def records(self, kind: str | None = None) -> list:
        return [c.entry for c in self.commands
                if isinstance(c, Record) and (kind is None or c.entry.kind == kind)]


def installs(commands: Iterable[Command]) -> list[InstallMirror]:
    return [c for c in commands if isinstance(c, InstallMirror)]


def removes(commands: Iterable[Command]) -> list[RemoveMirror]:
    return [c for c in commands if isinstance(c, RemoveMirror)]
