"""OF1.0 mirror compilation, checked against the fake OpenFlow 1.0 table (``fakeoftable``):
the single highest-priority matching entry wins, its actions decide where the packet
and its copies go.
"""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from demon.controller import of10
from demon.controller.spec import normalise_match, parse_mirror_params
from tests.demon.controller.fakeoftable import FakeFlowTable, compiled_changes

NOW = 1_000_000.0


def rule(tap: str, match: dict[str, Any], copy_port: int = 6, vlan: int | None = None, priority: int = 40000,
         idle: int = 30, hard: int = 300, direction: str = "forward") -> of10.MirrorRule:
    return of10.MirrorRule(tap, direction, of10.ordered(normalise_match(match, "1.0")), copy_port, vlan,
                           priority, 0xDE30_8000_0000 + len(tap), idle, NOW + hard)


def fake10() -> FakeFlowTable:
    return FakeFlowTable("1.0", miss=("NORMAL",))


def install(rules: list[of10.MirrorRule], table: FakeFlowTable | None = None,
            installed: dict | None = None) -> tuple[FakeFlowTable, dict]:
    table = table or fake10()
    installed = {} if installed is None else installed
    wanted = of10.compile_mirrors(rules, NOW)
    to_add, to_delete = of10.diff(installed, wanted)
    table.apply(compiled_changes(to_add, to_delete))
    installed.clear()
    installed.update({c.key: c for c in wanted})
    return table, installed


def tcp(src: str, dst: str, sport: int = 1234, dport: int = 80, in_port: int = 1) -> dict[str, Any]:
    return {"in_port": in_port, "eth_type": 0x0800, "ip_proto": 6, "ipv4_src": src, "ipv4_dst": dst,
            "tcp_src": sport, "tcp_dst": dport}


def test_single_tap_forward_then_copy() -> None:
    table, _ = install([rule("t1", {"ipv4_src": "10.0.0.1", "tcp_dst": 80})])
    (entry,) = table.mirrors().values()
    assert entry.actions == ("NORMAL", "output:6")
    assert entry.match == {"eth_type": 0x0800, "ip_proto": 6, "ipv4_src": "10.0.0.1", "tcp_dst": 80}
    assert (entry.priority, entry.idle_timeout, entry.hard_timeout, entry.send_flow_rem) == (40000, 30, 300, True)
    assert table.route(tcp("10.0.0.1", "10.0.0.2")) == (["NORMAL"], [(6, None)])
    assert table.route(tcp("10.0.0.3", "10.0.0.2")) == (["NORMAL"], [])


def test_nested_taps_both_copies_in_the_overlap() -> None:
    host = rule("host", {"ipv4_src": "10.0.0.1"}, copy_port=6)
    flow = rule("flow", {"ipv4_src": "10.0.0.1", "ipv4_dst": "10.0.0.2", "tcp_src": 1234, "tcp_dst": 80},
                copy_port=7)
    table, installed = install([host, flow])
    assert len(installed) == 2
    assert table.route(tcp("10.0.0.1", "10.0.0.2")) == (["NORMAL"], [(6, None), (7, None)])
    assert table.route(tcp("10.0.0.1", "10.0.0.3")) == (["NORMAL"], [(6, None)])
    inner = table.lookup(tcp("10.0.0.1", "10.0.0.2"))
    outer = table.lookup(tcp("10.0.0.1", "10.0.0.3"))
    assert inner is not None and outer is not None and inner.priority > outer.priority


def test_crossing_taps_get_an_intersection_entry() -> None:
    a = rule("a", {"ipv4_src": "10.0.0.1"}, copy_port=6)
    b = rule("b", {"ipv4_dst": "10.0.0.2"}, copy_port=7)
    table, installed = install([a, b])
    assert len(installed) == 3
    assert table.route(tcp("10.0.0.1", "10.0.0.2")) == (["NORMAL"], [(6, None), (7, None)])
    assert table.route(tcp("10.0.0.1", "10.0.0.3")) == (["NORMAL"], [(6, None)])
    assert table.route(tcp("10.0.0.4", "10.0.0.2")) == (["NORMAL"], [(7, None)])
    merged = next(c for c in installed.values() if len(c.members) == 2)
    assert merged.owners == frozenset() and merged.entry.idle_timeout == 0
    assert merged.entry.cookie in (a.cookie, b.cookie)


def test_three_crossing_taps_need_the_triple_intersection() -> None:
    a = rule("a", {"ipv4_src": "10.0.0.1"}, copy_port=6)
    b = rule("b", {"ipv4_dst": "10.0.0.2"}, copy_port=7)
    c = rule("c", {"tcp_dst": 80}, copy_port=8)
    table, installed = install([a, b, c])
    assert len(installed) == 7  # 3 own + 3 pairwise + 1 triple
    assert table.route(tcp("10.0.0.1", "10.0.0.2", dport=80)) == (["NORMAL"], [(6, None), (7, None), (8, None)])
    assert table.route(tcp("10.0.0.1", "10.0.0.2", dport=22)) == (["NORMAL"], [(6, None), (7, None)])
    assert table.route(tcp("10.0.0.5", "10.0.0.2", dport=80)) == (["NORMAL"], [(7, None), (8, None)])


