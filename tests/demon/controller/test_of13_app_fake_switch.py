"""The os-ken component's service against a fake OpenFlow 1.3 switch (no root, no OVS).

The fake keeps a real flow table: it applies the FlowMods the service sends (add
replaces an entry with the same priority and match, delete honours cookie/mask),
answers barriers and stats from that table, rejects unknown output ports, and sends
FlowRemoved for entries that carry ``send_flow_rem``. Tests look at its table and at
the events the service publishes.
"""

from __future__ import annotations

import threading
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from demon.controller import of13
from demon.controller.fabric import intended_entries, parse_fabric, parse_mirror_ports
from demon.controller.osken_app import Settings, SwitchLink, TapService
from demon.controller.spec import BASELINE_COOKIE, STATIC_COOKIE
from demon.rpc.protocol import RpcError
from os_ken.ofproto import ofproto_v1_3, ofproto_v1_3_parser
from tests.demon.controller.test_fabric_roles_static import SEED

OFP = ofproto_v1_3


class FakeSwitch:
    """Just enough of an os-ken Datapath and of Open vSwitch behind it."""

    ofproto = ofproto_v1_3
    ofproto_parser = ofproto_v1_3_parser

    def __init__(self, dpid: int, ports: range = range(1, 12)) -> None:
        self.id = dpid
        self.ports = set(ports)
        self.xid = 0
        self.table: list[dict[str, Any]] = []
        self.link: SwitchLink | None = None
        self.service: TapService | None = None
        self.lock = threading.Lock()

    def set_xid(self, msg: Any) -> int:
        self.xid += 1
        msg.set_xid(self.xid)
        return self.xid

    def send_msg(self, msg: Any) -> bool:
        assert self.link is not None
        name = type(msg).__name__
        if name == "OFPFlowMod":
            self._flow_mod(msg)
        elif name == "OFPBarrierRequest":
            self.link.on_reply(SimpleNamespace(xid=msg.xid))
        elif name == "OFPFlowStatsRequest":
            body = [self._stats(e) for e in self.table
                    if e["mod"].cookie & msg.cookie_mask == msg.cookie & msg.cookie_mask]
            self.link.on_reply(SimpleNamespace(xid=msg.xid, body=body, flags=0))
        elif name == "OFPPortDescStatsRequest":
            body = [SimpleNamespace(port_no=p, name=f"s{self.id}-eth{p}".encode(), hw_addr="00:00:00:00:00:01",
                                    config=0, state=0) for p in sorted(self.ports)]
            self.link.on_reply(SimpleNamespace(xid=msg.xid, body=body, flags=0))
        else:
            raise AssertionError(f"unexpected message {name}")
        return True

    # -- flow table ---------------------------------------------------------
    @staticmethod
    def _key(mod: Any) -> tuple[Any, ...]:
        return (mod.table_id, mod.priority, tuple(sorted(mod.match.items())))

    def _flow_mod(self, mod: Any) -> None:
        if mod.command == OFP.OFPFC_ADD:
            for inst in mod.instructions:
                for action in getattr(inst, "actions", []):
                    port = getattr(action, "port", None)
                    if port is not None and port < of13.OFPP_IN_PORT and port not in self.ports:
                        self.link.on_error(SimpleNamespace(xid=mod.xid, type=OFP.OFPET_BAD_ACTION,
                                                           code=OFP.OFPBAC_BAD_OUT_PORT))
                        return
            self.table = [e for e in self.table if self._key(e["mod"]) != self._key(mod)]
            self.table.append({"mod": mod, "packets": 0, "bytes": 0})
        elif mod.command == OFP.OFPFC_DELETE:
            gone = [e for e in self.table if e["mod"].cookie & mod.cookie_mask == mod.cookie & mod.cookie_mask]
            self.table = [e for e in self.table if e not in gone]
            for e in gone:
                self._removed(e, OFP.OFPRR_DELETE)
        elif mod.command == OFP.OFPFC_DELETE_STRICT:
            gone = [e for e in self.table if self._key(e["mod"]) == self._key(mod)]
            self.table = [e for e in self.table if e not in gone]
            for e in gone:
                self._removed(e, OFP.OFPRR_DELETE)
        else:
            raise AssertionError(f"unexpected FlowMod command {mod.command}")

    def _removed(self, entry: dict[str, Any], reason: int) -> None:
        mod = entry["mod"]
        if mod.flags & OFP.OFPFF_SEND_FLOW_REM and self.service is not None:
            self.service.flow_removed(self, SimpleNamespace(
                cookie=mod.cookie, priority=mod.priority, reason=reason, match=mod.match,
                packet_count=entry["packets"], byte_count=entry["bytes"], duration_sec=1, duration_nsec=0))

    def _stats(self, e: dict[str, Any]) -> Any:
        m = e["mod"]
        return SimpleNamespace(table_id=m.table_id, duration_sec=1, duration_nsec=0, priority=m.priority,
                               idle_timeout=m.idle_timeout, hard_timeout=m.hard_timeout, flags=m.flags,
                               cookie=m.cookie, packet_count=e["packets"], byte_count=e["bytes"],
                               match=m.match, instructions=m.instructions)

    # -- what the network would do ------------------------------------------
    def hit(self, cookie: int, packets: int, size: int = 100) -> None:
        for e in self.table:
            if e["mod"].cookie == cookie:
                e["packets"] += packets
                e["bytes"] += packets * size

    def expire(self, cookie: int, reason: int) -> None:
        gone = [e for e in self.table if e["mod"].cookie == cookie]
        self.table = [e for e in self.table if e not in gone]
        for e in gone:
            self._removed(e, reason)

    def entries(self, cookie: int | None = None) -> list[Any]:
        rows = [of13.stats_to_entry({"table_id": e["mod"].table_id, "priority": e["mod"].priority, "cookie": e["mod"].cookie,
                                     "match": list(e["mod"].match.items()),
                                     "actions": _actions(e["mod"]), "idle_timeout": e["mod"].idle_timeout,
                                     "hard_timeout": e["mod"].hard_timeout, "flags": e["mod"].flags})
                for e in self.table]
        return [r for r in rows if cookie is None or r.cookie == cookie]


