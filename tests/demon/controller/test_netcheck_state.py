"""Network-state check: ovs-ofctl dump parsing (by key, not position) and the table diff."""

import random
from dataclasses import replace

from demon.controller.fabric import intended_entries, parse_fabric
from demon.controller import merge, of13
from demon.controller.netcheck import UNCHECKED_HARD, check_switch, compare, mirror_intent, render
from demon.controller.ovsofctl import dump_flows, parse_dump_flows, parse_flow_line
from demon.controller.spec import is_mirror_cookie, parse_mirror_params
from tests.demon.controller.test_fabric_roles_static import SEED
from tests.demon.controller.test_mirror_compile_path import compiled_for

# Recorded from `ovs-ofctl -O OpenFlow13 --no-names dump-flows s1` (OVS 3.1, userspace datapath)
# with the os-ken component's baseline, one bidirectional, VLAN-tagged ICMP mirror and three
# MAC addresses the switch has learnt (table 1, cookie 0xde3000000003).
S1_DUMP = """\
OFPST_FLOW reply (OF1.3) (xid=0x2):
 cookie=0xde30db54ae37, duration=1.022s, table=0, n_packets=1, n_bytes=98, idle_timeout=30, hard_timeout=300, send_flow_rem priority=40000,icmp,nw_src=10.0.0.1,nw_dst=10.0.0.2 actions=push_vlan:0x8100,set_field:4106->vlan_vid,output:6,pop_vlan,goto_table:1
 cookie=0xde30db54ae37, duration=1.022s, table=0, n_packets=1, n_bytes=98, idle_timeout=30, hard_timeout=300, send_flow_rem priority=40000,icmp,nw_src=10.0.0.2,nw_dst=10.0.0.1 actions=push_vlan:0x8100,set_field:4106->vlan_vid,output:6,pop_vlan,goto_table:1
 cookie=0xde3000000001, duration=3.571s, table=0, n_packets=0, n_bytes=0, priority=100,in_port=6 actions=drop
 cookie=0xde3000000001, duration=3.571s, table=0, n_packets=0, n_bytes=0, priority=100,in_port=7 actions=drop
 cookie=0xde3000000001, duration=3.571s, table=0, n_packets=0, n_bytes=0, priority=100,in_port=8 actions=drop
 cookie=0xde3000000001, duration=3.571s, table=0, n_packets=0, n_bytes=0, priority=100,in_port=9 actions=drop
 cookie=0xde3000000001, duration=3.571s, table=0, n_packets=0, n_bytes=0, priority=100,in_port=10 actions=drop
 cookie=0xde3000000001, duration=3.571s, table=0, n_packets=2, n_bytes=196, priority=10,in_port=1 actions=learn(table=1,idle_timeout=300,priority=10,cookie=0xde3000000003,NXM_OF_ETH_DST[]=NXM_OF_ETH_SRC[],output:OXM_OF_IN_PORT[]),goto_table:1
 cookie=0xde3000000001, duration=3.571s, table=0, n_packets=1, n_bytes=42, priority=10,in_port=2 actions=learn(table=1,idle_timeout=300,priority=10,cookie=0xde3000000003,NXM_OF_ETH_DST[]=NXM_OF_ETH_SRC[],output:OXM_OF_IN_PORT[]),goto_table:1
 cookie=0xde3000000001, duration=3.571s, table=0, n_packets=3, n_bytes=238, priority=10,in_port=3 actions=learn(table=1,idle_timeout=300,priority=10,cookie=0xde3000000003,NXM_OF_ETH_DST[]=NXM_OF_ETH_SRC[],output:OXM_OF_IN_PORT[]),goto_table:1
 cookie=0xde3000000001, duration=3.571s, table=0, n_packets=0, n_bytes=0, priority=10,in_port=4 actions=learn(table=1,idle_timeout=300,priority=10,cookie=0xde3000000003,NXM_OF_ETH_DST[]=NXM_OF_ETH_SRC[],output:OXM_OF_IN_PORT[]),goto_table:1
 cookie=0xde3000000001, duration=3.571s, table=0, n_packets=0, n_bytes=0, priority=10,in_port=5 actions=learn(table=1,idle_timeout=300,priority=10,cookie=0xde3000000003,NXM_OF_ETH_DST[]=NXM_OF_ETH_SRC[],output:OXM_OF_IN_PORT[]),goto_table:1
 cookie=0xde3000000001, duration=3.571s, table=0, n_packets=3, n_bytes=170, priority=20,in_port=1,dl_dst=01:00:00:00:00:00/01:00:00:00:00:00 actions=learn(table=1,idle_timeout=300,priority=10,cookie=0xde3000000003,NXM_OF_ETH_DST[]=NXM_OF_ETH_SRC[],output:OXM_OF_IN_PORT[]),output:2,output:3,output:4,output:5
 cookie=0xde3000000001, duration=3.571s, table=0, n_packets=0, n_bytes=0, priority=20,in_port=2,dl_dst=01:00:00:00:00:00/01:00:00:00:00:00 actions=learn(table=1,idle_timeout=300,priority=10,cookie=0xde3000000003,NXM_OF_ETH_DST[]=NXM_OF_ETH_SRC[],output:OXM_OF_IN_PORT[]),output:1,output:3,output:4,output:5
 cookie=0xde3000000001, duration=3.571s, table=0, n_packets=0, n_bytes=0, priority=20,in_port=3,dl_dst=01:00:00:00:00:00/01:00:00:00:00:00 actions=learn(table=1,idle_timeout=300,priority=10,cookie=0xde3000000003,NXM_OF_ETH_DST[]=NXM_OF_ETH_SRC[],output:OXM_OF_IN_PORT[]),output:1,output:2,output:4,output:5
 cookie=0xde3000000001, duration=3.571s, table=0, n_packets=0, n_bytes=0, priority=20,in_port=4,dl_dst=01:00:00:00:00:00/01:00:00:00:00:00 actions=learn(table=1,idle_timeout=300,priority=10,cookie=0xde3000000003,NXM_OF_ETH_DST[]=NXM_OF_ETH_SRC[],output:OXM_OF_IN_PORT[]),output:1,output:2,output:3,output:5
 cookie=0xde3000000001, duration=3.571s, table=0, n_packets=0, n_bytes=0, priority=20,in_port=5,dl_dst=01:00:00:00:00:00/01:00:00:00:00:00 actions=learn(table=1,idle_timeout=300,priority=10,cookie=0xde3000000003,NXM_OF_ETH_DST[]=NXM_OF_ETH_SRC[],output:OXM_OF_IN_PORT[]),output:1,output:2,output:3,output:4
 cookie=0xde3000000001, duration=3.571s, table=0, n_packets=0, n_bytes=0, priority=0 actions=drop
 cookie=0xde3000000003, duration=3.543s, table=1, n_packets=5, n_bytes=378, idle_timeout=300, priority=10,dl_dst=00:00:00:00:00:01 actions=output:1
 cookie=0xde3000000003, duration=3.424s, table=1, n_packets=2, n_bytes=196, idle_timeout=300, priority=10,dl_dst=00:00:00:00:00:03 actions=output:3
 cookie=0xde3000000003, duration=1.020s, table=1, n_packets=1, n_bytes=98, idle_timeout=300, priority=10,dl_dst=00:00:00:00:00:02 actions=output:2
 cookie=0xde3000000001, duration=3.571s, table=1, n_packets=0, n_bytes=0, priority=1,in_port=1 actions=output:2,output:3,output:4,output:5
 cookie=0xde3000000001, duration=3.571s, table=1, n_packets=0, n_bytes=0, priority=1,in_port=2 actions=output:1,output:3,output:4,output:5
 cookie=0xde3000000001, duration=3.571s, table=1, n_packets=0, n_bytes=0, priority=1,in_port=3 actions=output:1,output:2,output:4,output:5
 cookie=0xde3000000001, duration=3.571s, table=1, n_packets=0, n_bytes=0, priority=1,in_port=4 actions=output:1,output:2,output:3,output:5
 cookie=0xde3000000001, duration=3.571s, table=1, n_packets=0, n_bytes=0, priority=1,in_port=5 actions=output:1,output:2,output:3,output:4
 cookie=0xde3000000001, duration=3.571s, table=1, n_packets=0, n_bytes=0, priority=0 actions=drop
"""
MIRROR = {"tap_id": "t1", "dpid": 1, "match": {"ipv4_src": "10.0.0.1", "ipv4_dst": "10.0.0.2", "ip_proto": 1},
          "copy_port": 6, "vlan_tag": 10, "bidirectional": True}
