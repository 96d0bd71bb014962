"""Faults, in process: the engine and the controller going away and coming back,
an event storm against the caps, a bad reload, a crash and restart.

The real runtime, a scripted sFlow-RT (``responses``) and the fake controller
(the real RPC server); the clock runs 10x faster than real time.
"""

from __future__ import annotations

import time
from collections import Counter
from pathlib import Path
from typing import Callable

import pytest
import responses

from demon.runtime import accelerated_clock
from tests.demon.fakes import (ELEPHANT, FLOW_A, FLOW_B, FLOW_C, SPEED, TOP, FakeController,
                               Harness, ScriptedEngine, wait_for)

pytestmark = pytest.mark.replay


def created_per_flow(h: Harness) -> Counter[str]:
    return Counter(str(e.detail.get("flow_key")) for e in h.store.history()
                   if e.kind == "created")


def test_engine_unreachable_then_back_loses_and_repeats_nothing(
        make: Callable[..., Harness]) -> None:
    h = make()
    h.engine.fire("demon_elephant", FLOW_A, data_source="101")
    wait_for(lambda: h.store.last_event_id() == 1, what="first event")
    h.engine.up = False
    h.engine.fire("demon_elephant", FLOW_B, data_source="102")  # the engine keeps these
    h.engine.fire("demon_elephant", FLOW_C, data_source="103")
    time.sleep(0.6)
    assert h.store.last_event_id() == 1  # nothing consumed while unreachable
    h.engine.up = True
    wait_for(lambda: h.store.last_event_id() == 3, what="resume from event 1")
    wait_for(lambda: len({t for m, t in h.controller.writes() if m == "install_mirror"}) == 3,
             what="three installs")
    time.sleep(0.3)
    assert created_per_flow(h) == {FLOW_A: 1, FLOW_B: 1, FLOW_C: 1}
    installs = [t for m, t in h.controller.writes() if m == "install_mirror"]
    assert len(installs) == len(set(installs)) == 3


def test_controller_down_taps_wait_caps_hold_installed_once_on_recovery(
        make: Callable[..., Harness]) -> None:
    h = make({"elephant": ELEPHANT.format(max_taps=2)})
    for flow in (FLOW_A, FLOW_B, FLOW_C):
        h.engine.set_flows("demon_elephant", [(f, 400_000.0, "101")
                                              for f in (FLOW_A, FLOW_B, FLOW_C)])
    h.controller.stop()
    wait_for(lambda: not h.runtime.state.controller_up, what="controller seen down")
    for flow, ds in ((FLOW_A, "101"), (FLOW_B, "102"), (FLOW_C, "103")):
        h.engine.fire("demon_elephant", flow, data_source=ds)
    wait_for(lambda: h.store.last_event_id() == 3, what="events consumed")
    time.sleep(0.3)
    assert len(h.runtime.state.live_taps()) == 2  # the cap holds while waiting
    assert {t.state for t in h.runtime.state.live_taps()} == {"pending"}
    h.controller.start()
    wait_for(lambda: len(h.controller.mirrors) == 2, what="installs after recovery")
    time.sleep(0.5)
    installs = [t for m, t in h.controller.writes() if m == "install_mirror"]
    assert sorted(installs) == ["elephant.1", "elephant.2"]  # once each
    assert h.controller.max_concurrent == 2


def test_a_timed_out_install_is_settled_without_a_duplicate(
        tmp_path: Path, mock: responses.RequestsMock) -> None:
    """The call times out but the event connection stays up: the runtime probes the
    controller, reconciles, and the tap ends up active on one mirror."""
    controller = FakeController().start()
    controller.install_delay, controller.slow_installs = 1.0, 1
    h = Harness(tmp_path, mock, {"elephant": ELEPHANT.format(max_taps=4)},
                controller=controller, rpc_timeout=0.5).start()
    try:
        h.engine.set_flows("demon_elephant", [(FLOW_A, 400_000.0, "101")])
        h.engine.fire("demon_elephant", FLOW_A)
        wait_for(lambda: h.runtime.state.taps.get("elephant.1") is not None
                 and h.runtime.state.taps["elephant.1"].state == "active", timeout=10,
                 what="tap active after the timeout")
        assert list(controller.mirrors) == ["elephant.1"]
        assert set(t for m, t in controller.writes() if m == "install_mirror") == {"elephant.1"}
    finally:
        h.stop()
        controller.stop()