def _actions(mod: Any) -> list[tuple[Any, ...]]:
    from demon.controller.osken_app import _actions_of

    return _actions_of(mod.instructions)


class Harness:
    def __init__(self, tmp_path: Path, static: Any = None) -> None:
        self.fabric = parse_fabric(SEED)
        self.state = tmp_path / "osken-taps.json"
        self.events: list[tuple[str, dict[str, Any]]] = []
        self.switches = {d: FakeSwitch(d) for d in (1, 2, 3)}
        self.service = self.restart(static)

    def restart(self, static: Any = None) -> TapService:
        service = TapService(Settings(fabric=self.fabric, static=static, token="t", barrier_timeout=1.0,
                                      state_file=self.state))
        service.publish = lambda event, params: self.events.append((event, params))
        for sw in self.switches.values():
            sw.link = SwitchLink(sw, 1.0)
            sw.service = service
            service.switch_up(sw, sw.link)
        self.service = service
        return service

    def call(self, method: str, **params: Any) -> Any:
        return self.service.call(method, params)

    def removed_events(self, wait_for: int = 0) -> list[dict[str, Any]]:
        """The mirror_removed events so far (FlowRemoved is handled on a worker thread: with
        ``wait_for``, wait up to 2 s until that many have arrived)."""
        for _ in range(200):
            got = [p for e, p in self.events if e == "mirror_removed"]
            if len(got) >= wait_for:
                break
            threading.Event().wait(0.01)
        return got


MATCH = {"ipv4_src": "10.0.0.1", "ipv4_dst": "10.0.0.2", "tcp_src": 40000, "tcp_dst": 80}


@pytest.fixture
def h(tmp_path: Path) -> Harness:
    return Harness(tmp_path)


def test_switch_up_installs_the_role_baseline(h: Harness) -> None:
    for dpid, sw in h.switches.items():
        assert sorted(e.key() for e in sw.entries()) == sorted(e.key() for e in intended_entries(h.fabric, dpid))
    assert [e for e, _ in h.events] == ["switch_up"] * 3
    listed = h.call("list_switches")
    assert [(s["dpid"], s["role"], len(s["ports"])) for s in listed] == [(1, "filter", 11), (2, "filter", 11),
                                                                        (3, "aggregation", 11)]


def test_reconnect_reasserts_the_baseline_once(h: Harness) -> None:
    sw = h.switches[1]
    sw.table = [e for e in sw.table if e["mod"].priority != 10]  # someone deleted entries
    h.service.switch_up(sw, sw.link)
    assert sorted(e.key() for e in sw.entries(BASELINE_COOKIE)) == sorted(
        e.key() for e in intended_entries(h.fabric, 1))


