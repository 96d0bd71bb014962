"""Decision core: caps, capture budget, one mirror per flow, placement failures, storms."""

from __future__ import annotations

from dataclasses import replace

from demon.core import awaiting_placement
from demon.model import InstallMirror, OperatorRelease, TopFlows
from demon.policy import GlobalLimits
from demon.topology import Topology

from .core_harness import AGENT, Harness, flow, installs, policy, seed_port_map, seed_switches


def limits(**fields) -> GlobalLimits:
    return GlobalLimits.model_validate(fields)


def test_policy_cap_makes_further_flows_wait_and_records_once():
    h = Harness([policy(max_taps=2)])
    for n in range(4):
        h.event(flow(n))
    h.at(1).event(flow(3))  # re-sighting of a waiting flow: no second record
    assert len(h.live()) == 2
    waiting = h.records("waiting")
    assert [w.detail["flow_key"] for w in waiting] == [flow(2), flow(3)]
    assert all("policy cap reached (2 taps)" in w.detail["cause"] for w in waiting)
    assert waiting[0].tap_id is None


def test_waiting_flow_is_admitted_when_room_frees():
    h = Harness([policy(max_taps=1, interval="10s")])
    h.event(flow(1))
    h.event(flow(2))
    first = h.live()[0]
    h.at(2).feed(OperatorRelease(first.tap_id, who="op"))
    assert [t.flow_key for t in h.live()] == [flow(2)]
    assert h.records("created")[-1].detail["waited"].startswith("policy cap")


def test_stale_waiting_flow_is_dropped_not_admitted_later():
    h = Harness([policy(max_taps=1, interval="2s")])  # stale after 6 s
    h.event(flow(1))
    h.event(flow(2))
    h.tick(7)
    assert ("big", flow(2)) not in h.state.watch
    assert h.records("dropped")[0].detail["flow_key"] == flow(2)


def test_global_cap_holds_over_policies():
    a = policy(name="a", max_taps=3)
    b = policy(name="b", max_taps=3)
    h = Harness([a, b], limits=limits(max_taps=4))
    for n in range(3):
        h.event(flow(n), policy="a")
        h.event(flow(100 + n), policy="b")
    assert len(h.live()) == 4 and len(h.mirrors) == 4
    assert any("global cap reached (4 taps)" in w.detail["cause"] for w in h.records("waiting"))


def test_capture_budget_limits_the_sum_of_tapped_rates():
    h = Harness([policy(max_taps=10)], limits=limits(capture_capacity="300Mbps"))
    h.event(flow(1), mbps=120)
    h.event(flow(2), mbps=120)
    h.event(flow(3), mbps=120)  # 360 > 300: waits
    h.event(flow(4), mbps=55)   # fits in the remaining 60
    assert {t.flow_key for t in h.live()} == {flow(1), flow(2), flow(4)}
    assert sum(t.rate_bps for t in h.live()) <= 300e6
    [w] = h.records("waiting")
    assert w.detail["flow_key"] == flow(3) and "capture budget" in w.detail["cause"]


def test_flow_larger_than_the_whole_budget_is_refused_and_held_down():
    h = Harness([policy()], limits=limits(capture_capacity="100Mbps"))
    h.event(flow(1), mbps=150)
    assert h.state.taps == {} and h.state.watch == {}
    [r] = h.records("refused")
    assert "exceeds the whole capture capacity" in r.detail["cause"]
    h.at(1).event(flow(1), mbps=150)
    assert len(h.records("refused")) == 1  # held down, not re-refused on every event


def test_room_goes_to_higher_priority_then_larger_waiting_flow():
    low = policy(name="low", priority=10, interval="30s")
    high = policy(name="high", priority=500, interval="30s")
    h = Harness([low, high], limits=limits(max_taps=1))
    h.event(flow(1), policy="low")
    h.event(flow(2), policy="low", mbps=300)
    h.event(flow(3), policy="high", mbps=60)
    h.event(flow(4), policy="high", mbps=90)
    h.at(1).feed(OperatorRelease(h.live()[0].tap_id, who="op"))
    [tap] = h.live()
    assert (tap.policy, tap.flow_key) == ("high", flow(4))


