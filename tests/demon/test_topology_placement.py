"""Placement: (agent, dataSource) → ingress filter port; uplink choice spreads load."""

from __future__ import annotations

from types import SimpleNamespace

from demon.topology import Location, Topology, parse_data_source

from .core_harness import AGENT, seed_port_map, seed_switches, seed_topology


def test_locate_through_the_port_map():
    topo = seed_topology()
    assert topo.locate(AGENT, "103") == Location(1, 3)
    assert topo.locate(AGENT, "0.205") == (2, 5)
    assert topo.locate(AGENT, 110) == (1, 10)
    assert topo.locate("10.0.0.99", "103") is None
    assert topo.locate(AGENT, "2.1003") is None  # a per-bridge sampler, not a port


def test_port_map_entries_as_client_objects_and_by_name():
    entries = [SimpleNamespace(agent="a", if_index=7, dpid=1, of_port=4, name="s1-eth4"),
               SimpleNamespace(agent="a", if_index=8, dpid=None, of_port=None, name="s2-eth2"),
               SimpleNamespace(agent="a", if_index=9, dpid=None, of_port=None, name="eth0")]
    topo = Topology(entries, seed_switches())
    assert topo.locate("a", "7") == (1, 4)
    assert topo.locate("a", "8") == (2, 2)  # resolved through the controller's port names
    assert topo.locate("a", "9") is None
    assert topo.port_of("a", 7) == 4


def test_ingress_problems():
    topo = seed_topology()
    assert topo.ingress_problem(Location(1, 2)) is None
    assert "uplink" in topo.ingress_problem(Location(1, 7))
    assert "'aggregation'" in topo.ingress_problem(Location(3, 11))
    assert "not connected" in Topology(seed_port_map(), []).ingress_problem(Location(1, 2))
    assert topo.is_copy(Location(3, 1)) and topo.is_copy(Location(2, 6))
    assert not topo.is_copy(Location(2, 1))


def tap(dpid, port, rate):
    return SimpleNamespace(dpid=dpid, copy_port=port, rate_bps=rate)


def test_choose_uplink_least_rate_then_fewest_then_lowest():
    topo = seed_topology()
    assert topo.choose_uplink(1, []) == 6
    taps = [tap(1, 6, 100), tap(1, 7, 50), tap(1, 8, 50), tap(1, 8, 0), tap(1, 9, 10),
            tap(1, 10, 10), tap(2, 9, 0)]
    assert topo.choose_uplink(1, taps) == 9  # 10 bps on 9 and 10: fewest taps tie → lowest
    assert topo.choose_uplink(3, []) == 1
    assert Topology([], []).choose_uplink(1, []) is None


def test_parse_data_source():
    assert parse_data_source("17") == 17 and parse_data_source("0.17") == 17
    assert parse_data_source("2.1") is None and parse_data_source("x") is None
    assert parse_data_source("0") is None