def test_install_is_idempotent_and_replace_is_silent(h: Harness) -> None:
    first = h.call("install_mirror", tap_id="t1", dpid=1, match=MATCH, copy_port=6)
    assert h.call("install_mirror", tap_id="t1", dpid=1, match=MATCH, copy_port=6) == first
    (entry,) = h.switches[1].entries(first["cookie"])
    assert entry.actions == ("output:6", "goto_table:1")  # copy, then forward by the L2 table
    changed = h.call("install_mirror", tap_id="t1", dpid=1, match=MATCH, copy_port=7, vlan_tag=9)
    assert changed["replaced"] is True and changed["cookie"] == first["cookie"]
    (entry,) = h.switches[1].entries(first["cookie"])
    assert entry.actions == ("push_vlan:0x8100", "set_field:vlan_vid=9", "output:7", "pop_vlan", "goto_table:1")
    assert h.removed_events() == []  # replacing is not removing


def test_remove_reports_counters_and_one_event(h: Harness) -> None:
    tap = h.call("install_mirror", tap_id="t1", dpid=1, match=MATCH, copy_port=6)
    h.switches[1].hit(tap["cookie"], 42)
    assert h.call("remove_mirror", tap_id="t1") == {"tap_id": "t1", "removed": True, "packets": 42,
                                                    "bytes": 4200}
    assert h.switches[1].entries(tap["cookie"]) == []
    (event,) = h.removed_events()
    assert (event["tap_id"], event["reason"], event["packets"]) == ("t1", "delete", 42)
    assert h.call("remove_mirror", tap_id="t1")["removed"] is False


def test_bidirectional_events_name_their_direction(h: Harness) -> None:
    tap = h.call("install_mirror", tap_id="bi", dpid=1, match=MATCH, copy_port=6, bidirectional=True,
                 idle_timeout=5)
    assert tap["entries"] == 2
    h.switches[1].expire(tap["cookie"], OFP.OFPRR_IDLE_TIMEOUT)
    assert sorted((e["direction"], e["reason"]) for e in h.removed_events(wait_for=2)) == [
        ("forward", "idle_timeout"), ("reverse", "idle_timeout")]
    assert h.call("list_mirrors") == []
    # the tap is gone: installing it again is a fresh install, not a cached answer
    again = h.call("install_mirror", tap_id="bi", dpid=1, match=MATCH, copy_port=6, bidirectional=True,
                   idle_timeout=5)
    assert again["replaced"] is False and len(h.switches[1].entries(tap["cookie"])) == 2


def test_a_restarted_component_names_and_removes_earlier_taps(h: Harness) -> None:
    tap = h.call("install_mirror", tap_id="keep", dpid=2, match=MATCH, copy_port=8, vlan_tag=3)
    h.switches[2].hit(tap["cookie"], 5)
    h.restart()
    (listed,) = h.call("list_mirrors", dpid=2)
    assert (listed["tap_id"], listed["copy_port"], listed["vlan_tag"], listed["packets"]) == ("keep", 8, 3, 5)
    assert h.call("remove_mirror", tap_id="keep")["removed"] is True
    assert h.switches[2].entries(tap["cookie"]) == []
    assert h.removed_events(wait_for=1)[-1]["tap_id"] == "keep"
    h.state.unlink()
    h.restart()
    assert h.call("list_mirrors") == []


def test_switch_errors_and_bad_params(h: Harness) -> None:
    with pytest.raises(RpcError) as info:
        h.call("install_mirror", tap_id="t", dpid=1, match=MATCH, copy_port=99)
    assert info.value.code == -32004 and "type=2 code=4" in info.value.message
    with pytest.raises(RpcError) as info:
        h.call("install_mirror", tap_id="t", dpid=7, match=MATCH, copy_port=6)
    assert info.value.code == -32002
    with pytest.raises(RpcError) as info:
        h.call("install_mirror", tap_id="t", dpid=1, match={"tcp_dst": -1}, copy_port=6)
    assert info.value.code == -32602 and "params.match.tcp_dst" in info.value.message
    with pytest.raises(RpcError) as info:
        h.call("flow_stats")
    assert info.value.code == -32602 and "params.dpid" in info.value.message