def test_running_taps_are_not_preempted_for_room():
    low = policy(name="low", priority=10)
    high = policy(name="high", priority=500)
    h = Harness([low, high], limits=limits(max_taps=1))
    h.event(flow(1), policy="low")
    h.event(flow(2), policy="high")
    assert [(t.policy, t.state) for t in h.live()] == [("low", "active")]


def test_one_mirror_per_flow_across_policies_higher_priority_supersedes():
    low = policy(name="low", priority=10)
    high = policy(name="high", priority=500, capture={"vlan": 7})
    h = Harness([low, high], auto=False)
    h.event(flow(1), policy="low")
    low_tap = h.live()[0]
    from demon.model import InstallResult, RemoveResult
    h.feed(InstallResult(low_tap.tap_id, ok=True))
    out = h.event(flow(1), policy="high")
    assert installs(out) == []  # never two mirrors of one flow at once
    assert h.state.taps[low_tap.tap_id].state == "expiring"
    assert "superseded by policy high" in h.state.taps[low_tap.tap_id].reason
    out = h.feed(RemoveResult(low_tap.tap_id, ok=True))
    [install] = installs(out)
    assert install.tap.policy == "high" and install.tap.vlan_tag == 7


def test_equal_or_lower_priority_does_not_duplicate_a_mirrored_flow():
    a = policy(name="a", priority=100)
    b = policy(name="b", priority=100)
    h = Harness([a, b])
    h.event(flow(1), policy="a")
    h.event(flow(1), policy="b")
    assert [t.policy for t in h.live()] == ["a"]
    assert "already mirrored" in h.records("waiting")[0].detail["cause"]


def test_event_storm_of_1000_elephants_never_exceeds_caps():
    a = policy(name="a", max_taps=5, interval="10s")
    b = policy(name="b", max_taps=6, priority=300, interval="10s")
    h = Harness([a, b], limits=limits(max_taps=8, capture_capacity="2Gbps", max_waiting=300))
    peak, peak_rate = 0, 0.0
    for n in range(1000):
        h.at(n * 0.01).event(flow(n), policy="a" if n % 2 else "b", mbps=100 + n % 300,
                             port=1 + n % 5, dpid=1 + n % 2)
        if n % 100 == 99:
            h.tick()
        live = h.live()
        peak = max(peak, len(h.mirrors))
        peak_rate = max(peak_rate, sum(t.rate_bps for t in live))
        assert len(live) <= 8
        assert len(h.live("a")) <= 5 and len(h.live("b")) <= 6
    assert peak == 8 and peak_rate <= 2e9
    keys = [t.flow_key for t in h.live()]
    assert len(keys) == len(set(keys))
    assert len(installs(h.commands)) == len(h.state.taps) == 8
    assert sum(1 for c in h.state.watch.values() if c.waiting) <= 300
    assert h.records("refused")  # beyond max_waiting flows are refused, with the reason


def test_uplink_choice_spreads_taps_over_uplinks():
    h = Harness([policy(max_taps=10)])
    for n in range(5):
        h.event(flow(n), mbps=100)
    assert sorted(t.copy_port for t in h.live()) == [6, 7, 8, 9, 10]


