"""Every lifecycle path of a mirror, through the service and the book, on fake OpenFlow 1.0
and 1.3 switches; each test says what the switch's table holds afterwards and what a
packet of the tapped flow does there (forwarded as before, copied where the tap says)."""

from __future__ import annotations

from pathlib import Path

import pytest

from demon.controller.changes import FlowMod
from demon.controller.fabric import intended_entries, parse_mirror_ports
from demon.controller.spec import BASELINE_COOKIE, STATIC_COOKIE
from demon.rpc.protocol import RpcError
from tests.demon.controller.bookharness import FLOW, HOST, Harness, packet

pytestmark = pytest.mark.parametrize("openflow", ["1.0", "1.3"])


def forward(openflow: str) -> list[str]:
    """How a filter switch forwards mirrored traffic: NORMAL, or the learned L2 table."""
    return ["NORMAL"] if openflow == "1.0" else ["goto_table:1"]


def base_keys(h: Harness, dpid: int) -> list[tuple]:
    return sorted(e.key() for e in h.tables[dpid].entries() if e.cookie in (BASELINE_COOKIE, STATIC_COOKIE))


def test_connect_installs_the_baseline(openflow: str) -> None:
    h = Harness(openflow)
    for dpid in (1, 2, 3):
        assert base_keys(h, dpid) == sorted(e.key() for e in intended_entries(h.fabric, dpid, openflow))
    assert h.tables[1].no_flood == ({6, 7, 8, 9, 10} if openflow == "1.0" else set())
    assert [e for e, _ in h.events] == ["switch_up"] * 3
    assert [(s["dpid"], s["role"], len(s["ports"])) for s in h.call("list_switches")] == [
        (1, "filter", 11), (2, "filter", 11), (3, "aggregation", 11)]


def test_install_copies_exactly_the_flow(openflow: str) -> None:
    h = Harness(openflow)
    tap = h.install("t1", vlan_tag=10)
    (entry,) = h.mirrors().values()
    assert (entry.cookie, entry.idle_timeout, entry.hard_timeout, entry.send_flow_rem) == (tap["cookie"], 30, 300, True)
    assert h.tables[1].send(packet()) == (forward(openflow), [(6, 10)])
    assert h.tables[1].send(packet(dport=81)) == (forward(openflow), [])  # another flow: the baseline
    assert tap == {"tap_id": "t1", "dpid": 1, "cookie": tap["cookie"], "entries": 1, "replaced": False,
                   "installed_at": h.now}


def test_install_again_is_idempotent(openflow: str) -> None:
    h = Harness(openflow)
    first = h.install("t1")
    mods, table = h.flow_mods(), h.mirrors()
    assert h.install("t1") == first
    assert h.flow_mods() == mods and h.mirrors() == table


def test_replace_changes_the_copy_silently_and_keeps_the_counters(openflow: str) -> None:
    h = Harness(openflow)
    first = h.install("t1")
    h.tables[1].send(packet(), 7)
    changed = h.install("t1", copy_port=7, vlan_tag=9)
    assert changed["replaced"] is True and changed["cookie"] == first["cookie"]
    # 1.3 copies counters to an entry ADD puts in the place of another; 1.0 clears them, so
    # there the old entry is deleted first and its FlowRemoved brings its final counters
    want = ["add"] if openflow == "1.3" else ["delete_strict", "add"]
    assert [c.command for c in h.ios[1].batches[-1]] == want
    (entry,) = h.mirrors().values()
    assert h.tables[1].send(packet(), 3) == (forward(openflow), [(7, 9)])
    assert h.removed() == []  # replacing is not removing
    (listed,) = h.call("list_mirrors", dpid=1)
    assert (listed["copy_port"], listed["packets"], listed["bytes"]) == (7, 10, 1000)  # 7 before + 3 after