def test_disjoint_taps_stay_separate() -> None:
    table, installed = install([rule("a", {"tcp_dst": 80}), rule("b", {"udp_dst": 80})])
    assert len(installed) == 2 and {c.entry.priority for c in installed.values()} == {40000}


def test_same_copy_twice_is_one_output() -> None:
    table, _ = install([rule("a", {"ipv4_src": "10.0.0.1"}), rule("b", {"ipv4_dst": "10.0.0.2"})])
    assert table.route(tcp("10.0.0.1", "10.0.0.2")) == (["NORMAL"], [(6, None)])


def test_vlan_copies_after_untagged_and_after_forwarding() -> None:
    rules = [rule("a", {"tcp_dst": 80}, copy_port=6, vlan=20), rule("b", {"tcp_dst": 80}, copy_port=7),
             rule("c", {"tcp_dst": 80}, copy_port=8, vlan=10)]
    table, installed = install(rules)
    (entry,) = [c.entry for c in installed.values()]
    assert entry.actions == ("NORMAL", "output:7", "push_vlan:0x8100", "set_field:vlan_vid=10", "output:8",
                             "push_vlan:0x8100", "set_field:vlan_vid=20", "output:6")
    assert of10.to_of10_actions(entry.actions) == [
        ("output", of10.OFPP_NORMAL), ("output", 7), ("set_vlan_vid", 10), ("output", 8),
        ("set_vlan_vid", 20), ("output", 6)]
    assert table.route(tcp("1.1.1.1", "2.2.2.2")) == (["NORMAL"], [(7, None), (8, 10), (6, 20)])


def test_static_forwarding_comes_first() -> None:
    wanted = of10.compile_mirrors([rule("a", {"in_port": 1, "tcp_dst": 80})], NOW,
                                  forward=lambda m: ("output:2",) if m.get("in_port") == 1 else ("NORMAL",))
    assert wanted[0].entry.actions == ("output:2", "output:6")


def test_removal_recomputes_and_deletes_strictly() -> None:
    host = rule("host", {"ipv4_src": "10.0.0.1"}, copy_port=6)
    flow = rule("flow", {"ipv4_src": "10.0.0.1", "tcp_dst": 80}, copy_port=7)
    table, installed = install([host, flow])
    before = dict(installed)
    wanted = of10.compile_mirrors([flow], NOW)
    to_add, to_delete = of10.diff(installed, wanted)
    assert {c.key for c in to_delete} == {c.key for c in before.values() if "host" in {m[0] for m in c.owners}} | \
        {c.key for c in before.values() if c.key not in {w.key for w in wanted}}
    assert [c.entry.actions for c in to_add] == [("NORMAL", "output:7")]
    table.apply(compiled_changes(to_add, to_delete))
    assert table.route(tcp("10.0.0.1", "10.0.0.2", dport=80)) == (["NORMAL"], [(7, None)])
    assert table.route(tcp("10.0.0.1", "10.0.0.2", dport=22)) == (["NORMAL"], [])


def test_unchanged_entries_are_not_resent() -> None:
    a = rule("a", {"tcp_dst": 80})
    _, installed = install([a])
    assert of10.diff(installed, of10.compile_mirrors([a], NOW + 50)) == ([], [])


def test_hard_timeout_is_earliest_member_deadline() -> None:
    long = rule("long", {"ipv4_src": "10.0.0.1"}, hard=300)
    short = rule("short", {"ipv4_src": "10.0.0.1", "tcp_dst": 80}, hard=60)
    entries = {c.owners: c for c in of10.compile_mirrors([long, short], NOW + 10)}
    assert entries[frozenset({("long", "forward")})].entry.hard_timeout == 290
    assert entries[frozenset({("short", "forward")})].entry.hard_timeout == 50


def test_ended_rules() -> None:
    long = rule("long", {"ipv4_src": "10.0.0.1"}, hard=300)
    short = rule("short", {"ipv4_src": "10.0.0.1", "tcp_dst": 80}, hard=60)
    rules = {r.key: r for r in (long, short)}
    inner = next(c for c in of10.compile_mirrors(rules.values(), NOW) if len(c.members) == 2)
    assert of10.ended_rules(inner, "idle_timeout", rules, NOW + 5) == {("short", "forward")}
    assert of10.ended_rules(inner, "hard_timeout", rules, NOW + 60) == {("short", "forward")}
    assert of10.ended_rules(inner, "hard_timeout", rules, NOW + 300) == {("short", "forward"), ("long", "forward")}
    # the entry's fail-safe ended before any member's deadline (a tap extended without a
    # rewrite, or the switch's clock ahead): nothing ends, the entry is re-armed
    assert of10.ended_rules(inner, "hard_timeout", rules, NOW + 20) == set()


