"""OF1.3 compilation of overlapping mirrors, checked against the fake OpenFlow 1.3 table (``fakeoftable``).

The fake applies what a switch does: the single highest-priority matching entry
wins, its apply-actions run in order with the packet's VLAN tag as state (push adds
a tag, a second push would stack one, set_field rewrites it, pop removes it), and
forwarding (``NORMAL``, a static ``output``, or ``goto_table:1`` after the actions)
must see the packet as it came in.
"""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from demon.controller import merge, of13
from demon.controller.spec import normalise_match
from tests.demon.controller.fakeoftable import FakeFlowTable, compiled_changes
from tests.demon.controller.test_of10_merge import NOW, match_fields, packets, tcp

FORWARD_PORT = 2  # a static pair's output in the non-L2 pipeline


def rule(tap: str, match: dict[str, Any], copy_port: int = 6, vlan: int | None = None, priority: int = 40000,
         idle: int = 30, hard: int = 300, direction: str = "forward") -> merge.MirrorRule:
    return merge.MirrorRule(tap, direction, merge.ordered(normalise_match(match, "1.3")), copy_port, vlan,
                            priority, 0xDE30_8000_0000 + len(tap), idle, NOW + hard)


def install(rules: list[merge.MirrorRule], l2_table: bool = True, table: FakeFlowTable | None = None,
            installed: dict | None = None) -> tuple[FakeFlowTable, dict]:
    table = table or FakeFlowTable("1.3", forward_ports=[FORWARD_PORT])
    installed = {} if installed is None else installed
    forward = (lambda m: ("NORMAL",)) if l2_table else (lambda m: (f"output:{FORWARD_PORT}",))
    wanted = of13.compile_mirrors(rules, NOW, forward, l2_table)
    to_add, to_delete = merge.diff(installed, wanted)
    table.apply(compiled_changes(to_add, to_delete))
    installed.clear()
    installed.update({c.key: c for c in wanted})
    return table, installed


FLOW = {"ipv4_src": "10.0.0.1", "ipv4_dst": "10.0.0.2", "tcp_src": 40000, "tcp_dst": 5001}


def test_single_tap_matches_the_unmerged_entry() -> None:
    table, _ = install([rule("t", FLOW, copy_port=6, vlan=9)])
    (entry,) = table.mirrors().values()
    assert entry.actions == ("push_vlan:0x8100", "set_field:vlan_vid=9", "output:6", "pop_vlan", "goto_table:1")


def test_five_tuple_and_host_taps_with_two_tags() -> None:
    flow = rule("flow", FLOW, copy_port=6, vlan=101)
    host = rule("host", {"ipv4_src": "10.0.0.1"}, copy_port=6, vlan=102)
    table, installed = install([flow, host])
    assert len(installed) == 2
    inner = table.lookup(tcp("10.0.0.1", "10.0.0.2", 40000, 5001))
    assert inner is not None and inner.actions == (
        "push_vlan:0x8100", "set_field:vlan_vid=101", "output:6", "set_field:vlan_vid=102", "output:6",
        "pop_vlan", "goto_table:1")  # one push: a second would stack a second tag
    assert table.route(tcp("10.0.0.1", "10.0.0.2", 40000, 5001)) == (["goto_table:1"], [(6, 101), (6, 102)])
    assert table.route(tcp("10.0.0.1", "10.0.0.3")) == (["goto_table:1"], [(6, 102)])
    assert table.route(tcp("10.0.0.4", "10.0.0.2")) == (["baseline"], [])


def test_untagged_copies_before_tagged_ones() -> None:
    rules = [rule("a", {"tcp_dst": 80}, copy_port=6, vlan=20), rule("b", {"tcp_dst": 80}, copy_port=7),
             rule("c", {"tcp_dst": 80}, copy_port=8, vlan=10)]
    table, _ = install(rules)
    (entry,) = table.mirrors().values()
    assert entry.actions == ("output:7", "push_vlan:0x8100", "set_field:vlan_vid=10", "output:8",
                             "set_field:vlan_vid=20", "output:6", "pop_vlan", "goto_table:1")
    table, _ = install(rules, l2_table=False)
    (entry,) = table.mirrors().values()
    assert entry.actions[:2] == (f"output:{FORWARD_PORT}", "output:7")  # static forwarding first, untagged
    assert table.route(tcp("1.1.1.1", "2.2.2.2")) == ([f"output:{FORWARD_PORT}"], [(7, None), (8, 10), (6, 20)])


