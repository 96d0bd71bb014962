"""Decision core: an operator taps a flow by hand (``OperatorTap``, ``demon-tap tap``)."""

from __future__ import annotations

from demon.model import OperatorTap
from demon.policy import GlobalLimits

from .core_harness import AGENT, Harness, flow, installs, policy


def op_tap(n: int, hold: float = 120.0, **kw) -> OperatorTap:
    return OperatorTap(policy=kw.pop("policy", "big"), flow_key=flow(n), who="alice", hold=hold, **kw)


def test_an_operator_tap_at_a_named_port_is_installed_and_held_past_the_policy_duration():
    h = Harness([policy(duration="30s", max_duration="60s")])
    out = h.feed(op_tap(1, hold=120, dpid=2, in_port=4, rate_bps=5e6))
    [install] = installs(out)
    tap = h.only_tap()
    assert (tap.dpid, tap.in_port, tap.state) == (2, 4, "active")
    assert install.tap.match["in_port"] == 4 and install.tap.match["tcp_src"] == 40001
    assert install.hard_timeout >= 120  # the switch's fail-safe covers the operator's hold
    assert "operator alice" in tap.trigger
    h.tick(90)  # no trigger for 90 s > duration, past max_duration: still held
    assert h.only_tap().state == "active"
    h.tick(121)
    assert h.only_tap().state == "removed"
    assert "operator's hold over" in h.only_tap().reason


def test_an_operator_tap_is_placed_from_where_the_engine_saw_the_flow():
    h = Harness([policy()])
    h.feed(op_tap(1, agent=AGENT, data_source="103"))
    assert (h.only_tap().dpid, h.only_tap().in_port) == (1, 3)


def test_an_operator_tap_overrides_the_hold_down_of_a_released_flow():
    h = Harness([policy(holddown="10m")])
    h.event(flow(1))
    first = h.only_tap()
    h.tick(40)  # no trigger for 30 s: released, held down for 10 minutes
    assert not h.state.taps[first.tap_id].live
    h.at(41).feed(op_tap(1, agent=AGENT, data_source="101"))
    assert [t.tap_id for t in h.live()] == ["big.2"]


def test_an_operator_tap_that_does_not_fit_is_refused_with_the_reason_and_nothing_waits():
    h = Harness([policy(max_taps=1)])
    h.event(flow(1))
    h.feed(op_tap(2, dpid=1, in_port=2))
    assert len(h.live()) == 1 and h.state.watch == {}
    [refused] = h.records("operator_refused")
    assert refused.detail["cause"] == "operator alice: not tapped: policy cap reached (1 taps)"


def test_an_operator_tap_on_a_tapped_flow_extends_it_and_reinstalls_with_the_later_deadline():
    h = Harness([policy(max_duration="60s")])
    h.event(flow(1))
    tap = h.only_tap()
    out = h.at(10).feed(op_tap(1, hold=600))
    [reinstall] = installs(out)
    assert reinstall.tap.tap_id == tap.tap_id and reinstall.hard_timeout >= 600
    assert len(h.state.taps) == 1 and h.only_tap().expires_at >= h.now + 600
    assert h.records("extended")[0].detail["operator"] == "alice"
    h.tick(300)
    assert h.only_tap().state == "active"


def test_an_operator_tap_at_an_uplink_fails_with_the_reason():
    h = Harness([policy()])
    h.feed(op_tap(1, dpid=1, in_port=6))
    tap = h.only_tap()
    assert tap.state == "failed" and "uplink" in tap.reason


def test_an_operator_tap_for_an_unknown_policy_is_refused():
    h = Harness([policy()])
    h.feed(op_tap(1, policy="nope", dpid=1, in_port=1))
    assert h.state.taps == {}
    assert h.records("operator_refused")[0].detail["cause"] == "operator alice: no policy 'nope'"


def test_caps_still_bound_operator_taps():
    h = Harness([policy(max_taps=10)], limits=GlobalLimits.model_validate({"max_taps": 2}))
    for n in range(4):
        h.feed(op_tap(n, dpid=1, in_port=1 + n % 5))
    assert len(h.live()) == 2 and len(h.records("operator_refused")) == 2
