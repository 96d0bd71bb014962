"""Neutral entries ↔ OpenFlow 1.3 FlowMod data (os-ken field names and value forms)."""

import pytest

from demon.controller import of13
from demon.controller.fabric import Entry, parse_fabric
from demon.controller.spec import parse_mirror_params
from tests.demon.controller.test_fabric_roles_static import SEED
from tests.demon.controller.test_mirror_compile_path import compiled_for


@pytest.mark.parametrize("dpid", [1, 3], ids=["filter-l2-table", "aggregation"])
def test_mirror_flow_mod(dpid: int) -> None:
    spec = parse_mirror_params({"tap_id": "t", "dpid": dpid, "copy_port": 6, "vlan_tag": 10,
                                "match": {"ipv4_src": "10.0.0.0/24", "tcp_dst": 80, "vlan_vid": 3}})
    (c,) = compiled_for(spec, 0xDE30_8000_0001, fabric=parse_fabric(SEED))
    mod = of13.flow_mod(c.entry)
    assert mod["flags"] == of13.OFPFF_SEND_FLOW_REM and mod["cookie"] == 0xDE30_8000_0001
    assert (mod["table_id"], mod["priority"], mod["idle_timeout"], mod["hard_timeout"]) == (0, 40000, 30, 300)
    assert mod["match"]["ipv4_src"] == ("10.0.0.0", "255.255.255.0")
    assert mod["match"]["vlan_vid"] == 0x1000 | 3
    copy = [("push_vlan", 0x8100), ("set_field", "vlan_vid", 0x1000 | 10), ("output", 6)]
    if dpid == 1:  # the copy first, its tag popped, then the L2 table as an instruction
        assert mod["actions"] == copy + [("pop_vlan",)] and mod["goto_table"] == 1
    else:
        assert mod["actions"] == [("output", of13.OFPP_NORMAL)] + copy and mod["goto_table"] is None


def test_round_trip_through_flow_stats_form() -> None:
    entry = Entry(20, {"in_port": 1, "eth_dst": "01:00:00:00:00:00/01:00:00:00:00:00"},
                  ("output:2", "output:3"), 0xDE30_0000_0001)
    mod = of13.flow_mod(entry)
    stat = {"priority": 20, "cookie": entry.cookie, "match": list(mod["match"].items()),
            "actions": mod["actions"], "idle_timeout": 0, "hard_timeout": 0, "flags": 0}
    assert of13.stats_to_entry(stat).key() == entry.key()
    assert of13.entry_from_json(of13.entry_to_json(entry)).key() == entry.key()


def test_goto_table_becomes_an_instruction_after_the_actions() -> None:
    mod = of13.flow_mod(Entry(10, {"in_port": 1}, ("learn(table=1)", "goto_table:1"), 1))
    assert mod["goto_table"] == 1
    assert mod["actions"] == [("learn", 1, 300, 10, 0xDE30_0000_0003)]


def test_delete_by_cookie_covers_all_tables() -> None:
    mod = of13.delete_by_cookie(0xDE30_8000_0001)
    assert mod["command"] == "delete" and mod["table_id"] == of13.OFPTT_ALL
    assert mod["cookie_mask"] == 0xFFFFFFFF_FFFFFFFF and mod["match"] == {}


@pytest.mark.parametrize("text", ["NORMAL", "output:6", "push_vlan:0x8100", "set_field:vlan_vid=10",
                                  "pop_vlan", "CONTROLLER", "goto_table:1", "learn(table=1)"])
def test_action_strings_round_trip(text: str) -> None:
    assert of13.action_to_string(of13.action_from_string(text)) == text


def test_unknown_action_is_refused() -> None:
    with pytest.raises(ValueError, match="unsupported action"):
        of13.action_from_string("meter:1")


def test_a_strict_delete_names_the_entry_only() -> None:
    """Nothing the switch would check beyond table, priority and match (an output to a port
    it refused must not make the delete that undoes it fail too)."""
    entry = Entry(40000, {"eth_type": 0x0800, "ipv4_src": "10.0.0.1"}, ("output:4294967039", "goto_table:1"),
                  0xDE30_8000_0001, 30, 300, True)
    mod = of13.flow_mod(entry, "delete_strict")
    assert (mod["command"], mod["table_id"], mod["priority"], mod["match"]) == (
        "delete_strict", 0, 40000, {"eth_type": 0x0800, "ipv4_src": "10.0.0.1"})
    assert (mod["actions"], mod["goto_table"], mod["cookie_mask"], mod["flags"]) == ([], None, 0, 0)