def test_set_static_replaces_and_timed_out_static_entries_come_back(h: Harness) -> None:
    static = parse_mirror_ports("s1MirrorSrc,1\ns1MirrorDst,6\n")
    assert h.call("set_static", config=static.to_json()) == {"switches": 3, "entries": 4 + 2 + 10}
    s1 = h.switches[1]
    assert {e.match["in_port"]: e.actions for e in s1.entries(STATIC_COOKIE)}[1] == ("output:2", "output:6")
    # a static mirror entry forwards by its pair
    tap = h.call("install_mirror", tap_id="p", dpid=1, match={"in_port": 3, "ip_proto": 6}, copy_port=7)
    assert s1.entries(tap["cookie"])[0].actions == ("output:4", "output:7")
    before = len(s1.entries(STATIC_COOKIE))
    s1.expire(STATIC_COOKIE, OFP.OFPRR_HARD_TIMEOUT)
    deadline = threading.Event()
    for _ in range(100):  # re-added on a spawned thread
        if len(s1.entries(STATIC_COOKIE)) == before:
            break
        deadline.wait(0.02)
    assert len(s1.entries(STATIC_COOKIE)) == before
    assert h.call("set_static", config={"switches": {"2": {"pairs": [[1, 2]]}}}) == {"switches": 1,
                                                                                  "entries": 2}
    # the mirror now forwards as s1 does without static pairs: by the learned L2 table
    assert [e.actions for e in s1.entries(tap["cookie"])] == [("output:7", "goto_table:1")]
    assert s1.entries(STATIC_COOKIE) == [] and len(h.switches[2].entries(STATIC_COOKIE)) == 2
    assert [p for p in h.removed_events()] == []  # static churn is not a mirror event


def test_static_config_from_the_launcher_is_installed_on_connect(tmp_path: Path) -> None:
    h = Harness(tmp_path, static=parse_mirror_ports("s2MirrorSrc,2\ns2MirrorDst,7\n"))
    assert {e.match["in_port"]: e.actions for e in h.switches[2].entries(STATIC_COOKIE)} == {
        1: ("output:2", "output:7"), 2: ("output:1", "output:7")}
    assert len(h.switches[3].entries(STATIC_COOKIE)) == 10


HOST = {"ipv4_src": "10.0.0.1"}


def _wait(pred: Any, timeout: float = 2.0) -> bool:
    for _ in range(int(timeout / 0.01)):
        if pred():
            return True
        threading.Event().wait(0.01)
    return pred()


def test_overlapping_taps_are_merged_and_outlive_each_other(h: Harness) -> None:
    s1 = h.switches[1]
    flow = h.call("install_mirror", tap_id="flow", dpid=1, match=MATCH, copy_port=6, vlan_tag=101)
    host = h.call("install_mirror", tap_id="host", dpid=1, match=HOST, copy_port=6, vlan_tag=102)
    assert host["entries"] == 2  # its own and the 5-tuple region it shares
    (shared,) = s1.entries(flow["cookie"])
    assert shared.actions == ("push_vlan:0x8100", "set_field:vlan_vid=101", "output:6",
                              "set_field:vlan_vid=102", "output:6", "pop_vlan", "goto_table:1")
    (own,) = s1.entries(host["cookie"])
    assert shared.priority > own.priority
    s1.hit(flow["cookie"], 10)
    listed = {r["tap_id"]: r for r in h.call("list_mirrors", dpid=1)}
    assert (listed["flow"]["packets"], listed["host"]["packets"]) == (10, 10)  # a shared entry counts for both
    h.call("remove_mirror", tap_id="flow")
    assert s1.entries(flow["cookie"]) == []
    (own,) = s1.entries(host["cookie"])
    assert own.actions == ("push_vlan:0x8100", "set_field:vlan_vid=102", "output:6", "pop_vlan", "goto_table:1")
    assert [(e["tap_id"], e["reason"]) for e in h.removed_events()] == [("flow", "delete")]
    assert [r["tap_id"] for r in h.call("list_mirrors", dpid=1)] == ["host"]


def test_idle_tap_kept_alive_by_traffic_in_a_shared_entry(h: Harness) -> None:
    s1 = h.switches[1]
    host = h.call("install_mirror", tap_id="host", dpid=1, match=HOST, copy_port=6, idle_timeout=5)
    flow = h.call("install_mirror", tap_id="flow", dpid=1, match=MATCH, copy_port=7)
    s1.hit(flow["cookie"], 3)  # the host's traffic all went through the 5-tuple region
    s1.expire(host["cookie"], OFP.OFPRR_IDLE_TIMEOUT)
    assert _wait(lambda: len(s1.entries(host["cookie"])) == 1)  # re-added
    assert h.removed_events() == [] and "host" in h.service.taps
    s1.expire(host["cookie"], OFP.OFPRR_IDLE_TIMEOUT)  # no packets since the last look: it ends
    (event,) = h.removed_events(wait_for=1)
    assert (event["tap_id"], event["reason"]) == ("host", "idle_timeout")
    assert _wait(lambda: s1.entries(flow["cookie"]) != [] and
                 s1.entries(flow["cookie"])[0].actions == ("output:7", "goto_table:1"))
    assert "host" not in h.service.taps and "flow" in h.service.taps