COOKIE = 0xDE30DB54AE37


def mirrors() -> list:
    """The tap's entries as the os-ken component compiles them for s1 (a filter switch)."""
    return [c.entry for c in compiled_for(parse_mirror_params(MIRROR), COOKIE, fabric=parse_fabric(SEED))]


def test_recorded_dump_matches_the_intended_state() -> None:
    table = parse_dump_flows(S1_DUMP)
    assert len(table) == 27
    diff = check_switch(parse_fabric(SEED), 1, table, None, mirrors())
    assert diff.clean, render([diff])
    assert diff.notes == ["3 learned L2 entries not compared"]


def test_parser_reads_fields_by_name() -> None:
    entry = parse_flow_line(" cookie=0x5, table=0, n_packets=9, hard_timeout=60, priority=7,"
                            "tcp,nw_dst=10.0.0.0/24,tp_dst=80 actions=output:3")
    assert entry.match == {"eth_type": 0x0800, "ip_proto": 6, "ipv4_dst": "10.0.0.0/24", "tcp_dst": 80}
    assert (entry.cookie, entry.priority, entry.hard_timeout, entry.actions) == (5, 7, 60, ("output:3",))
    # OpenFlow 1.0 dumps (POX) tag with mod_vlan_vid: same meaning as push + set_field
    of10 = parse_flow_line(" cookie=0x0, duration=1s, table=0, n_packets=0, n_bytes=0, idle_age=1, "
                           "priority=32768,udp,in_port=1,tp_src=53 actions=NORMAL,mod_vlan_vid:10,output:6")
    assert of10.match == {"eth_type": 0x0800, "ip_proto": 17, "in_port": 1, "udp_src": 53}
    assert of10.actions == ("NORMAL", "push_vlan:0x8100", "set_field:vlan_vid=10", "output:6")
    assert parse_flow_line("OFPST_FLOW reply (OF1.3) (xid=0x2):") is None