def test_bidirectional_and_one_way_taps() -> None:
    fwd = rule("bi", FLOW, copy_port=6)
    rev = rule("bi", {"ipv4_src": "10.0.0.2", "ipv4_dst": "10.0.0.1", "tcp_src": 5001, "tcp_dst": 40000},
               copy_port=6, direction="reverse")
    oneway = rule("dst", {"ipv4_dst": "10.0.0.1"}, copy_port=7, vlan=5)
    table, _ = install([fwd, rev, oneway])
    assert table.route(tcp("10.0.0.2", "10.0.0.1", 5001, 40000)) == (["goto_table:1"], [(6, None), (7, 5)])
    assert table.route(tcp("10.0.0.1", "10.0.0.2", 40000, 5001)) == (["goto_table:1"], [(6, None)])
    assert table.route(tcp("10.0.0.3", "10.0.0.1")) == (["goto_table:1"], [(7, 5)])


def test_removing_one_tap_leaves_the_other_whole() -> None:
    flow = rule("flow", FLOW, copy_port=6, vlan=101)
    host = rule("host", {"ipv4_src": "10.0.0.1"}, copy_port=6, vlan=102)
    table, installed = install([flow, host])
    install([host], table=table, installed=installed)
    assert len(table.mirrors()) == 1
    assert table.route(tcp("10.0.0.1", "10.0.0.2", 40000, 5001)) == (["goto_table:1"], [(6, 102)])


def test_ipv6_and_masked_mac_overlaps() -> None:
    assert merge.intersect({"ipv6_src": "2001:db8::/32"}, {"ipv6_src": "2001:db8::1"}) == {"ipv6_src": "2001:db8::1"}
    assert merge.intersect({"ipv6_src": "2001:db8::/32"}, {"ipv6_src": "2001:db9::1"}) is None
    assert merge.covers({"eth_dst": "01:00:00:00:00:00/01:00:00:00:00:00"}, {"eth_dst": "ff:ff:ff:ff:ff:ff"})
    assert not merge.covers({"eth_dst": "ff:ff:ff:ff:ff:ff"}, {"eth_dst": "01:00:00:00:00:00/01:00:00:00:00:00"})
    assert merge.intersect({"eth_src": "00:00:00:00:00:01"}, {"eth_src": "00:00:00:00:00:02"}) is None
    six = rule("six", {"ipv6_src": "2001:db8::/32"}, copy_port=6)
    one = rule("one", {"ipv6_src": "2001:db8::1", "tcp_dst": 80}, copy_port=7)
    table, installed = install([six, one])
    packet = {"in_port": 1, "eth_type": 0x86DD, "ip_proto": 6, "ipv6_src": "2001:db8::1", "tcp_dst": 80}
    assert table.route(packet) == (["goto_table:1"], [(6, None), (7, None)])
    assert table.route({**packet, "tcp_dst": 22}) == (["goto_table:1"], [(6, None)])
    # the switch reports the entry's match back in OXM form: the same key
    inner = table.lookup(packet)
    assert inner is not None
    echoed = of13.oxm_to_match(of13.match_to_oxm(inner.match))
    assert merge.entry_key(inner.priority, echoed) in installed


# ------------------------------------------------------------- property check

taps = st.lists(st.tuples(match_fields, st.sampled_from([6, 7, 8]), st.sampled_from([None, 10, 20]),
                          st.sampled_from([100, 40000])), min_size=1, max_size=5)


@pytest.mark.parametrize("l2_table", [True, False])
@settings(max_examples=100, deadline=None)
@given(taps, st.lists(packets, min_size=1, max_size=8), st.integers(min_value=0, max_value=4))
def test_every_packet_gets_exactly_the_copies_it_is_owed(l2_table: bool, tap_list: list, pkts: list,
                                                          drop: int) -> None:
    rules = [rule(f"t{i}", m, port, vlan, prio) for i, (m, port, vlan, prio) in enumerate(tap_list)]
    table, installed = install(rules, l2_table)
    remaining = [r for i, r in enumerate(rules) if i != drop % len(rules)]
    install(remaining, l2_table, table, installed)
    fresh, _ = install(remaining, l2_table)
    assert {k: e.actions for k, e in table.mirrors().items()} == {k: e.actions for k, e in fresh.mirrors().items()}
    for packet in pkts:
        owed = {(r.copy_port, r.vlan_tag) for r in remaining if merge.matches_packet(r.match, packet)}
        forward, copies = table.route(packet)
        assert len(copies) == len(set(copies)), "each copy once"
        assert set(copies) == owed
        if owed:
            assert forward == (["goto_table:1"] if l2_table else [f"output:{FORWARD_PORT}"])
