"""The POX adapter (``pox_tap``) against a fake connection: POX's own message classes, packed
and unpacked as on the wire, go in and out; the shared fake flow table (``fakeoftable``)
does what Open vSwitch would. What the book does is ``test_book_lifecycle``'s; here: the
translation both ways and the replies paired by xid. Needs the POX checkout."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from demon.controller.book import MirrorBook
from demon.controller.changes import FlowMod, PortNoFlood
from demon.controller.fabric import Entry, intended_entries, parse_fabric
from demon.controller.service import TapService
from demon.controller.spec import BASELINE_COOKIE
from demon.rpc.protocol import RpcError
from tests.demon.controller.bookharness import FLOW, HOST, packet
from tests.demon.controller.fakeoftable import FakeFlowTable, Refused
from tests.demon.controller.test_fabric_roles_static import SEED

pytestmark = pytest.mark.pox
REASONS = {"idle_timeout": 0, "hard_timeout": 1, "delete": 2}


class FakeConnection:
    """A switch connection as POX hands it to the component; ``send`` plays the switch."""

    def __init__(self, dpid: int, pox: Any, events: Any) -> None:
        self.dpid = dpid
        self.pox = pox
        self.events = events
        self.flows = FakeFlowTable("1.0")
        self.silent = False

    def up(self) -> Any:
        of = self.pox.of
        ports = [of.ofp_phy_port(port_no=n, name=f"s{self.dpid}-eth{n}", hw_addr=f"00:00:00:00:00:{n:02x}")
                 for n in sorted(self.flows.ports)]
        return SimpleNamespace(dpid=self.dpid, connection=self, ofp=SimpleNamespace(ports=ports))

    def send(self, msg: Any) -> None:
        if self.silent:
            return
        of, tap = self.pox.of, self.pox
        if isinstance(msg, of.ofp_flow_mod):
            wire = of.ofp_flow_mod()
            wire.unpack(msg.pack())
            entry = Entry(wire.priority, tap.neutral_match(wire.match), tap.neutral_actions(wire.actions),
                          wire.cookie, wire.idle_timeout, wire.hard_timeout, bool(wire.flags & of.OFPFF_SEND_FLOW_REM))
            command = {of.OFPFC_ADD: "add", of.OFPFC_DELETE_STRICT: "delete_strict"}[wire.command]
            try:
                self.flows.apply([FlowMod(command, entry)])
            except Refused as exc:
                self.events._handle_ErrorIn(SimpleNamespace(xid=msg.xid, dpid=self.dpid, should_log=True,
                                                            ofp=SimpleNamespace(type=exc.type, code=exc.code)))
            self.report_removed()
        elif isinstance(msg, of.ofp_port_mod):
            assert msg.config == msg.mask == of.OFPPC_NO_FLOOD
            self.flows.apply([PortNoFlood(msg.port_no)])
        elif isinstance(msg, of.ofp_barrier_request):
            self.events._handle_BarrierIn(SimpleNamespace(xid=msg.xid))
        elif isinstance(msg.body, of.ofp_flow_stats_request):
            stats = [of.ofp_flow_stats(match=tap.ofp_match(dict(e.match)), actions=tap.ofp_actions(e.actions),
                                       priority=e.priority, cookie=e.cookie, idle_timeout=e.idle_timeout,
                                       hard_timeout=e.hard_timeout, packet_count=pk, byte_count=by)
                     for e, pk, by, _ in self.flows.rows()]
            self.events._handle_FlowStatsReceived(SimpleNamespace(ofp=[SimpleNamespace(xid=msg.xid)], stats=stats))
        else:
            self.events._handle_PortStatsReceived(SimpleNamespace(ofp=[SimpleNamespace(xid=msg.xid)], stats=[]))

    def report_removed(self) -> None:
        of, tap = self.pox.of, self.pox
        for r in self.flows.take_removed():
            wire = of.ofp_flow_removed(match=tap.ofp_match(dict(r.match)), cookie=r.cookie, priority=r.priority,
                                       reason=REASONS[r.reason], packet_count=r.packets, byte_count=r.bytes,
                                       duration_sec=1)
            parsed = of.ofp_flow_removed()
            parsed.unpack(wire.pack())
            self.events._handle_FlowRemoved(SimpleNamespace(connection=self, dpid=self.dpid, ofp=parsed))


@pytest.fixture
def rig(pox_tap: Any, tmp_path: Path) -> Any:
    service = TapService(MirrorBook(parse_fabric(SEED), "1.0"), "pox", state_file=tmp_path / "pox-taps.json",
                         collect_timeout=0.0)
    events = pox_tap.PoxEvents(service, 0.5, lambda fn, *args: fn(*args))  # POX's loop runs it at once
    published: list[tuple[str, dict]] = []
    service.publish = lambda event, params: published.append((event, params))
    conns = {d: FakeConnection(d, pox_tap, events) for d in (1, 2, 3)}
    for conn in conns.values():
        events._handle_ConnectionUp(conn.up())
    service.pump()
    return SimpleNamespace(service=service, events=events, conns=conns, published=published,
                           call=lambda method, **params: service.call(method, params))


def test_connection_up_installs_the_baseline_and_no_flood(rig: Any) -> None:
    s1 = rig.conns[1].flows
    assert sorted(e.key() for e in s1.entries(BASELINE_COOKIE)) == sorted(
        e.key() for e in intended_entries(parse_fabric(SEED), 1, "1.0"))
    assert s1.no_flood == {6, 7, 8, 9, 10} and rig.conns[3].flows.no_flood == {11}
    assert [(s["dpid"], s["ports"][0]["hw_addr"]) for s in rig.call("list_switches")][:1] == [(1, "00:00:00:00:00:01")]


def test_merged_mirrors_round_trip_through_pox_messages(rig: Any) -> None:
    s1 = rig.conns[1].flows
    host = rig.call("install_mirror", tap_id="host", dpid=1, match=HOST, copy_port=6, idle_timeout=0)
    rig.call("install_mirror", tap_id="flow", dpid=1, match=FLOW, copy_port=6, vlan_tag=10, idle_timeout=0)
    assert sorted((e.priority, e.actions) for e in s1.mirrors().values()) == [
        (40000, ("NORMAL", "output:6")),
        (40001, ("NORMAL", "output:6", "push_vlan:0x8100", "set_field:vlan_vid=10", "output:6"))]
    assert s1.send(packet(), 4) == (["NORMAL"], [(6, None), (6, 10)])
    assert {r["tap_id"]: r["packets"] for r in rig.call("list_mirrors", dpid=1)} == {"host": 4, "flow": 4}
    assert rig.call("remove_mirror", tap_id="host") == {"tap_id": "host", "removed": True, "packets": 4,
                                                        "bytes": 400}
    assert [e.actions for e in s1.mirrors().values()] == [("NORMAL", "push_vlan:0x8100", "set_field:vlan_vid=10",
                                                          "output:6")]
    assert [(p["tap_id"], p["cookie"]) for e, p in rig.published if e == "mirror_removed"] == [
        ("host", host["cookie"])]


def test_flow_removed_and_errors(rig: Any) -> None:
    conn = rig.conns[1]
    with pytest.raises(RpcError) as info:
        rig.call("install_mirror", tap_id="bad", dpid=1, match=FLOW, copy_port=99)
    assert info.value.code == -32004 and "type=2 code=4" in info.value.message
    with pytest.raises(RpcError) as info:
        rig.call("install_mirror", tap_id="v6", dpid=1, match={"ipv6_src": "fc00::1"}, copy_port=6)
    assert info.value.code == -32602 and "OpenFlow 1.3" in info.value.message
    rig.call("install_mirror", tap_id="t", dpid=1, match=FLOW, copy_port=6, idle_timeout=2)
    conn.flows.send(packet(), 3)
    conn.flows.advance(5)
    conn.report_removed()
    rig.service.pump()
    (event,) = [p for e, p in rig.published if e == "mirror_removed"]
    assert (event["tap_id"], event["reason"], event["packets"]) == ("t", "idle_timeout", 3)
    conn.silent = True
    with pytest.raises(RpcError) as info:
        rig.call("flow_stats", dpid=1)
    assert info.value.code == -32005


def test_connection_down_is_switch_down(rig: Any) -> None:
    rig.events._handle_ConnectionDown(SimpleNamespace(connection=rig.conns[2], dpid=2))
    rig.service.pump()
    assert ("switch_down", {"dpid": 2}) in rig.published
    with pytest.raises(RpcError) as info:
        rig.call("flow_stats", dpid=2)
    assert info.value.code == -32002