def test_an_event_storm_never_exceeds_the_caps(tmp_path: Path,
                                               make: Callable[..., Harness]) -> None:
    policies = {"elephant": ELEPHANT.format(max_taps=5), "_global": "max_taps: 3\n"}
    h = make(policies)
    for n in range(1000):
        h.engine.fire("demon_elephant", f"10.1.{n // 250}.{n % 250},10.0.0.2,6,{1024 + n},80",
                      data_source=str(101 + n % 5))
    wait_for(lambda: h.store.last_event_id() == 1000, timeout=30, what="all 1000 events")
    time.sleep(0.5)
    assert 0 < h.controller.max_concurrent <= 3
    assert len(h.runtime.state.live_taps()) <= 3
    installs = [t for m, t in h.controller.writes() if m == "install_mirror"]
    assert len(installs) == len(set(installs))


def test_a_bad_reload_keeps_the_running_policies(make: Callable[..., Harness]) -> None:
    h = make()
    (h.policies_dir / "broken.yaml").write_text("name: broken\nkind: elephant\nthreshold: x\n")
    h.runtime.request_reload()
    time.sleep(0.3)
    assert set(h.runtime.ctx.policies) == {"elephant"}
    h.engine.fire("demon_elephant", FLOW_A)
    wait_for(lambda: h.controller.mirrors, what="old policy still taps")
    # A good set is taken whole: the new policy's flow is defined in the engine.
    (h.policies_dir / "broken.yaml").unlink()
    (h.policies_dir / "top.yaml").write_text(TOP)
    h.runtime.request_reload()
    wait_for(lambda: "demon_top" in h.engine.flows, what="new flow defined")
    assert set(h.runtime.ctx.policies) == {"elephant", "top"}


def test_crash_and_restart_reconciles_without_a_duplicate_and_ends_on_time(
        tmp_path: Path, mock: responses.RequestsMock) -> None:
    clock = accelerated_clock(SPEED)
    engine = ScriptedEngine().register(mock)
    controller = FakeController().start()
    policies = {"elephant": ELEPHANT.format(max_taps=4)}
    first = Harness(tmp_path, mock, policies, controller=controller, engine=engine,
                    clock=clock).start()
    try:
        engine.set_flows("demon_elephant", [(FLOW_A, 400_000.0, "101")])  # stays hot
        engine.fire("demon_elephant", FLOW_A)
        wait_for(lambda: controller.mirrors, what="install")
        created = first.store.tap("elephant.1").created_at
        # Crash: threads stop, nothing is cleaned up (no removal, no undefinitions).
        first.crash()
        assert list(controller.mirrors) == ["elephant.1"]

        second = Harness(tmp_path, mock, policies, controller=controller, engine=engine,
                         clock=clock).start()
        try:
            assert "elephant.1" in second.runtime.state.taps
            # max_duration is 20 simulated seconds: the tap ends then although still hot.
            wait_for(lambda: not controller.mirrors, timeout=10, what="removal at max_duration")
            ended = clock()
            assert ended - created < 20 + 3  # on time (3 simulated seconds of slack)
            installs = [t for m, t in controller.writes() if m == "install_mirror"]
            assert installs.count("elephant.1") == 1  # reconciled, not re-installed
            assert controller.max_concurrent == 1
        finally:
            second.stop()
    finally:
        controller.stop()


def test_a_reload_leaves_no_removed_policys_definition_in_the_engine(
        make: Callable[..., Harness]) -> None:
    """Issue 14 #11: 50 policies polled every second, reload to 1: the polls in flight
    during the reload found their flows deleted and defined all 50 again (51 left)."""
    many = {f"p{n}": ELEPHANT.replace("name: elephant", f"name: p{n}").format(max_taps=1)
            for n in range(50)}
    h = make(many)
    wait_for(lambda: len(h.engine.flows) == 50, what="50 definitions")
    time.sleep(0.5)  # polls of all 50 under way
    for path in h.policies_dir.glob("p*.yaml"):
        if path.stem != "p7":
            path.unlink()
    h.runtime.request_reload()
    wait_for(lambda: set(h.runtime.ctx.policies) == {"p7"}, what="reload")
    time.sleep(1.5)  # every poll that was in flight has ended
    assert set(h.engine.flows) == {"demon_p7"}
    assert set(h.engine.thresholds) == {"demon_p7"}


LONG = ELEPHANT.replace("max_duration: 20s", "max_duration: 300s")