def test_flow_on_a_port_not_yet_in_the_port_map_waits_then_fails_with_a_clear_reason():
    h = Harness([policy()], limits=limits(placement_wait="20s"))
    h.event(flow(1), agent="192.0.2.1")
    assert h.state.taps == {} and awaiting_placement(h.state)
    [w] = h.records("waiting")
    assert w.detail["cause"] == "location unknown: agent 192.0.2.1 dataSource 101 is not in the port map yet"
    for t in range(2, 20, 2):  # still firing, still unknown: waits, recorded once
        h.at(t).event(flow(1), agent="192.0.2.1")
        h.tick()
    assert h.state.taps == {} and len(h.records("waiting")) == 1
    h.at(20).event(flow(1), agent="192.0.2.1")
    tap = h.only_tap()
    assert tap.state == "failed" and not awaiting_placement(h.state)
    assert tap.reason == "unknown location: agent 192.0.2.1 dataSource 101 is not in the port map (waited 20s)"
    assert h.records("failed")[0].detail["cause"] == tap.reason
    h.at(21).event(flow(1), agent="192.0.2.1")  # failure hold-down: not retried at once
    assert len(h.state.taps) == 1


def test_flow_waiting_for_its_port_is_tapped_there_once_the_port_map_has_it():
    h = Harness([policy()])
    h.event(flow(1), agent="192.0.2.1", port=3)
    h.tick(1)
    assert h.state.taps == {}
    entries = seed_port_map() + [{"agent": "192.0.2.1", "ifIndex": 103, "dpid": 2, "ofPort": 3,
                                  "name": "s2-eth3"}]
    h.ctx = replace(h.ctx, topology=Topology(entries, seed_switches()))
    h.tick(2)  # no new trigger needed: the waiting flow is re-tried on the tick
    [tap] = h.live()
    assert (tap.dpid, tap.in_port, tap.state) == (2, 3, "active")
    assert h.records("created")[0].detail["waited"].startswith("location unknown")
    assert not awaiting_placement(h.state)


def test_sightings_of_our_own_copies_are_ignored():
    h = Harness([policy()])
    h.event(flow(1), dpid=3, port=11)  # aggregation switch: a copy on its way
    h.event(flow(2), dpid=1, port=6)   # an uplink of a filter switch
    assert h.state.taps == {} and h.records() == []


def test_copy_sighting_still_extends_the_flow_tap():
    h = Harness([policy()])
    h.event(flow(1))
    h.at(20).feed(TopFlows("big", [(flow(1), 100e6 / 8, AGENT, "301")]))
    assert h.only_tap().last_trigger_at == h.now


def test_top_talkers_take_the_top_n_above_min_rate():
    top = policy(name="top", kind="top_talkers", threshold=None, top=2, min_rate="30Mbps",
                 keys="ipsource,ipdestination")
    h = Harness([top])
    rows = [("10.0.0.1,10.0.0.2", 5e6, AGENT, "101"),    # 40 Mbit/s
            ("10.0.0.3,10.0.0.4", 20e6, AGENT, "103"),   # 160 Mbit/s
            ("10.0.0.5,10.0.0.6", 3e6, AGENT, "105"),    # 24 Mbit/s: below min_rate
            ("10.0.0.7,10.0.0.8", 10e6, AGENT, "102")]   # 80 Mbit/s
    h.feed(TopFlows("top", rows))
    assert {t.flow_key for t in h.live()} == {"10.0.0.3,10.0.0.4", "10.0.0.7,10.0.0.8"}
    assert "top 1 of demon_top" in h.records("created")[0].detail["cause"]
    # staying in the top N extends; dropping out lets it expire after duration
    h.at(20).feed(TopFlows("top", rows[1:2]))
    h.tick(35)
    assert {t.flow_key for t in h.live()} == {"10.0.0.3,10.0.0.4"}


def test_install_commands_carry_the_policy_mirror_settings():
    h = Harness([policy(bidirectional=True, capture={"vlan": 100}, idle_timeout=0,
                        priority=250)], auto=False)
    [cmd] = installs(h.event(flow(1)))
    assert isinstance(cmd, InstallMirror)
    p = cmd.params()
    assert p["bidirectional"] is True and p["vlan_tag"] == 100 and p["idle_timeout"] == 0
    assert p["priority"] == 40250 and "in_port" not in p["match"]