def test_an_extension_leaves_the_entry_alone_and_its_fail_safe_is_re_armed(openflow: str) -> None:
    h = Harness(openflow)
    h.install("t1", idle_timeout=0, hard_timeout=10)
    h.tables[1].send(packet(), 3)
    mods = h.flow_mods()
    extended = h.install("t1", idle_timeout=0, hard_timeout=100)  # the daemon holds the tap longer
    assert extended["replaced"] is True and h.flow_mods() == mods  # nothing sent: no copy lost
    h.tables[1].send(packet(), 2)
    h.advance(10)  # the entry's own hard timeout fires: the tap is not due, its entry comes back
    assert h.removed() == []
    (entry,) = h.mirrors().values()
    assert entry.hard_timeout == 90 and h.tables[1].send(packet()) == (forward(openflow), [(6, None)])
    (listed,) = h.call("list_mirrors", dpid=1)
    assert listed["packets"] == 6
    h.advance(90)
    (event,) = h.removed()
    assert (event["reason"], event["packets"]) == ("hard_timeout", 6) and h.mirrors() == {}


def test_remove_deletes_and_reports_the_counters(openflow: str) -> None:
    h = Harness(openflow)
    tap = h.install("t1", bidirectional=True)
    assert tap["entries"] == 2
    h.tables[1].send(packet(), 4)
    h.tables[1].send(packet("10.0.0.2", "10.0.0.1", 80, 40000, in_port=2), 2)
    assert h.call("remove_mirror", tap_id="t1") == {"tap_id": "t1", "removed": True, "packets": 6, "bytes": 600}
    assert h.mirrors() == {}
    events = sorted((e["direction"], e["reason"], e["packets"]) for e in h.removed())
    assert events == [("forward", "delete", 4), ("reverse", "delete", 2)]
    assert h.call("remove_mirror", tap_id="t1")["removed"] is False


def test_overlapping_taps_merge_and_split(openflow: str) -> None:
    h = Harness(openflow)
    flow = h.install("flow", FLOW, vlan_tag=101)
    host = h.install("host", HOST, vlan_tag=102)
    assert host["entries"] == 2 and len(h.mirrors()) == 2  # its own and the region it shares
    assert h.tables[1].send(packet(), 5) == (forward(openflow), [(6, 101), (6, 102)])
    assert h.tables[1].send(packet(dport=22), 2) == (forward(openflow), [(6, 102)])
    listed = {r["tap_id"]: r["packets"] for r in h.call("list_mirrors", dpid=1)}
    assert listed == {"flow": 5, "host": 7}  # a shared entry counts for both
    assert h.call("remove_mirror", tap_id="flow") == {"tap_id": "flow", "removed": True, "packets": 5, "bytes": 500}
    (own,) = h.mirrors().values()
    assert own.cookie == host["cookie"]
    assert h.tables[1].send(packet()) == (forward(openflow), [(6, 102)])
    assert [(e["tap_id"], e["reason"]) for e in h.removed()] == [("flow", "delete")]
    (listed_host,) = h.call("list_mirrors", dpid=1)
    assert (listed_host["tap_id"], listed_host["packets"]) == ("host", 8)  # 7 + the packet just sent


def test_idle_timeout_ends_the_tap(openflow: str) -> None:
    h = Harness(openflow)
    h.install("t1", idle_timeout=5)
    h.tables[1].send(packet(), 3)
    h.advance(4)
    assert len(h.mirrors()) == 1 and h.removed() == []
    h.advance(2)
    assert h.mirrors() == {}
    (event,) = h.removed()
    assert (event["tap_id"], event["reason"], event["packets"]) == ("t1", "idle_timeout", 3)
    assert h.call("list_mirrors") == []


def test_idle_tap_kept_alive_by_traffic_in_a_shared_entry(openflow: str) -> None:
    h = Harness(openflow)
    h.install("host", HOST, idle_timeout=5)
    flow = h.install("flow", FLOW, copy_port=7, idle_timeout=0)
    h.tables[1].send(packet(), 3)  # all of the host's traffic goes through the 5-tuple region
    h.advance(5)
    assert len(h.mirrors()) == 2 and h.removed() == []  # its own entry idled out and came back
    h.advance(5)  # no packet since the last look: it ends
    (event,) = h.removed()
    assert (event["tap_id"], event["reason"], event["packets"]) == ("host", "idle_timeout", 3)
    (entry,) = h.mirrors().values()
    assert entry.cookie == flow["cookie"] and h.tables[1].route(packet()) == (forward(openflow), [(7, None)])


