"""Decision core against the controller: failures, retries, outages, reconciliation."""

from __future__ import annotations

from demon.controller.spec import cookie_for_tap
from demon.model import InstallResult, MirrorRemoved, Reconcile, RemoveResult

from .core_harness import T0, Harness, flow, installs, policy, removes


def started(**kw) -> tuple[Harness, str]:
    h = Harness([policy(**kw)], auto=False)
    h.event(flow(1))
    return h, h.only_tap().tap_id


def test_failed_install_is_retried_with_backoff_then_fails():
    h, tap_id = started()
    h.at(0.1).feed(InstallResult(tap_id, ok=False, error="switch rejected the flow"))
    tap = h.only_tap()
    assert tap.state == "pending" and tap.attempts == 1 and tap.next_attempt_at == T0 + 1.1
    assert h.tick(0.5) == []  # backoff not over yet
    assert len(installs(h.tick(1.2))) == 1
    h.at(1.3).feed(InstallResult(tap_id, ok=False, error="again"))
    assert h.only_tap().next_attempt_at == T0 + 1.3 + 2  # doubled
    assert installs(h.tick(3.0)) == []
    assert len(installs(h.tick(3.4))) == 1
    h.at(3.5).feed(InstallResult(tap_id, ok=False, error="third"))
    tap = h.only_tap()
    assert tap.state == "failed" and "3 times: third" in tap.reason
    assert [r.kind for r in h.records()] == ["created", "install_failed", "install_failed", "failed"]
    h.tick(100)
    assert len(installs(h.commands)) == 3  # a failed tap is never retried


def test_retry_success_after_a_failure():
    h, tap_id = started()
    h.feed(InstallResult(tap_id, ok=False, error="timeout"))
    h.tick(1)
    h.feed(InstallResult(tap_id, ok=True))
    tap = h.only_tap()
    assert tap.state == "active" and tap.attempts == 0 and tap.reason == ""


def test_controller_down_installs_wait_and_are_sent_once_when_it_is_back():
    h = Harness([policy(max_taps=2)], controller_up=False, auto=False)
    out = h.event(flow(1)) + h.event(flow(2)) + h.event(flow(3))
    assert installs(out) == []
    assert [t.state for t in h.live()] == ["pending", "pending"]  # cap holds while down
    assert all(t.reason == "" for t in h.live())
    assert installs(h.tick(5)) == []
    # on reconnect the runtime reconciles first (the switches hold none of them)...
    assert installs(h.at(6).feed(Reconcile(mirrors=[]))) == []
    # ...then declares the controller up: each pending install goes out once
    out = h.controller(True)
    assert sorted(c.tap.flow_key for c in installs(out)) == [flow(1), flow(2)]
    assert installs(h.tick(7)) == []
    assert len(installs(h.commands)) == 2


def test_restart_with_stale_inflight_state_sends_each_call_once():
    h, tap_id = started()           # install sent, then the daemon died
    h.feed(InstallResult(tap_id, ok=True))
    h.at(2).event(flow(2))         # second install sent, never answered
    second = [t for t in h.live() if t.flow_key == flow(2)][0]
    assert second.inflight == "install"
    # restarted: the state still says "up" and "in flight"; the switch holds the first only
    out = h.at(10).feed(Reconcile(mirrors=[{"tap_id": tap_id, "dpid": 1}]))
    out += h.controller(True)
    assert [c.tap.tap_id for c in installs(out)] == [second.tap_id]


def test_controller_lost_mid_install_resends_when_back():
    h, tap_id = started()
    h.at(1).controller(False)
    h.feed(InstallResult(tap_id, ok=False, error="connection refused", unreachable=True))
    tap = h.only_tap()
    assert tap.attempts == 0 and tap.state == "pending"
    assert installs(h.tick(10)) == []
    assert [c.tap.tap_id for c in installs(h.at(11).controller(True))] == [tap_id]


def test_hard_deadline_counts_while_the_controller_is_down():
    h, tap_id = started(duration="30s", max_duration="60s")
    h.feed(InstallResult(tap_id, ok=True))
    h.at(10).controller(False)
    out = h.tick(40)  # condition cleared, but nobody to ask
    assert removes(out) == [] and h.only_tap().state == "expiring"
    # the switch's hard_timeout (60 + 10 s grace) must have fired by 60 + 2 * 10
    h.tick(80)
    tap = h.only_tap()
    assert tap.state == "removed" and "hard timeout" in h.records("removed")[0].detail["cause"]


def test_remove_sent_when_controller_comes_back():
    h, tap_id = started()
    h.feed(InstallResult(tap_id, ok=True))
    h.at(10).controller(False)
    h.tick(40)
    out = h.at(41).controller(True)
    assert [r.tap_id for r in removes(out)] == [tap_id]


def test_failed_remove_is_retried():
    h, tap_id = started()
    h.feed(InstallResult(tap_id, ok=True))
    h.tick(30)
    h.at(30.5).feed(RemoveResult(tap_id, ok=False, error="barrier timeout"))
    assert h.only_tap().state == "expiring"
    assert removes(h.tick(31)) == []
    assert [r.tap_id for r in removes(h.tick(31.6))] == [tap_id]
    h.feed(RemoveResult(tap_id, ok=True))
    assert h.only_tap().state == "removed"


def test_reconcile_removes_orphans_and_mirrors_of_ended_taps():
    h, tap_id = started()
    h.feed(InstallResult(tap_id, ok=True))
    h.tick(30)
    h.feed(RemoveResult(tap_id, ok=True))
    out = h.at(31).feed(Reconcile(mirrors=[{"tap_id": "ghost.9", "dpid": 1},
                                           {"tap_id": tap_id, "dpid": 1}]))
    assert sorted(r.tap_id for r in removes(out)) == sorted([tap_id, "ghost.9"])
    causes = {r.tap_id: r.detail["cause"] for r in h.records("orphan")}
    assert "unknown to the daemon" in causes["ghost.9"] and "tap is removed" in causes[tap_id]


