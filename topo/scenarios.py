"""Traffic scenarios the lab runs against a started :class:`topo.session.LabSession`.

A scenario is a list of flows (elephants at a set rate, with a fixed client port
so their 5-tuple is known in advance) plus background mice. Running it notes
each flow's start and end on the session's timeline, then waits until every tap
the daemon took has been released (or a timeout).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from topo.hostproc import HostProc, traffic
from topo.seed import host_ip
from topo.session import LabSession


@dataclass(frozen=True)
class Flow:
    src: int  # host number
    dst: int
    rate: str = "200M"
    seconds: float = 10
    cport: int = 51792
    port: int = 5201
    udp: bool = False

    @property
    def key(self) -> str:
        """The flow key as the lab policy writes it: ipsource,ipdestination,sport,dport."""
        return f"{host_ip(self.src)},{host_ip(self.dst)},{self.cport},{self.port}"

    @property
    def label(self) -> str:
        return f"h{self.src}->h{self.dst} {'UDP' if self.udp else 'TCP'} {self.rate}bit/s :{self.cport}->:{self.port}"


@dataclass(frozen=True)
class Mice:
    src: int
    dst: int
    flows: int = 30
    packets: int = 20
    pps: float = 100


@dataclass(frozen=True)
class Scenario:
    name: str
    description: str
    flows: tuple[Flow, ...]
    mice: tuple[Mice, ...] = ()


def scenario(name: str, rate: str = "200M", seconds: float = 10) -> Scenario:
    """The lab's named scenarios (``demon-lab --scenario``)."""
    background = (Mice(3, 4), Mice(8, 9))
    if name == "elephant":
        return Scenario(name, "one TCP elephant h1->h2 among mice on both filter switches",
                        (Flow(1, 2, rate, seconds),), background)
    if name == "two-elephants":
        return Scenario(name, "two concurrent TCP elephants, one per filter switch",
                        (Flow(1, 2, rate, seconds, cport=51792), Flow(6, 7, rate, seconds, cport=51793)),
                        background)
    if name == "over-cap":
        return Scenario(name, "three TCP elephants on s1, more than the policy's cap of 2",
                        (Flow(1, 2, rate, seconds, cport=51792, port=5201),
                         Flow(3, 4, rate, seconds, cport=51793, port=5202),
                         Flow(5, 2, rate, seconds, cport=51794, port=5203)))
    if name == "mice":
        return Scenario(name, "mice only: nothing may be tapped", (), background)
    raise ValueError(f"scenario: unknown {name!r} (elephant, two-elephants, over-cap, mice)")


SCENARIOS = ("elephant", "two-elephants", "over-cap", "mice")


@dataclass
class FlowRun:
    flow: Flow
    server: HostProc
    client: HostProc | None = None
    started_at: float | None = None
    ended_at: float | None = None
    client_report: dict[str, Any] = field(default_factory=dict)
    server_report: dict[str, Any] = field(default_factory=dict)


def run_scenario(session: LabSession, sc: Scenario, settle_timeout: float = 30) -> list[FlowRun]:
    """Drive ``sc``'s traffic, then wait for every tap to end; returns the flows' reports."""
    lab = session.lab
    assert lab is not None, "session not started"
    runs: list[FlowRun] = []
    mice: list[HostProc] = []
    try:
        for f in sc.flows:
            runs.append(FlowRun(f, traffic(lab.host(f"h{f.dst}"), "serve", "--port", str(f.port))))
        time.sleep(0.5)  # one-shot iperf3 servers listening
        for m in sc.mice:
            mice.append(traffic(lab.host(f"h{m.src}"), "mice", "--dst", host_ip(m.dst), "--flows",
                                str(m.flows), "--packets", str(m.packets), "--pps", str(m.pps)))
        for r in runs:
            f = r.flow
            args = ["elephant", "--dst", host_ip(f.dst), "--port", str(f.port), "--rate", f.rate,
                    "--time", str(f.seconds), "--cport", str(f.cport)] + (["--udp"] if f.udp else [])
            r.client = traffic(lab.host(f"h{f.src}"), *args)
            r.started_at = time.time()
            session.note("flow start", None, at=r.started_at, flow=f.label, flow_key=f.key)

        def clients_done(s: LabSession) -> bool:
            for r in runs:
                if r.ended_at is None and r.client is not None and r.client.proc.poll() is not None:
                    r.ended_at = time.time()
                    s.note("flow end", None, at=r.ended_at, flow=r.flow.label, flow_key=r.flow.key)
            return all(r.ended_at is not None for r in runs)

        longest = max((f.seconds for f in sc.flows), default=0)
        session.wait(clients_done, longest + 20)
        for m in mice:
            m.proc.wait(30)
        for r in runs:
            if r.client is not None:
                lines = r.client.json_lines()
                r.client_report = lines[-1] if lines else {}
            r.server.proc.wait(10)
            lines = r.server.json_lines()
            r.server_report = lines[-1] if lines else {}
        # Taps end some seconds after their flow: the policy's duration, then the remove.
        session.wait(lambda s: bool(s.taps) and not s.live_taps() or (not sc.flows and not s.live_taps()),
                     settle_timeout)
    finally:
        for hp in [*(r.client for r in runs if r.client), *(r.server for r in runs), *mice]:
            hp.stop()
    return runs