def test_stats_timeout_ends_the_idle_taps_waiting_on_it(openflow: str) -> None:
    h = Harness(openflow)
    h.install("host", HOST, idle_timeout=5)
    h.install("flow", FLOW, copy_port=7, idle_timeout=0)
    h.tables[1].send(packet(), 3)
    h.ios[1].stats_fail = True
    h.advance(5)
    (event,) = h.removed()
    assert (event["tap_id"], event["reason"]) == ("host", "idle_timeout")
    assert [r["tap_id"] for r in h.book.list_mirrors(1, h.tables[1].rows(), h.now)] == ["flow"]
    assert h.tables[1].route(packet()) == (forward(openflow), [(7, None)])


def test_hard_timeout_ends_the_inner_tap_only(openflow: str) -> None:
    h = Harness(openflow)
    h.install("long", HOST, idle_timeout=0, hard_timeout=60)
    h.install("short", FLOW, vlan_tag=20, idle_timeout=0, hard_timeout=2)
    assert h.tables[1].route(packet()) == (forward(openflow), [(6, None), (6, 20)])
    h.tables[1].send(packet(), 4)
    h.advance(2)
    (event,) = h.removed()
    assert (event["tap_id"], event["reason"], event["packets"]) == ("short", "hard_timeout", 4)
    assert h.tables[1].route(packet()) == (forward(openflow), [(6, None)])
    (entry,) = h.mirrors().values()
    assert entry.hard_timeout == 60 and entry.cookie == h.book.taps["long"].cookie  # never rewritten
    (listed,) = h.call("list_mirrors", dpid=1)
    assert (listed["tap_id"], listed["packets"]) == ("long", 4)


def test_reconnect_reinstalls_what_the_switch_lost(openflow: str) -> None:
    h = Harness(openflow)
    tap = h.install("t1", idle_timeout=0, hard_timeout=120)
    h.install("t2", {"ipv4_src": "10.0.0.6"}, dpid=2, idle_timeout=0)
    h.disconnect(1)
    assert [e for e, _ in h.events][-1] == "switch_down"
    with pytest.raises(RpcError) as info:
        h.install("t3", dpid=1)
    assert info.value.code == -32002
    h.tables[1].wipe()  # the switch restarted: its table is empty
    h.advance(10)
    h.connect(1)
    assert base_keys(h, 1) == sorted(e.key() for e in intended_entries(h.fabric, 1, openflow))
    (entry,) = h.mirrors().values()
    assert entry.cookie == tap["cookie"] and entry.hard_timeout == 110  # its deadline did not move
    assert h.tables[1].send(packet()) == (forward(openflow), [(6, None)])
    assert h.removed() == [] and [r["tap_id"] for r in h.call("list_mirrors")] == ["t1", "t2"]


def test_reconnect_with_the_table_intact_sends_no_mirror(openflow: str) -> None:
    h = Harness(openflow)
    h.install("t1", idle_timeout=0)
    h.tables[1].send(packet(), 5)
    h.disconnect(1)
    io = h.connect(1)
    assert [c for batch in io.batches for c in batch if isinstance(c, FlowMod)] == []  # nothing re-sent
    (listed,) = h.call("list_mirrors", dpid=1)
    assert listed["packets"] == 5  # the same entry: its counters went on


def test_restart_adopts_the_remembered_taps_and_keeps_their_counters(openflow: str, tmp_path: Path) -> None:
    h = Harness(openflow, tmp_path)
    a = h.install("a", FLOW, idle_timeout=0)
    h.install("gone", {"ipv4_src": "10.0.0.6"}, dpid=2, idle_timeout=0)
    h.tables[1].send(packet(), 5)
    h.install("a", FLOW, idle_timeout=0, copy_port=7)  # replaced once: 5 packets retired
    h.tables[1].send(packet(), 2)
    h.tables[2].wipe()  # while the component is down, s2 loses its mirror
    h.start()
    for dpid in (1, 2, 3):
        h.connect(dpid)
    (listed,) = h.call("list_mirrors", dpid=1)
    assert (listed["tap_id"], listed["copy_port"], listed["packets"]) == ("a", 7, 7)
    assert [(e["tap_id"], e["reason"]) for e in h.removed()] == [("gone", "unknown")]
    mods = h.flow_mods()
    again = h.install("a", FLOW, idle_timeout=0, copy_port=7)  # the daemon re-asserts it
    assert again["cookie"] == a["cookie"] and h.flow_mods() == mods
    assert h.install("gone", {"ipv4_src": "10.0.0.6"}, dpid=2, idle_timeout=0)["replaced"] is False
    assert h.call("remove_mirror", tap_id="a")["packets"] == 7


