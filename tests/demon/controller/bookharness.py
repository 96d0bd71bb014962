"""The controller's service and book on fake switches (no root, no OVS, no os-ken or POX).

Each switch of the seed fabric is a :class:`FakeSwitchIO` over a
:class:`~tests.demon.controller.fakeoftable.FakeFlowTable` of the version under
test. The clock is the harness's: ``advance`` moves it for the book and the
switches, whose timeouts then report FlowRemoved like a real switch would.
Everything runs on the test's thread (``TapService.pump``), so each step is exact.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from demon.controller.book import MirrorBook
from demon.controller.changes import Change, Row
from demon.controller.fabric import StaticConfig, parse_fabric
from demon.controller.service import TapService
from demon.rpc import protocol as p
from demon.rpc.protocol import RpcError
from tests.demon.controller.fakeoftable import FakeFlowTable, Refused
from tests.demon.controller.test_fabric_roles_static import SEED

START = 1_000_000.0
FLOW = {"ipv4_src": "10.0.0.1", "ipv4_dst": "10.0.0.2", "tcp_src": 40000, "tcp_dst": 80}
HOST = {"ipv4_src": "10.0.0.1"}


def packet(src: str = "10.0.0.1", dst: str = "10.0.0.2", sport: int = 40000, dport: int = 80,
           in_port: int = 1) -> dict[str, Any]:
    """A TCP packet as the switch's match sees it."""
    return {"in_port": in_port, "eth_type": 0x0800, "ip_proto": 6, "ipv4_src": src, "ipv4_dst": dst,
            "tcp_src": sport, "tcp_dst": dport}


class FakeSwitchIO:
    """A connected switch as the service sees it, over a fake flow table."""

    def __init__(self, harness: "Harness", dpid: int, flows: FakeFlowTable) -> None:
        self.harness = harness
        self.dpid = dpid
        self.flows = flows
        self.stats_fail = False  # the switch stops answering stats requests
        self.batches: list[list[Change]] = []

    def apply(self, changes: list[Change]) -> None:
        self.batches.append(list(changes))
        try:
            self.flows.apply(changes, self.harness.now)
        except Refused as exc:
            raise RpcError(p.SWITCH_REJECTED, f"switch {self.dpid} rejected the flow changes: {exc}") from None
        finally:  # FlowRemoved of deleted entries follow at once, as Open vSwitch sends them
            self.harness.deliver(self)

    def table(self) -> list[Row]:
        if self.stats_fail:
            raise RpcError(p.SWITCH_TIMEOUT, f"switch {self.dpid}: no reply to a flow-stats request within 1 s")
        return self.flows.rows()

    def port_stats(self) -> list[dict[str, Any]]:
        return []

    def ports(self) -> dict[int, dict[str, Any]]:
        return {n: {"port_no": n, "name": f"s{self.dpid}-eth{n}", "hw_addr": f"00:00:00:00:0{self.dpid}:{n:02x}",
                    "up": True} for n in sorted(self.flows.ports)}


class Harness:
    def __init__(self, openflow: str, tmp_path: Path | None = None, static: StaticConfig | None = None,
                 connect: bool = True) -> None:
        self.openflow = openflow
        self.now = START
        self.fabric = parse_fabric(SEED)
        self.static = static
        self.state_file = tmp_path / "taps.json" if tmp_path is not None else None
        self.events: list[tuple[str, dict[str, Any]]] = []
        self.tables = {d: FakeFlowTable(openflow, now=self.now) for d in (1, 2, 3)}
        self.start()
        if connect:
            for dpid in self.tables:
                self.connect(dpid)

    def start(self) -> TapService:
        """A (re)started component over the same switches (and state file)."""
        self.book = MirrorBook(self.fabric, self.openflow, self.static)
        self.service = TapService(self.book, "fake", state_file=self.state_file, collect_timeout=0.0,
                                  clock=lambda: self.now)
        self.service.publish = lambda event, params: self.events.append((event, params))
        self.ios: dict[int, FakeSwitchIO] = {}
        return self.service

    # ------------------------------------------------------------ switches
    def connect(self, dpid: int) -> FakeSwitchIO:
        io = self.ios[dpid] = FakeSwitchIO(self, dpid, self.tables[dpid])
        self.service.switch_up(io)
        self.service.pump()
        return io

    def disconnect(self, dpid: int) -> None:
        self.service.switch_down(self.ios[dpid])
        self.service.pump()

    def deliver(self, io: FakeSwitchIO) -> None:
        for removed in io.flows.take_removed():
            self.service.flow_removed(io, removed)

    def advance(self, seconds: float) -> None:
        """Time passes: switch timeouts fire and are reported; the book ticks."""
        self.now += seconds
        for dpid, table in self.tables.items():
            table.advance(self.now)
            if dpid in self.ios and self.book.switches.get(dpid) and self.book.switches[dpid].connected:
                self.deliver(self.ios[dpid])
            else:
                table.take_removed()  # nobody listens
        self.service._work.put((self.service._on_tick, ()))
        self.service.pump()

    # ---------------------------------------------------------------- calls
    def call(self, method: str, **params: Any) -> Any:
        result = self.service.call(method, params)
        self.service.pump()
        return result

    def install(self, tap_id: str, match: dict[str, Any] | None = None, dpid: int = 1, copy_port: int = 6,
                **params: Any) -> dict[str, Any]:
        return self.call("install_mirror", tap_id=tap_id, dpid=dpid, match=match or FLOW, copy_port=copy_port,
                         **params)

    def removed(self) -> list[dict[str, Any]]:
        """mirror_removed events so far (and forget them)."""
        out = [params for event, params in self.events if event == "mirror_removed"]
        self.events = [e for e in self.events if e[0] != "mirror_removed"]
        return out

    def mirrors(self, dpid: int = 1) -> dict[Any, Any]:
        return self.tables[dpid].mirrors()

    def flow_mods(self) -> int:
        return sum(self.service.flow_mods_total.values())