def test_missing_and_unexpected_entries_are_reported_order_independently() -> None:
    lines = S1_DUMP.splitlines()[1:]
    deleted = [line for line in lines if "priority=10,in_port=3 " not in line]
    extra = " cookie=0x0, table=0, priority=5,in_port=4 actions=output:9"
    random.Random(1).shuffle(deleted)
    table = parse_dump_flows("\n".join(deleted + [extra]))
    diff = check_switch(parse_fabric(SEED), 1, table, None, mirrors())
    assert [e.describe() for e in diff.missing] == [
        f"cookie={0xDE3000000001:#x} priority=10 in_port=3 actions=learn(table=1),goto_table:1"]
    assert [e.match for e in diff.unexpected] == [{"in_port": 4}]
    text = render([diff])
    assert "1 missing, 1 unexpected" in text and "missing:    cookie=0xde3000000001 priority=10 in_port=3" in text


def test_a_missing_reverse_mirror_entry_is_reported() -> None:
    table = [e for e in parse_dump_flows(S1_DUMP) if e.match.get("ipv4_src") != "10.0.0.2"]
    diff = check_switch(parse_fabric(SEED), 1, table, None, mirrors())
    assert len(diff.missing) == 1 and diff.missing[0].match["ipv4_src"] == "10.0.0.2" and not diff.unexpected