def test_restart_without_state_lists_and_removes_strays(openflow: str) -> None:
    h = Harness(openflow)
    tap = h.install("orphan", FLOW, idle_timeout=0)
    h.tables[1].send(packet(), 2)
    h.start()
    for dpid in (1, 2, 3):
        h.connect(dpid)
    (listed,) = h.call("list_mirrors", dpid=1)
    assert (listed["tap_id"], listed["cookie"], listed["packets"]) == (None, tap["cookie"], 2)
    assert h.call("remove_mirror", tap_id="orphan") == {"tap_id": "orphan", "removed": True, "packets": 2,
                                                       "bytes": 200}
    assert h.mirrors() == {} and h.call("remove_mirror", tap_id="orphan")["removed"] is False


def test_a_refused_install_leaves_the_switch_as_it_was(openflow: str) -> None:
    h = Harness(openflow)
    h.install("host", HOST)
    before = dict(h.mirrors())
    with pytest.raises(RpcError) as info:
        h.install("bad", FLOW, copy_port=99)  # the switch has no port 99
    assert info.value.code == -32004 and "type=2 code=4" in info.value.message
    assert h.mirrors() == before and "bad" not in h.book.taps
    assert [r["tap_id"] for r in h.call("list_mirrors", dpid=1)] == ["host"]


def test_bad_params_change_nothing(openflow: str) -> None:
    h = Harness(openflow)
    mods = h.flow_mods()
    for params, code, text in [(dict(match={"tcp_dst": -1}), -32602, "params.match.tcp_dst"),
                               (dict(dpid=7), -32002, "7"), (dict(hard_timeout=0), -32602, "hard_timeout")]:
        with pytest.raises(RpcError) as info:
            h.install("t", **{"match": FLOW, **params})
        assert info.value.code == code and text in info.value.message
    with pytest.raises(RpcError) as info:
        h.call("flow_stats")
    assert info.value.code == -32602 and "params.dpid" in info.value.message
    assert h.flow_mods() == mods


def test_static_mode(openflow: str) -> None:
    h = Harness(openflow, static=parse_mirror_ports("s2MirrorSrc,2\ns2MirrorDst,7\n"))
    assert {e.match["in_port"]: e.actions for e in h.tables[2].entries(STATIC_COOKIE)} == {
        1: ("output:2", "output:7"), 2: ("output:1", "output:7")}
    assert len(h.tables[3].entries(STATIC_COOKIE)) == 10
    static = parse_mirror_ports("s1MirrorSrc,1\ns1MirrorDst,6\n")
    assert h.call("set_static", config=static.to_json()) == {"switches": 3, "entries": 4 + 2 + 10}
    assert {e.match["in_port"]: e.actions for e in h.tables[2].entries(STATIC_COOKIE)} == {
        1: ("output:2",), 2: ("output:1",)}  # the prototype's pair, no longer mirrored
    s1 = h.tables[1]
    s1.forward_ports = {4}
    tap = h.install("p", {"in_port": 3, "ip_proto": 6}, copy_port=7, idle_timeout=0, hard_timeout=600)
    assert tap["entries"] == 1  # a mirror on a static pair forwards by the pair
    assert s1.route(packet(in_port=3)) == (["output:4"], [(7, None)])
    statics = base_keys(h, 1)
    h.advance(120)  # the prototype's timed entries expire and come back
    assert base_keys(h, 1) == statics
    assert h.call("set_static", config={"switches": {"2": {"pairs": [[1, 2]]}}}) == {"switches": 1, "entries": 2}
    assert s1.entries(STATIC_COOKIE) == [] and len(h.tables[2].entries(STATIC_COOKIE)) == 2
    assert s1.route(packet(in_port=3)) == (forward(openflow), [(7, None)])  # forwards as without pairs
    assert h.removed() == []  # static churn is not a mirror event
