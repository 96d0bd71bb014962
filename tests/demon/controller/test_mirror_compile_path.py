"""A lone tap's entries as the components compile them (``of13``/``of10.compile_mirrors``).

:func:`compiled_for` takes the path the mirror book's ``_compile`` takes for both
components: ``merge.rules_for`` → the version's
``compile_mirrors`` with the switch's own forwarding (``fabric.forward_actions``)
and, on OpenFlow 1.3, the learned L2 table where ``fabric.uses_l2_table`` says so.
Other test modules import it to get the entries a switch holds for one tap.
"""

from __future__ import annotations

import pytest

from demon.controller import merge, of10, of13
from demon.controller.fabric import (Entry, Fabric, StaticConfig, forward_actions, mirror_record, parse_fabric,
                                     parse_mirror_ports, uses_l2_table)
from demon.controller.spec import MirrorSpec, parse_mirror_params
from tests.demon.controller.test_fabric_roles_static import PROTOTYPE_FILE, SEED

NOW = 1_000_000.0
COOKIE = 0xDE30_8000_0001
TAG = ("push_vlan:0x8100", "set_field:vlan_vid=10")


def compiled_for(spec: MirrorSpec, cookie: int, openflow: str = "1.3", fabric: Fabric | None = None,
                 static: StaticConfig | None = None, now: float = NOW) -> list[merge.CompiledEntry]:
    """Every entry the component of ``openflow`` installs for ``spec`` alone, compiled at its install time."""
    rules = merge.rules_for(spec, cookie, now)

    def forward(match: dict) -> tuple[str, ...]:
        return forward_actions(static, spec.dpid, match)

    if openflow == "1.0":
        return of10.compile_mirrors(rules, now, forward)
    return of13.compile_mirrors(rules, now, forward, fabric is not None and uses_l2_table(fabric, spec.dpid, "1.3"))


def by_direction(compiled: list[merge.CompiledEntry]) -> dict[str, Entry]:
    """The entries each direction owns (its own match), keyed by direction."""
    out: dict[str, Entry] = {}
    for c in compiled:
        for _, direction in c.owners:
            assert direction not in out, f"two entries owned by {direction}"
            out[direction] = c.entry
    return out


def spec(dpid: int = 1, openflow: str = "1.3", **params: object) -> MirrorSpec:
    base = {"tap_id": "t", "dpid": dpid, "match": {"ipv4_src": "10.0.0.1"}, "copy_port": 6, "vlan_tag": 10}
    return parse_mirror_params({**base, **params}, openflow)


def test_through_the_l2_table_the_copy_goes_first_and_the_tag_is_popped_before_goto() -> None:
    fabric = parse_fabric(SEED)
    assert uses_l2_table(fabric, 1, "1.3") and not uses_l2_table(fabric, 1, "1.0")
    assert not uses_l2_table(fabric, 3, "1.3")
    (c,) = compiled_for(spec(), COOKIE, fabric=fabric)
    assert c.entry.actions == TAG + ("output:6", "pop_vlan", "goto_table:1")
    assert (c.entry.cookie, c.entry.send_flow_rem, c.entry.table_id) == (COOKIE, True, 0)
    mod = of13.flow_mod(c.entry)  # what the app sends: goto_table is the instruction after the actions
    assert mod["goto_table"] == 1 and mod["actions"][-1] == ("pop_vlan",)


def test_an_untagged_copy_through_the_l2_table_pushes_and_pops_nothing() -> None:
    (c,) = compiled_for(spec(vlan_tag=None), COOKIE, fabric=parse_fabric(SEED))
    assert c.entry.actions == ("output:6", "goto_table:1")


@pytest.mark.parametrize("openflow, dpid", [("1.0", 1), ("1.3", 3)], ids=["pox-of10", "osken-no-l2-table"])
def test_forwarding_comes_before_the_vlan_push(openflow: str, dpid: int) -> None:
    """Only the copy carries the tag; without the L2 table, NORMAL forwards as before the tap."""
    tap = spec(dpid, openflow, match={"ipv4_src": "10.0.0.1", "ipv4_dst": "10.0.0.2"}, bidirectional=True)
    compiled = compiled_for(tap, COOKIE, openflow, parse_fabric(SEED))
    entries = by_direction(compiled)
    assert len(compiled) == 2 and sorted(entries) == ["forward", "reverse"]
    for e in entries.values():
        assert e.actions == ("NORMAL",) + TAG + ("output:6",)
        assert e.send_flow_rem and (e.idle_timeout, e.hard_timeout, e.priority) == (30, 300, 40000)
    assert (entries["reverse"].match["ipv4_src"], entries["reverse"].match["ipv4_dst"]) == ("10.0.0.2", "10.0.0.1")
    if openflow == "1.0":  # POX sends it as one set_vlan_vid after the NORMAL output
        assert of10.to_of10_actions(entries["forward"].actions) == [
            ("output", of10.OFPP_NORMAL), ("set_vlan_vid", 10), ("output", 6)]


@pytest.mark.parametrize("openflow", ["1.0", "1.3"])
def test_a_static_pair_forwards_mirrored_traffic_ahead_of_the_copy(openflow: str) -> None:
    """On a static pair the pair's output forwards, even on a 1.3 filter switch with the L2 table."""
    static = parse_mirror_ports(PROTOTYPE_FILE)
    tap = spec(match={"in_port": 3}, openflow=openflow)
    (c,) = compiled_for(tap, COOKIE, openflow, parse_fabric(SEED), static)
    assert c.entry.actions == ("output:4",) + TAG + ("output:6",)


def test_mirror_record_rebuilds_a_tap_from_its_entries() -> None:
    tap = spec(match={"ipv4_src": "10.0.0.1", "ipv4_dst": "10.0.0.2"}, copy_port=7, vlan_tag=5,
               bidirectional=True)
    compiled = compiled_for(tap, COOKIE, fabric=parse_fabric(SEED))
    rows = [(c.entry, 3, 300, 2.0) for c in compiled]
    assert len(rows) == 2
    known = mirror_record(1, COOKIE, rows, tap, 100.0)
    unknown = mirror_record(1, COOKIE, rows, None, None, now=110.0)
    for rec in (known, unknown):
        assert (rec["copy_port"], rec["vlan_tag"], rec["bidirectional"]) == (7, 5, True)
        assert (rec["packets"], rec["bytes"]) == (6, 600)
    assert known["tap_id"] == "t" and known["match"] == dict(tap.match)
    assert unknown["tap_id"] is None and unknown["installed_at"] == 108.0