def test_without_a_mirror_source_mirror_entries_are_noted_not_flagged() -> None:
    diff = check_switch(parse_fabric(SEED), 1, parse_dump_flows(S1_DUMP), None, None)
    assert diff.clean
    assert diff.notes[-1] == "2 mirror entries not checked (no --rpc to list the taps)"


def test_duplicates_count() -> None:
    fabric = parse_fabric(SEED)
    want = intended_entries(fabric, 3)
    missing, unexpected = compare(want, want + want[:1])
    assert missing == [] and unexpected == want[:1]


def test_mirror_intent_from_list_mirrors_records() -> None:
    record = {**MIRROR, "idle_timeout": 30, "hard_timeout": 300, "priority": 40000, "cookie": COOKIE,
              "tap_id": None}
    intent = mirror_intent([record], None, "1.3", parse_fabric(SEED))
    # exactly the mirror entries the recorded switch held (hard timeout not compared)
    recorded = [e for e in parse_dump_flows(S1_DUMP) if is_mirror_cookie(e.cookie)]
    assert len(recorded) == 2
    assert sorted(e.key() for e in intent[1]) == sorted(replace(e, hard_timeout=UNCHECKED_HARD).key()
                                                        for e in recorded)


def test_overlapping_taps_are_checked_as_the_merged_entries_the_component_installs() -> None:
    """A 5-tuple tap inside a source-host tap: the switch holds one entry per region (the
    5-tuple region carries both copies); netcheck expects exactly those, whatever hard
    timeout each got when it was (re)compiled, and misses the shared entry if it is gone."""
    five = {"tap_id": "flow", "dpid": 1, "match": {"ipv4_src": "10.0.0.1", "ipv4_dst": "10.0.0.5",
                                                  "tcp_src": 41401, "tcp_dst": 5401},
            "copy_port": 6, "vlan_tag": 201, "installed_at": 100.0}
    host = {"tap_id": "host", "dpid": 1, "match": {"ipv4_src": "10.0.0.1"}, "copy_port": 6, "vlan_tag": 202,
            "installed_at": 130.0}
    fabric = parse_fabric(SEED)
    records, rules = [], []
    for n, tap in enumerate((five, host)):
        spec = parse_mirror_params({k: v for k, v in tap.items() if k != "installed_at"})
        cookie = COOKIE + n
        records.append({**spec.to_params(), "cookie": cookie, "installed_at": tap["installed_at"]})
        rules += merge.rules_for(spec, cookie, tap["installed_at"])
    installed = [c.entry for c in of13.compile_mirrors(rules, 131.0, lambda m: ("NORMAL",), True)]
    assert len(installed) == 2  # the host region, and the 5-tuple region carrying both tags
    shared = max(installed, key=lambda e: e.priority)
    assert {"set_field:vlan_vid=201", "set_field:vlan_vid=202"} <= set(shared.actions)

    baseline = intended_entries(fabric, 1)
    intent = mirror_intent(records, None, "1.3", fabric)
    assert check_switch(fabric, 1, baseline + installed, None, intent[1]).clean
    diff = check_switch(fabric, 1, baseline + [e for e in installed if e is not shared], None, intent[1])
    assert [e.priority for e in diff.missing] == [shared.priority] and diff.unexpected == []


def test_dump_flows_runs_ovs_ofctl_with_the_version() -> None:
    seen = []

    def runner(cmd: list[str]) -> str:
        seen.append(cmd)
        return S1_DUMP

    assert len(dump_flows("s1", "1.0", runner)) == 27
    assert seen == [["ovs-ofctl", "-O", "OpenFlow10", "--no-names", "dump-flows", "s1"]]
