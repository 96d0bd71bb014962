"""The POX component on the seed topology (OVS + Mininet): what only OpenFlow 1.0 needs.

The shared conformance suite (``test_conformance_pox.py``) covers the protocol; this
module covers the POX-specific parts: overlapping mirrors merged into one OF1.0
entry (both taps' copies reach the capture host), the 2013 prototype's defects
(reinstall storm on PacketIn, crash on a not-yet-connected switch), static mode
from a file with timed entries that come back (B5/B6), and removing a tap the
component only knows from the switch's table after a restart.
Needs the POX checkout (``scripts/setup`` puts it beside the venv; ``POX_HOME`` overrides).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Iterator

import pytest

from demon.controller.spec import STATIC_COOKIE
from demon.rpc.protocol import RpcError
from tests.demon.controller.conformance import Capture, ConformanceSuite, H, is_flow
from tests.demon.controller.conftest import NO_POX, POX_HOME, Component, seed_fabric_json, write_json

pytestmark = [pytest.mark.integration, pytest.mark.pox, pytest.mark.slow,
              pytest.mark.skipif(not POX_HOME, reason=NO_POX)]
S1, S2, S3 = 1, 2, 3
UPLINK = 6


def _require_pox() -> None:
    if not POX_HOME:
        pytest.skip(NO_POX)


def _up(component: Component, lab_builder: Any) -> Any:
    lab = lab_builder(component.of_port, of_version=10)
    client = component.client()
    deadline = time.monotonic() + 30
    while len(client.list_switches()) < 3:
        if time.monotonic() > deadline:
            lab.stop()
            raise AssertionError(f"switches did not connect:\n{component.log_tail()}")
        time.sleep(0.1)
    return lab


@pytest.fixture(scope="module")
def component(module_lab_lock: None, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Component]:
    _require_pox()
    workdir = tmp_path_factory.mktemp("pox-lab")
    comp = Component("pox", workdir, write_json(workdir / "fabric.json", seed_fabric_json())).start()
    yield comp
    comp.stop()


@pytest.fixture(scope="module")
def lab(component: Component) -> Iterator[Any]:
    from topo.seed import build_seed

    lab = _up(component, build_seed)
    yield lab
    lab.stop()


@pytest.fixture(scope="module")
def rpc(lab: Any, component: Component) -> Any:
    return component.client()


@pytest.fixture
def events(lab: Any, component: Component) -> Iterator[Any]:
    sub = component.client().subscribe()
    assert sub.wait_connected(10)
    yield sub
    sub.close()


def icmp_requests(packets: list[dict[str, Any]], src: int, dst: int) -> list[dict[str, Any]]:
    return [p for p in packets if is_flow(p, src, dst) and p.get("proto") == 1]


def ping(lab: Any, src: int, dst: int, count: int = 3) -> None:
    out = lab.host(f"h{src}").cmd(f"ping -c{count} -i0.2 -W1 {H[dst]}")
    assert ", 0% packet loss" in out, out


def test_overlapping_taps_are_merged_and_both_get_copies(lab: Any, rpc: Any, events: Any, component: Component,
                                                         tmp_path: Path) -> None:
    ping(lab, 1, 2, 1)  # ARP resolved before capturing
    ping(lab, 1, 3, 1)
    host = rpc.install_mirror("pox-host", S1, {"ipv4_src": H[1]}, UPLINK, idle_timeout=0)
    flow = rpc.install_mirror("pox-flow", S1, {"ipv4_src": H[1], "ipv4_dst": H[2], "ip_proto": 1}, UPLINK,
                              vlan_tag=10, idle_timeout=0)
    assert host["entries"] == 1 and flow["entries"] == 1
    mirrors = [e for e in rpc.flow_stats(S1) if e["priority"] >= 40000]
    assert sorted((e["priority"], tuple(e["actions"])) for e in mirrors) == [
        (40000, ("NORMAL", "output:6")),
        (40001, ("NORMAL", "output:6", "push_vlan:0x8100", "set_field:vlan_vid=10", "output:6"))]
    with Capture(lab, tmp_path / "merged.pcap", "icmp or vlan") as cap:
        ping(lab, 1, 2)
        ping(lab, 1, 3)
    packets = cap.packets()
    to_h2 = icmp_requests(packets, 1, 2)
    assert sorted(str(p["vlan"]) for p in to_h2) == ["10", "10", "10", "None", "None", "None"]
    assert [p["vlan"] for p in icmp_requests(packets, 1, 3)] == [None, None, None]
    assert icmp_requests(packets, 2, 1) == []  # replies are not h1's traffic

    ConformanceSuite.drain(events)
    assert rpc.remove_mirror("pox-host")["removed"] is True
    event = ConformanceSuite.wait_event(events, lambda e: e.event == "mirror_removed"
                                        and e.params["tap_id"] == "pox-host")
    assert event.params["reason"] == "delete"
    remaining = [e for e in rpc.flow_stats(S1) if e["priority"] >= 40000]
    assert [(e["priority"], e["actions"]) for e in remaining] == [
        (40000, ["NORMAL", "push_vlan:0x8100", "set_field:vlan_vid=10", "output:6"])]
    assert [m["tap_id"] for m in rpc.list_mirrors(S1)] == ["pox-flow"]
    with Capture(lab, tmp_path / "after.pcap", "icmp or vlan") as cap:
        ping(lab, 1, 2)
        ping(lab, 1, 3)
    packets = cap.packets()
    assert [p["vlan"] for p in icmp_requests(packets, 1, 2)] == [10, 10, 10]
    assert icmp_requests(packets, 1, 3) == []
    assert rpc.remove_mirror("pox-flow")["removed"] is True
    assert [e for e in rpc.flow_stats(S1) if e["priority"] >= 40000] == []


def test_merged_tap_expiry_leaves_the_other_tap_whole(lab: Any, rpc: Any, events: Any, tmp_path: Path) -> None:
    ping(lab, 1, 4, 1)
    ConformanceSuite.drain(events)
    rpc.install_mirror("pox-long", S1, {"ipv4_src": H[1]}, UPLINK, idle_timeout=0, hard_timeout=60)
    rpc.install_mirror("pox-short", S1, {"ipv4_src": H[1], "ipv4_dst": H[4], "ip_proto": 1}, UPLINK,
                       vlan_tag=20, idle_timeout=0, hard_timeout=2)
    event = ConformanceSuite.wait_event(events, lambda e: e.event == "mirror_removed", timeout=10)
    assert (event.params["tap_id"], event.params["reason"]) == ("pox-short", "hard_timeout")
    deadline = time.monotonic() + 5
    while [m["tap_id"] for m in rpc.list_mirrors(S1)] != ["pox-long"]:
        assert time.monotonic() < deadline, rpc.list_mirrors(S1)
        time.sleep(0.1)
    with Capture(lab, tmp_path / "long.pcap", "icmp or vlan") as cap:
        ping(lab, 1, 4)
    assert [p["vlan"] for p in icmp_requests(cap.packets(), 1, 4)] == [None, None, None]
    rpc.remove_mirror("pox-long")


def test_idle_tap_kept_alive_by_traffic_in_a_merged_entry(lab: Any, rpc: Any, events: Any, tmp_path: Path) -> None:
    """h1's only traffic is the 5-tuple tap's: the host tap's own entry idles out, yet the
    host tap must live (and copy) while that traffic lasts, and end once it stops."""
    ping(lab, 1, 5, 1)
    ConformanceSuite.drain(events)
    rpc.install_mirror("pox-idle-host", S1, {"ipv4_src": H[1]}, UPLINK, idle_timeout=2, hard_timeout=60)
    rpc.install_mirror("pox-idle-flow", S1, {"ipv4_src": H[1], "ipv4_dst": H[5], "ip_proto": 1}, UPLINK,
                       vlan_tag=30, idle_timeout=0, hard_timeout=60)
    try:
        with Capture(lab, tmp_path / "idle.pcap", "icmp or vlan") as cap:
            ping(lab, 1, 5, 30)  # 6 s: three times the host tap's idle timeout
        removed_early = []
        while True:
            try:
                removed_early.append(events.get(timeout=0.05))
            except Exception:  # queue.Empty
                break
        assert [e.params["tap_id"] for e in removed_early if e.event == "mirror_removed"] == []
        copies = icmp_requests(cap.packets(), 1, 5)
        assert sorted(str(p["vlan"]) for p in copies) == ["30"] * 30 + ["None"] * 30
        event = ConformanceSuite.wait_event(events, lambda e: e.event == "mirror_removed", timeout=15)
        assert (event.params["tap_id"], event.params["reason"]) == ("pox-idle-host", "idle_timeout")
        assert [m["tap_id"] for m in rpc.list_mirrors(S1)] == ["pox-idle-flow"]
    finally:
        rpc.remove_mirror("pox-idle-host")
        rpc.remove_mirror("pox-idle-flow")


def test_packet_in_never_reinstalls_flows(lab: Any, rpc: Any) -> None:
    """The prototype re-sent its whole flow set on every PacketIn (baseline §1.4)."""
    before = {d: {(e["priority"], str(e["match"])): e["duration_s"] for e in rpc.flow_stats(d)} for d in (1, 2, 3)}
    # h11 (the capture port) has no entry on s3: its packets miss the table and go to POX
    lab.host("h11").cmd(f"ping -c5 -i0.1 -W1 {H[1]}")
    lab.host("h11").cmd("arping -c3 -w1 10.0.0.1 >/dev/null 2>&1 || true")
    time.sleep(0.5)
    after = {d: {(e["priority"], str(e["match"])): e["duration_s"] for e in rpc.flow_stats(d)} for d in (1, 2, 3)}
    for dpid in (1, 2, 3):
        assert after[dpid].keys() == before[dpid].keys()
        assert all(after[dpid][k] > before[dpid][k] for k in before[dpid]), f"s{dpid}: an entry was re-added"


def test_switch_not_connected_is_an_error_reply(rpc: Any) -> None:
    with pytest.raises(RpcError) as info:
        rpc.install_mirror("pox-ghost", 42, {"ip_proto": 6}, UPLINK)
    assert info.value.code == -32002 and "42" in info.value.message
    for method in ("flow_stats", "port_stats"):
        with pytest.raises(RpcError) as info:
            rpc.call(method, dpid=42)
        assert info.value.code == -32002
    with pytest.raises(RpcError) as info:
        rpc.list_mirrors(42)
    assert info.value.code == -32002
    # a static config naming an absent switch is kept for when it connects
    assert rpc.set_static({"timeout": 0, "switches": {"42": {"pairs": [[1, 2]]}}}) == {"switches": 0, "entries": 0}
    assert rpc.set_static(None) == {"switches": 0, "entries": 0}
    assert rpc.hello()["component"] == "pox"


def test_port_stats_count_traffic(lab: Any, rpc: Any) -> None:
    before = {p["port_no"]: p for p in rpc.port_stats(S1)}
    assert set(before) >= set(range(1, 11))
    ping(lab, 1, 2, 5)
    time.sleep(0.6)
    after = {p["port_no"]: p for p in rpc.port_stats(S1)}
    assert after[1]["rx_packets"] - before[1]["rx_packets"] >= 5
    assert after[2]["tx_packets"] - before[2]["tx_packets"] >= 5


def _restart(component: Component, forget: bool = False) -> Any:
    component.stop()
    if forget:
        (component.workdir / "pox-taps.json").unlink()
    component.start()
    rpc = component.client()
    deadline = time.monotonic() + 30
    while len(rpc.list_switches()) < 3:
        assert time.monotonic() < deadline, component.log_tail()
        time.sleep(0.1)
    return rpc


def test_orphan_tap_removed_after_restart_without_state(lab: Any, component: Component) -> None:
    rpc = component.client()
    first = rpc.install_mirror("pox-orphan", S2, {"ipv4_src": H[6], "ipv4_dst": H[7], "ip_proto": 17,
                                                   "udp_dst": 9999}, UPLINK, hard_timeout=120)
    rpc = _restart(component, forget=True)
    listed = [m for m in rpc.list_mirrors(S2) if m["cookie"] == first["cookie"]]
    assert len(listed) == 1 and listed[0]["tap_id"] is None  # known from the switch only
    assert rpc.remove_mirror("pox-orphan") == {"tap_id": "pox-orphan", "removed": True, "packets": 0, "bytes": 0}
    assert [e for e in rpc.flow_stats(S2) if e["cookie"] == first["cookie"]] == []
    assert rpc.remove_mirror("pox-orphan")["removed"] is False


def test_tap_removed_while_component_was_down_is_forgotten(lab: Any, component: Component) -> None:
    rpc = component.client()
    kept = rpc.install_mirror("pox-kept", S2, {"ipv4_src": H[8], "ip_proto": 1}, UPLINK, hard_timeout=120)
    lost = rpc.install_mirror("pox-lost", S2, {"ipv4_src": H[9], "ip_proto": 1}, UPLINK, hard_timeout=120)
    component.stop()
    lab.ofctl("--strict", "del-flows", "s2", f"priority=40000,icmp,nw_src={H[9]}")
    rpc = _restart(component)
    assert {m["tap_id"]: m["cookie"] for m in rpc.list_mirrors(S2)} == {"pox-kept": kept["cookie"]}
    assert rpc.install_mirror("pox-lost", S2, {"ipv4_src": H[9], "ip_proto": 1}, UPLINK,
                              hard_timeout=120)["replaced"] is False
    again = rpc.install_mirror("pox-kept", S2, {"ipv4_src": H[8], "ip_proto": 1}, UPLINK, hard_timeout=120)
    assert again == kept  # remembered: the same install is a no-op
    for tap in ("pox-kept", "pox-lost"):
        assert rpc.remove_mirror(tap)["removed"] is True
    assert [e for e in rpc.flow_stats(S2) if e["priority"] >= 40000] == []
    assert lost["cookie"] != kept["cookie"]


# ------------------------------------------- static mode from a file (B5, B6)

def test_static_file_with_timed_entries_that_come_back(module_lab_lock: None, tmp_path: Path) -> None:
    """``--static`` file; entries time out after 2 s and are re-installed (never a PacketIn storm)."""
    _require_pox()
    from topo.seed import build_seed

    static = {"timeout": 2, "switches": {"1": {"pairs": [[1, 2], [3, 4]], "mirror_sources": [1],
                                               "mirror_destinations": [6]},
                                         "3": {"to_capture": [1, 2, 3, 4, 5], "capture_port": 11}}}
    comp = Component("pox", tmp_path, write_json(tmp_path / "fabric.json", seed_fabric_json()),
                     static=write_json(tmp_path / "static.json", static)).start()
    try:
        lab = _up(comp, build_seed)
        try:
            rpc = comp.client()
            table = {e["match"]["in_port"]: e["actions"] for e in rpc.flow_stats(S1) if e["cookie"] == STATIC_COOKIE}
            assert table == {1: ["output:2", "output:6"], 2: ["output:1", "output:6"], 3: ["output:4"],
                             4: ["output:3"]}
            time.sleep(3.5)  # beyond the 2 s timeout: removed by the switch, re-added by the component
            again = [e for e in rpc.flow_stats(S1) if e["cookie"] == STATIC_COOKIE]
            assert len(again) == 4 and all(e["duration_s"] < 3.5 for e in again)
            with Capture(lab, tmp_path / "static.pcap", "icmp") as cap:
                ping(lab, 1, 2, 2)
                ping(lab, 3, 4, 2)
            pairs = sorted({(p["src"], p["dst"]) for p in cap.packets()})
            assert pairs == [(H[1], H[2]), (H[2], H[1])]  # h3↔h4 is paired, not mirrored
        finally:
            lab.stop()
    finally:
        comp.stop()