def removes(h: Harness) -> list[str]:
    return [t for m, t in h.controller.writes() if m == "remove_mirror"]


def test_after_a_daemon_outage_a_tap_whose_flow_still_runs_continues(
        tmp_path: Path, mock: responses.RequestsMock) -> None:
    """Issue 14 #4: after a 6.5 s outage the tap was released ~1 s after the restart,
    then re-tapped after the hold-down (a capture gap). The engine's activeflows is
    asked first: a flow still above its threshold keeps its tap."""
    clock = accelerated_clock(SPEED)
    engine, controller = ScriptedEngine().register(mock), FakeController().start()
    policies = {"elephant": LONG.format(max_taps=4)}
    try:
        first = Harness(tmp_path, mock, policies, controller=controller, engine=engine,
                        clock=clock).start()
        engine.set_flows("demon_elephant", [(FLOW_A, 400_000.0, "101")])  # stays hot
        engine.fire("demon_elephant", FLOW_A)
        wait_for(lambda: controller.mirrors, what="install")
        first.crash()
        time.sleep(1.3)  # 13 simulated seconds down: more than twice the 5 s duration
        second = Harness(tmp_path, mock, policies, controller=controller, engine=engine,
                         clock=clock).start()
        try:
            time.sleep(2.5)  # 25 simulated seconds: the engine's rates have settled
            assert second.live() == ["elephant.1"] and list(controller.mirrors) == ["elephant.1"]
            assert removes(second) == [] and "elephant.2" not in second.runtime.state.taps
            # Not kept for ever: once the engine no longer shows the flow, it ends.
            engine.set_flows("demon_elephant", [])
            wait_for(lambda: not controller.mirrors, timeout=5, what="release")
            assert second.store.tap("elephant.1").reason.startswith("condition cleared")
        finally:
            second.stop()
    finally:
        controller.stop()


def test_an_engine_pause_never_passes_for_a_cleared_condition(
        make: Callable[..., Harness]) -> None:
    """Issue 14 #4: a 20 s engine pause released the tap (a ~20 s capture gap)."""
    h = make({"elephant": LONG.format(max_taps=4)})
    h.engine.set_flows("demon_elephant", [(FLOW_A, 400_000.0, "101")])
    h.engine.fire("demon_elephant", FLOW_A)
    wait_for(lambda: h.controller.mirrors, what="install")
    time.sleep(0.7)  # settled and polled
    h.engine.up = False
    time.sleep(2.0)  # 20 simulated seconds: four times the policy's duration
    assert h.live() == ["elephant.1"] and removes(h) == []
    assert not h.runtime.view.snapshot().engine["reachable"]
    h.engine.up = True
    time.sleep(1.5)
    assert h.live() == ["elephant.1"] and removes(h) == []
    assert [t for m, t in h.controller.writes() if m == "install_mirror"] == ["elephant.1"]
    h.engine.set_flows("demon_elephant", [])
    wait_for(lambda: not h.controller.mirrors, timeout=5, what="release once it is gone")


class _AnswerHeld(FakeController):
    """Installs the mirror at once but holds its answer until the test lets it go."""

    def __init__(self) -> None:
        super().__init__()
        import threading

        self.installed, self.answer = threading.Event(), threading.Event()

    def _install_mirror(self, params: dict) -> dict:  # type: ignore[override]
        result = super()._install_mirror(params)
        self.installed.set()
        self.answer.wait(10)
        return result


def test_on_exit_remove_takes_down_a_tap_whose_install_answer_comes_during_the_stop(
        make: Callable[..., Harness]) -> None:
    """A stop that arrives while an install is on the wire: the answer reaches the
    mutator's queue after the loop stopped reading it. Shutdown must still see the
    tap installed and, with ``on_exit=remove``, take it down (it used to be left in
    the switch: the remove waited for an answer nobody read)."""
    controller = _AnswerHeld().start()
    h = make(controller=controller, on_exit="remove")
    h.engine.fire("demon_elephant", FLOW_A)
    assert controller.installed.wait(10)
    assert list(controller.mirrors) == ["elephant.1"]
    h.runtime.request_stop("test: stop with an install on the wire")
    wait_for(lambda: h.runtime._halt.is_set(), what="the shutdown under way")
    controller.answer.set()
    h.thread.join(timeout=20)
    assert not h.thread.is_alive()
    assert controller.mirrors == {}
    assert controller.writes()[-1] == ("remove_mirror", "elephant.1")
    assert h.store.tap("elephant.1").state == "removed"