def stray(cookie: int, dpid: int = 1) -> dict:
    """A ``list_mirrors`` record of entries the component does not know (docs/rpc-protocol.md)."""
    return {"tap_id": None, "dpid": dpid, "cookie": cookie, "packets": 3, "bytes": 300}


def test_reconcile_removes_a_stray_of_an_ended_tap_by_the_tap_id_its_cookie_maps_to():
    # A component restarted without its state file lists the ended tap's entries with
    # "tap_id": null; remove_mirror removes them by the tap id's deterministic cookie.
    h, tap_id = started()
    h.feed(InstallResult(tap_id, ok=True))
    h.tick(30)
    h.feed(RemoveResult(tap_id, ok=True))
    out = h.at(31).feed(Reconcile(mirrors=[stray(cookie_for_tap(tap_id))]))
    assert [r.tap_id for r in removes(out)] == [tap_id]
    assert "None" not in [r.tap_id for r in removes(h.commands)]


def test_reconcile_reports_an_unremovable_stray_once_and_never_asks_to_remove_tap_none():
    h, tap_id = started()
    h.feed(InstallResult(tap_id, ok=True))
    unknown = stray(0xDE30_0000_8000_1234, dpid=2)
    out = h.at(5).feed(Reconcile(mirrors=[unknown, {"tap_id": tap_id, "dpid": 1}]))
    assert removes(out) == [] and installs(out) == []
    [rec] = [r for r in h.records("orphan") if r.tap_id is None]
    cause = rec.detail["cause"]
    assert cause.startswith("reconcile: ") and f"{unknown['cookie']:#x}" in cause
    assert "switch 2" in cause and "cannot" in cause and rec.detail["cookie"] == unknown["cookie"]
    assert h.only_tap().state == "active"
    h.at(20).feed(Reconcile(mirrors=[unknown, {"tap_id": tap_id, "dpid": 1}]))  # a reconnect
    assert len([r for r in h.records("orphan") if r.tap_id is None]) == 1  # told once
    assert removes(h.commands) == []
    h.at(40).feed(Reconcile(mirrors=[{"tap_id": tap_id, "dpid": 1}]))  # gone (hard timeout)
    h.at(60).feed(Reconcile(mirrors=[unknown, {"tap_id": tap_id, "dpid": 1}]))  # back again
    assert len([r for r in h.records("orphan") if r.tap_id is None]) == 2


def test_reconcile_leaves_a_live_taps_stray_to_its_reinstall():
    # The component lost its state but the switch kept the live tap's entries: the
    # re-install adopts them (same deterministic cookie); removing would end the tap.
    h, tap_id = started()
    h.feed(InstallResult(tap_id, ok=True))
    out = h.at(5).feed(Reconcile(mirrors=[stray(cookie_for_tap(tap_id))]))
    assert removes(out) == [] and [c.tap.tap_id for c in installs(out)] == [tap_id]
    assert not h.records("orphan")


def test_reconcile_reinstalls_a_live_tap_the_switch_lost():
    h, tap_id = started()
    h.feed(InstallResult(tap_id, ok=True))
    out = h.at(5).feed(Reconcile(mirrors=[]))
    [cmd] = installs(out)
    assert cmd.tap.tap_id == tap_id and cmd.hard_timeout == 300 - 5 + 10
    assert h.only_tap().state == "pending"
    assert h.records("reinstall")
    h.feed(InstallResult(tap_id, ok=True))
    assert h.only_tap().state == "active"


def test_reconcile_confirms_a_pending_tap_the_switch_holds():
    h, tap_id = started()      # the install answer is lost with the connection
    out = h.at(4).feed(Reconcile(mirrors=[{"tap_id": tap_id, "dpid": 1, "cookie": 5,
                                           "packets": 7, "bytes": 700}]))
    assert installs(out) == []
    tap = h.only_tap()
    assert tap.state == "active" and tap.packets == 7 and tap.cookie == 5
    assert "already holds" in h.records("active")[0].detail["cause"]


def test_reconcile_expires_overdue_taps():
    h, tap_id = started(max_duration="60s")
    h.feed(InstallResult(tap_id, ok=True))
    h.at(20).event(flow(1))
    out = h.at(100).feed(Reconcile(mirrors=[{"tap_id": tap_id, "dpid": 1}]))
    assert [r.tap_id for r in removes(out)] == [tap_id]
    assert "max duration" in h.only_tap().reason


def test_reconcile_finishes_an_expiring_tap_already_gone():
    h, tap_id = started()
    h.feed(InstallResult(tap_id, ok=True))
    h.at(10).controller(False)
    h.tick(30)
    h.feed(Reconcile(mirrors=[]))
    assert h.only_tap().state == "removed"


def test_bidirectional_removal_events_do_not_double_end_the_tap():
    h, tap_id = started(bidirectional=True)
    h.feed(InstallResult(tap_id, ok=True))
    h.at(5).feed(MirrorRemoved(tap_id, reason="hard_timeout", packets=4, bytes=400))
    h.at(5).feed(MirrorRemoved(tap_id, reason="hard_timeout", packets=9, bytes=900))
    assert len(h.records("removed")) == 1
    assert h.only_tap().packets == 9


def test_late_results_for_unknown_taps_are_ignored():
    h = Harness([policy()], auto=False)
    assert h.feed(InstallResult("nope.1", ok=True)) == []
    assert h.feed(RemoveResult("nope.1", ok=True)) == []
    assert h.feed(MirrorRemoved("nope.1", reason="delete")) == []