def test_idle_owner_kept_alive_by_its_merged_sub_region() -> None:
    host = rule("host", {"ipv4_src": "10.0.0.1"}, idle=2)
    flow = rule("flow", {"ipv4_src": "10.0.0.1", "tcp_dst": 80}, idle=0)
    installed = {c.key: c for c in of10.compile_mirrors([host, flow], NOW)}
    own = next(c for c in installed.values() if c.owners == {("host", "forward")})
    sub = next(c for c in installed.values() if c.owners == {("flow", "forward")})
    assert own.entry.idle_timeout == 2 and sub.entry.idle_timeout == 0
    assert of10.kept_alive(own, installed, {sub.key: 10}, {}) == {("host", "forward")}
    assert of10.kept_alive(own, installed, {sub.key: 10}, {sub.key: 10}) == set()
    assert of10.kept_alive(own, installed, {}, {}) == set()
    assert of10.kept_alive(sub, installed, {own.key: 5}, {}) == set()  # "flow" is not inside "host"'s own entry


def test_bidirectional_spec_gives_two_rules() -> None:
    spec = parse_mirror_params({"tap_id": "t", "dpid": 1, "copy_port": 6, "bidirectional": True,
                                "match": {"ipv4_src": "10.0.0.1", "ipv4_dst": "10.0.0.2", "tcp_dst": 80}}, "1.0")
    fwd, rev = of10.rules_for(spec, 0xDE30_8000_0001, NOW)
    assert (fwd.direction, rev.direction) == ("forward", "reverse")
    assert rev.match == {"eth_type": 0x0800, "ip_proto": 6, "ipv4_src": "10.0.0.2", "ipv4_dst": "10.0.0.1",
                         "tcp_src": 80}
    table, _ = install([fwd, rev])
    assert table.route(tcp("10.0.0.2", "10.0.0.1", sport=80, dport=1234)) == (["NORMAL"], [(6, None)])


def test_priority_capped_and_never_tied() -> None:
    rules = [rule(f"t{i}", {"tcp_dst": 80}, priority=65535, copy_port=6 + i) for i in range(3)]
    table, _ = install(rules)
    assert [e.priority for e in table.mirrors().values()] == [65535]


def test_too_many_regions_refused() -> None:
    # every source tap crosses every destination tap: n*n intersections
    rules = [rule(f"s{i}", {"ipv4_src": f"10.0.0.{i}"}) for i in range(1, 33)] + \
            [rule(f"d{i}", {"ipv4_dst": f"10.0.1.{i}"}) for i in range(1, 33)]
    with pytest.raises(of10.Of10Error, match="overlapping"):
        of10.compile_mirrors(rules, NOW)
    assert len(of10.compile_mirrors(rules[:40], NOW)) == 40 + 32 * 8


# ------------------------------------------------------------- property check

ADDRS = ["10.0.0.0", "10.0.0.1", "10.0.0.2", "10.0.0.3"]
match_fields = st.fixed_dictionaries({}, optional={
    "in_port": st.sampled_from([1, 2]),
    "ipv4_src": st.sampled_from(ADDRS + ["10.0.0.0/31", "10.0.0.2/31", "10.0.0.0/30"]),
    "ipv4_dst": st.sampled_from(ADDRS + ["10.0.0.0/31", "10.0.0.0/30"]),
    "tcp_dst": st.sampled_from([80, 443]),
}).filter(bool)
taps = st.lists(st.tuples(match_fields, st.sampled_from([6, 7, 8]), st.sampled_from([None, 10, 20]),
                          st.sampled_from([100, 40000])), min_size=1, max_size=5)
packets = st.builds(tcp, st.sampled_from(ADDRS), st.sampled_from(ADDRS), st.just(1234),
                    st.sampled_from([80, 443, 22]), st.sampled_from([1, 2]))


@settings(max_examples=150, deadline=None)
@given(taps, st.lists(packets, min_size=1, max_size=8), st.integers(min_value=0, max_value=4))
def test_every_packet_gets_exactly_the_copies_it_is_owed(tap_list: list, pkts: list, drop: int) -> None:
    rules = [rule(f"t{i}", m, port, vlan, prio) for i, (m, port, vlan, prio) in enumerate(tap_list)]
    table, installed = install(rules)
    # removing one tap incrementally must leave the same table as compiling the rest afresh
    remaining = [r for i, r in enumerate(rules) if i != drop % len(rules)]
    install(remaining, table, installed)
    fresh, _ = install(remaining)
    assert {k: e.actions for k, e in table.mirrors().items()} == {k: e.actions for k, e in fresh.mirrors().items()}
    for packet in pkts:
        owed = {(r.copy_port, r.vlan_tag) for r in remaining if of10.matches_packet(r.match, packet)}
        forward, copies = table.route(packet)
        assert forward == ["NORMAL"]
        assert sorted(copies, key=str) == sorted(owed, key=str)
