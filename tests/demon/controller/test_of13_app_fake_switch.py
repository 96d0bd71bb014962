"""The os-ken adapter (``osken_app``) against a fake datapath: os-ken's own message classes
go in and out, the shared fake flow table (``fakeoftable``) does what Open vSwitch would.
What the book does with them is ``test_book_lifecycle``'s; here: the translation both ways."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from os_ken.ofproto import ofproto_v1_3, ofproto_v1_3_parser

from demon.controller import of13
from demon.controller.book import MirrorBook
from demon.controller.changes import FlowMod
from demon.controller.fabric import intended_entries, parse_fabric
from demon.controller.osken_app import OsKenSwitch, actions_of, removed_of, to_parser_flowmod
from demon.controller.service import TapService
from demon.controller.spec import BASELINE_COOKIE, STATIC_COOKIE
from demon.rpc.protocol import RpcError
from tests.demon.controller.bookharness import FLOW, packet
from tests.demon.controller.fakeoftable import FakeFlowTable, Refused
from tests.demon.controller.test_fabric_roles_static import SEED

OFP = ofproto_v1_3
REASONS = {"idle_timeout": OFP.OFPRR_IDLE_TIMEOUT, "hard_timeout": OFP.OFPRR_HARD_TIMEOUT,
           "delete": OFP.OFPRR_DELETE}


class FakeDatapath:
    """Just enough of an os-ken Datapath, with the fake table behind it."""

    ofproto = ofproto_v1_3
    ofproto_parser = ofproto_v1_3_parser

    def __init__(self, dpid: int, service: TapService) -> None:
        self.id = dpid
        self.xid = 0
        self.flows = FakeFlowTable("1.3")
        self.service = service
        self.switch: OsKenSwitch | None = None

    def set_xid(self, msg: Any) -> int:
        self.xid += 1
        msg.set_xid(self.xid)
        return self.xid

    def send_msg(self, msg: Any) -> bool:
        assert self.switch is not None
        replies = self.switch.replies
        name = type(msg).__name__
        if name == "OFPFlowMod":
            command = {OFP.OFPFC_ADD: "add", OFP.OFPFC_DELETE_STRICT: "delete_strict"}[msg.command]
            try:
                self.flows.apply([FlowMod(command, entry_of(msg))])
            except Refused as exc:
                replies.error(msg.xid, exc.type, exc.code)
            for removed in self.flows.take_removed():  # as an os-ken FlowRemoved, then back
                self.service.flow_removed(self.switch, removed_of(flow_removed_msg(removed)))
        elif name == "OFPBarrierRequest":
            replies.reply(msg.xid)
        elif name == "OFPFlowStatsRequest":
            replies.reply(msg.xid, [stats_of(self, e, pk, by) for e, pk, by, _ in self.flows.rows()])
        elif name == "OFPPortDescStatsRequest":
            replies.reply(msg.xid, [SimpleNamespace(port_no=n, name=f"s{self.id}-eth{n}".encode(),
                                                    hw_addr="00:00:00:00:00:01", config=0, state=0)
                                    for n in sorted(self.flows.ports)])
        else:
            raise AssertionError(f"unexpected message {name}")
        return True


def entry_of(mod: Any) -> Any:
    return of13.stats_to_entry({"table_id": mod.table_id, "priority": mod.priority, "cookie": mod.cookie,
                                "match": list(mod.match.items()), "actions": actions_of(mod.instructions),
                                "idle_timeout": mod.idle_timeout, "hard_timeout": mod.hard_timeout,
                                "flags": mod.flags})


def stats_of(dp: FakeDatapath, entry: Any, packets: int, nbytes: int) -> Any:
    mod = to_parser_flowmod(dp, of13.flow_mod(entry))
    return SimpleNamespace(table_id=mod.table_id, duration_sec=1, duration_nsec=0, priority=mod.priority,
                           idle_timeout=mod.idle_timeout, hard_timeout=mod.hard_timeout, flags=mod.flags,
                           cookie=mod.cookie, packet_count=packets, byte_count=nbytes, match=mod.match,
                           instructions=mod.instructions)


def flow_removed_msg(removed: Any) -> Any:
    return SimpleNamespace(cookie=removed.cookie, priority=removed.priority, reason=REASONS[removed.reason],
                           table_id=removed.table_id, match=ofproto_v1_3_parser.OFPMatch(**of13.match_to_oxm(removed.match)),
                           packet_count=removed.packets, byte_count=removed.bytes, duration_sec=2, duration_nsec=5e8)


@pytest.fixture
def service(tmp_path: Path) -> TapService:
    svc = TapService(MirrorBook(parse_fabric(SEED), "1.3"), "os-ken", state_file=tmp_path / "osken-taps.json",
                     collect_timeout=0.0)
    svc.events = []  # type: ignore[attr-defined]
    svc.publish = lambda event, params: svc.events.append((event, params))  # type: ignore[attr-defined]
    return svc


def connect(service: TapService, dpid: int) -> FakeDatapath:
    dp = FakeDatapath(dpid, service)
    dp.switch = OsKenSwitch(dp, 1.0)
    service.switch_up(dp.switch)
    service.pump()
    return dp


def test_baseline_and_static_entries_survive_the_translation(service: TapService) -> None:
    dp = connect(service, 1)
    assert sorted(e.key() for e in dp.flows.entries(BASELINE_COOKIE)) == sorted(
        e.key() for e in intended_entries(parse_fabric(SEED), 1, "1.3"))
    assert [s["ports"][0]["name"] for s in service.call("list_switches", {})] == ["s1-eth1"]
    assert service.call("set_static", {"config": {"switches": {"1": {"pairs": [[3, 4]]}}}}) == {"switches": 1,
                                                                                               "entries": 2}
    assert {e.match["in_port"]: e.actions for e in dp.flows.entries(STATIC_COOKIE)} == {3: ("output:4",),
                                                                                       4: ("output:3",)}


def test_a_tagged_mirror_round_trips_through_os_ken_messages(service: TapService) -> None:
    dp = connect(service, 1)
    tap = service.call("install_mirror", {"tap_id": "t1", "dpid": 1, "match": FLOW, "copy_port": 7,
                                          "vlan_tag": 9})
    (entry,) = dp.flows.mirrors().values()
    assert entry.actions == ("push_vlan:0x8100", "set_field:vlan_vid=9", "output:7", "pop_vlan", "goto_table:1")
    assert dp.flows.send(packet(), 3) == (["goto_table:1"], [(7, 9)])
    (listed,) = service.call("list_mirrors", {"dpid": 1})  # flow stats read back through os-ken's classes
    assert (listed["tap_id"], listed["vlan_tag"], listed["packets"]) == ("t1", 9, 3)
    stats = service.call("flow_stats", {"dpid": 1})
    assert [r["actions"] for r in stats if r["cookie"] == tap["cookie"]] == [list(entry.actions)]
    assert service.call("remove_mirror", {"tap_id": "t1"}) == {"tap_id": "t1", "removed": True, "packets": 3,
                                                               "bytes": 300}
    assert [p["reason"] for e, p in service.events if e == "mirror_removed"] == ["delete"]  # type: ignore[attr-defined]


def test_an_openflow_error_is_the_switch_rejected_reply(service: TapService) -> None:
    dp = connect(service, 1)
    with pytest.raises(RpcError) as info:
        service.call("install_mirror", {"tap_id": "t", "dpid": 1, "match": FLOW, "copy_port": 99})
    assert info.value.code == -32004 and "type=2 code=4" in info.value.message
    assert dp.flows.mirrors() == {}


def test_flow_removed_messages_end_taps(service: TapService) -> None:
    dp = connect(service, 1)
    service.call("install_mirror", {"tap_id": "t", "dpid": 1, "match": FLOW, "copy_port": 6, "idle_timeout": 5})
    dp.flows.send(packet(), 2)
    dp.flows.advance(10)
    for removed in dp.flows.take_removed():
        service.flow_removed(dp.switch, removed_of(flow_removed_msg(removed)))  # type: ignore[arg-type]
    service.pump()
    (event,) = [p for e, p in service.events if e == "mirror_removed"]  # type: ignore[attr-defined]
    assert (event["tap_id"], event["reason"], event["packets"]) == ("t", "idle_timeout", 2)
    assert dp.flows.mirrors() == {}


def test_a_silent_switch_is_a_timeout_reply(service: TapService) -> None:
    dp = connect(service, 1)
    dp.send_msg = lambda msg: True  # type: ignore[method-assign]  # swallows everything
    dp.switch.timeout = 0.05  # type: ignore[union-attr]
    with pytest.raises(RpcError) as info:
        service.call("flow_stats", {"dpid": 1})
    assert info.value.code == -32005 and "no reply" in info.value.message
