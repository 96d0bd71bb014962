"""Decision core: trigger → tap, extension, release, max duration, hold-down, operator."""

from __future__ import annotations

import pytest

from demon.model import (InstallMirror, InstallResult, MirrorRemoved, OperatorRelease,
                         PausePolicy, Record, RemoveMirror, RemoveResult, ResumePolicy, ThresholdEvent, TopFlows, state_from_dict, state_to_dict)
from demon.core import step

from .core_harness import AGENT, T0, Harness, flow, installs, policy, removes


def test_threshold_event_creates_one_pending_tap_at_the_ingress_port():
    h = Harness([policy()], auto=False)
    out = h.event(flow(1), port=3, dpid=2)
    tap = h.only_tap()
    assert tap.state == "pending" and tap.policy == "big" and tap.flow_key == flow(1)
    assert (tap.dpid, tap.in_port) == (2, 3)
    assert tap.copy_port in (6, 7, 8, 9, 10)
    assert tap.match == {"ipv4_src": "10.1.0.2", "ipv4_dst": "10.0.0.2", "tcp_src": 40001,
                         "tcp_dst": 5201, "ip_proto": 6, "in_port": 3}
    assert tap.rate_bps == pytest.approx(100e6)
    assert tap.expires_at == T0 + 300
    [install] = installs(out)
    params = install.params()
    assert params["tap_id"] == tap.tap_id and params["dpid"] == 2
    assert params["hard_timeout"] == 300 + 10  # max_duration + grace: the switch's fail-safe
    assert params["idle_timeout"] == 30 and params["priority"] == 40100
    created = h.records("created")[0]
    assert created.tap_id == tap.tap_id and created.detail["event_id"] == 1
    assert "event 1" in created.detail["cause"]


def test_install_ok_makes_it_active_and_records_it():
    h = Harness([policy()], auto=False)
    h.event(flow(1))
    tap_id = h.only_tap().tap_id
    h.feed(InstallResult(tap_id, ok=True, cookie=77))
    tap = h.only_tap()
    assert tap.state == "active" and tap.cookie == 77 and tap.inflight is None
    assert h.records("active")[0].tap_id == tap_id


def test_repeated_events_extend_instead_of_duplicating():
    h = Harness([policy()])
    h.event(flow(1))
    for second in (5, 20, 40, 60):
        h.at(second).event(flow(1), mbps=150)
        h.tick()
    tap = h.only_tap()
    assert tap.state == "active"
    assert tap.last_trigger_at == T0 + 60 and tap.rate_bps == pytest.approx(150e6)
    assert len(installs(h.commands)) == 1


def test_top_flows_poll_keeps_an_elephant_alive_above_threshold_only():
    h = Harness([policy()])
    h.event(flow(1))
    h.at(20).feed(TopFlows("big", [(flow(1), 90e6 / 8, AGENT, "101")]))
    assert h.only_tap().last_trigger_at == T0 + 20
    h.at(40).feed(TopFlows("big", [(flow(1), 10e6 / 8, AGENT, "101")]))  # below 50 Mbit/s
    assert h.only_tap().last_trigger_at == T0 + 20


def test_clearing_releases_after_duration_then_removed_and_held_down():
    h = Harness([policy()])
    h.event(flow(1))
    assert h.tick(29.9) == [] and h.only_tap().state == "active"
    out = h.tick(30)
    [remove] = removes(out)
    assert "condition cleared" in remove.reason
    tap = h.only_tap()
    assert tap.state == "removed" and tap.ended_at == T0 + 30 and tap.packets == 10
    kinds = [r.kind for r in h.records()]
    assert kinds == ["created", "active", "expiring", "removed"]
    # hold-down: the same flow is not tapped again for 60 s
    h.at(40).event(flow(1))
    assert len(h.state.taps) == 1
    h.at(91).event(flow(1))
    assert len(h.live()) == 1 and len(h.state.taps) == 2


def test_max_duration_releases_a_flow_that_never_stops():
    h = Harness([policy(duration="30s", max_duration="90s")])
    h.event(flow(1))
    for second in range(10, 90, 10):
        h.at(second).event(flow(1))
        h.tick()
        assert h.only_tap().state == "active"
    out = h.tick(90)
    assert "max duration" in removes(out)[0].reason
    assert h.only_tap().state == "removed"


def test_expiring_waits_for_remove_confirmation():
    h = Harness([policy()], auto=False)
    h.event(flow(1))
    tap_id = h.only_tap().tap_id
    h.feed(InstallResult(tap_id, ok=True))
    h.tick(30)
    assert h.only_tap().state == "expiring"
    h.feed(RemoveResult(tap_id, ok=True, packets=5, bytes=500))
    tap = h.only_tap()
    assert tap.state == "removed" and (tap.packets, tap.bytes) == (5, 500)


def test_release_during_install_waits_for_the_install_answer():
    h = Harness([policy()], auto=False)
    h.event(flow(1))
    tap_id = h.only_tap().tap_id
    out = h.feed(OperatorRelease(tap_id, who="alice"))
    assert removes(out) == []  # never race the install in flight
    assert h.only_tap().state == "expiring"
    out = h.feed(InstallResult(tap_id, ok=True))
    assert [r.tap_id for r in removes(out)] == [tap_id]


def test_switch_removal_ends_an_active_tap_with_its_reason():
    h = Harness([policy()])
    h.event(flow(1))
    tap_id = h.only_tap().tap_id
    h.at(5).feed(MirrorRemoved(tap_id, reason="idle_timeout", packets=3, bytes=300))
    tap = h.only_tap()
    assert tap.state == "removed" and tap.packets == 3
    rec = h.records("removed")[-1]
    assert rec.detail["switch_reason"] == "idle_timeout"
    h.at(10).event(flow(1))  # held down
    assert len(h.state.taps) == 1


def test_operator_release_records_who_and_holds_down():
    h = Harness([policy()])
    h.event(flow(1))
    tap_id = h.only_tap().tap_id
    h.at(3).feed(OperatorRelease(tap_id, who="alice"))
    tap = h.only_tap()
    assert tap.state == "removed" and "alice" in tap.reason
    assert h.records("expiring")[0].detail["operator"] == "alice"
    h.at(10).event(flow(1))
    assert len(h.state.taps) == 1


def test_operator_release_of_unknown_tap_is_recorded_not_fatal():
    h = Harness([policy()])
    h.feed(OperatorRelease("nope.1", who="bob"))
    assert h.records("release_ignored")[0].detail["operator"] == "bob"


def test_paused_policy_taps_nothing_new_but_keeps_running_taps():
    h = Harness([policy()])
    h.event(flow(1))
    h.feed(PausePolicy("big", who="carol"))
    h.at(1).event(flow(2))
    assert [t.flow_key for t in h.live()] == [flow(1)]
    h.at(2).event(flow(1))
    assert h.only_tap().last_trigger_at == T0 + 2  # still extended
    h.feed(ResumePolicy("big", who="carol"))
    h.at(3).event(flow(2))
    assert {t.flow_key for t in h.live()} == {flow(1), flow(2)}
    assert [r.kind for r in h.records() if r.tap_id is None] == ["paused", "resumed"]


def test_disabled_policy_taps_nothing():
    h = Harness([policy(enabled=False)])
    h.event(flow(1))
    assert h.state.taps == {}


def test_sustain_requires_the_flow_to_be_seen_for_that_long():
    h = Harness([policy(sustain="5s", interval="2s")])
    h.event(flow(1))
    assert h.state.taps == {} and (("big", flow(1)) in h.state.watch)
    row = [(flow(1), 100e6 / 8, AGENT, "101")]
    h.at(2).feed(TopFlows("big", row))
    h.at(4).feed(TopFlows("big", row))
    assert h.state.taps == {}
    h.tick(5.5)  # no sighting at the end of the window: not yet
    assert h.state.taps == {}
    h.at(6).feed(TopFlows("big", row))
    assert h.only_tap().state == "active"


def test_sustain_restarts_after_a_gap():
    h = Harness([policy(sustain="5s", interval="1s")])  # stale after max(3s, 4s, 2s) = 4s
    h.event(flow(1))
    h.at(10).event(flow(1))  # gap of 10 s: the first sighting no longer counts
    assert h.state.taps == {}
    assert h.state.watch[("big", flow(1))].first_seen == T0 + 10


def test_removed_policy_has_its_taps_released():
    h = Harness([policy()])
    h.event(flow(1))
    h.ctx = type(h.ctx)(policies={}, topology=h.ctx.topology, limits=h.ctx.limits)
    h.tick(1)
    assert h.only_tap().state == "removed"
    assert "removed from the configuration" in h.only_tap().reason


def test_terminal_taps_are_purged_after_retain():
    h = Harness([policy()])
    h.event(flow(1))
    h.tick(30)
    assert len(h.state.taps) == 1
    h.tick(30 + 600)
    assert h.state.taps == {}


def test_step_is_pure_input_state_untouched_and_repeatable():
    h = Harness([policy()], auto=False)
    h.event(flow(1))
    before = h.state
    snapshot = state_to_dict(before)
    ev = ThresholdEvent(9, "demon_big", "big", AGENT, "102", flow(2), 20e6, 6.25e6, T0)
    a = step(before, h.ctx, ev, T0 + 1)
    b = step(before, h.ctx, ev, T0 + 1)
    assert a == b
    assert state_to_dict(before) == snapshot


def test_state_round_trips_through_dict():
    h = Harness([policy()])
    h.event(flow(1))
    h.feed(PausePolicy("x", who="y"))
    h.tick(30)
    assert state_from_dict(state_to_dict(h.state)) == h.state


def test_unknown_input_type_is_a_type_error():
    h = Harness([policy()])
    with pytest.raises(TypeError):
        step(h.state, h.ctx, object(), T0)  # type: ignore[arg-type]


def test_every_command_is_a_known_kind():
    h = Harness([policy()])
    h.event(flow(1))
    h.tick(30)
    assert all(isinstance(c, (InstallMirror, RemoveMirror, Record)) for c in h.commands)
