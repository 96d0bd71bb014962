"""The real runtime against a scripted sFlow-RT (``responses``) and the fake
controller (the real RPC server): the exact RPC commands it sends.

The clock runs 10x faster than real time (``speed``), so a policy's seconds
pass in tenths of seconds.
"""

from __future__ import annotations

import time
from dataclasses import replace
from pathlib import Path
from typing import Callable

import pytest
import responses

from demon.model import HistoryEntry, State, Tap
from demon.store import Store
from tests.demon.fakes import (ELEPHANT, FLOW_A, FLOW_B, FLOW_C, TOP, Harness, ScriptedEngine,
                               seed_port_map, wait_for)

pytestmark = pytest.mark.replay


def test_an_elephant_is_tapped_once_extended_and_released(make: Callable[..., Harness]) -> None:
    h = make()
    assert h.engine.flows["demon_elephant"]["keys"].startswith("ipsource")
    assert h.engine.thresholds["demon_elephant"]["byFlow"] is True
    h.engine.set_flows("demon_elephant", [(FLOW_A, 400_000.0, "101")])
    h.engine.fire("demon_elephant", FLOW_A, data_source="101")
    wait_for(lambda: h.controller.mirrors, what="install")
    # The same flow firing again while tapped extends the tap, never a second mirror.
    h.engine.fire("demon_elephant", FLOW_A, data_source="101")
    time.sleep(0.8)  # 8 simulated seconds: > duration, but the flow is still above threshold
    assert list(h.controller.mirrors) == ["elephant.1"]
    h.engine.set_flows("demon_elephant", [])  # the condition clears
    wait_for(lambda: not h.controller.mirrors, what="remove")
    assert h.controller.writes() == [("install_mirror", "elephant.1"),
                                     ("remove_mirror", "elephant.1")]
    install = next(params for m, params in h.controller.calls if m == "install_mirror")
    assert install["dpid"] == 1 and install["copy_port"] in range(6, 11)
    assert install["match"] == {"ipv4_src": "10.0.0.1", "ipv4_dst": "10.0.0.2", "ip_proto": 6,
                                "tcp_src": 5001, "tcp_dst": 80, "in_port": 1}
    assert install["idle_timeout"] == 10
    wait_for(lambda: h.store.tap("elephant.1") and h.store.tap("elephant.1").state == "removed",
             what="removed in the store")
    kinds = [e.kind for e in h.store.history("elephant.1")]
    assert kinds[0] == "created" and kinds[-1] == "removed"
    assert h.store.last_event_id() == 2


def test_top_talkers_tap_the_largest_flows(make: Callable[..., Harness]) -> None:
    h = make({"top": TOP})
    h.engine.set_flows("demon_top", [(FLOW_A, 10_000.0, "101"), (FLOW_B, 90_000.0, "102"),
                                     (FLOW_C, 50_000.0, "103")])
    wait_for(lambda: len(h.controller.mirrors) == 2, what="two installs")
    time.sleep(0.3)
    installed = {params["match"]["tcp_src"] for m, params in h.controller.calls
                 if m == "install_mirror"}
    assert installed == {5002, 5003}
    assert len(h.controller.writes()) == 2


def test_operator_release_pause_and_resume(make: Callable[..., Harness]) -> None:
    h = make()
    h.engine.set_flows("demon_elephant", [(FLOW_A, 400_000.0, "101")])
    h.engine.fire("demon_elephant", FLOW_A)
    wait_for(lambda: h.controller.mirrors, what="install")
    with Store(h.state_path) as operator:
        rid = operator.enqueue_request("release", "elephant.1", "alice")
        wait_for(lambda: not h.controller.mirrors, what="operator release")
        assert wait_for(lambda: operator.request(rid).outcome) == "release requested"
        pause = operator.enqueue_request("pause", "elephant", "alice")
        assert wait_for(lambda: operator.request(pause).outcome) == "paused"
        h.engine.fire("demon_elephant", FLOW_B, data_source="102")
        time.sleep(0.5)
        assert h.controller.writes() == [("install_mirror", "elephant.1"),
                                         ("remove_mirror", "elephant.1")]
        resume = operator.enqueue_request("resume", "elephant", "alice")
        assert wait_for(lambda: operator.request(resume).outcome) == "resumed"
        h.engine.fire("demon_elephant", FLOW_B, data_source="102")
        wait_for(lambda: len(h.controller.writes()) >= 3, what="install after resume")
        assert h.controller.writes()[2] == ("install_mirror", "elephant.2")
        bogus = operator.enqueue_request("release", "elephant.99", "alice")
        assert wait_for(lambda: operator.request(bogus).outcome) == "no live tap 'elephant.99'"
    who = [e.detail for e in h.store.history("elephant.1") if "alice" in str(e.detail)]
    assert who, "the operator's name is recorded with the release"


def test_a_first_start_skips_the_engines_old_events(tmp_path: Path,
                                                    mock: responses.RequestsMock) -> None:
    engine = ScriptedEngine().register(mock)
    engine.fire("demon_elephant", FLOW_A, age=3600)  # retained from an hour ago
    engine.fire("demon_elephant", FLOW_B, data_source="102", age=2)
    h = Harness(tmp_path, mock, {"elephant": ELEPHANT.format(max_taps=4)}, engine=engine)
    try:
        h.start()
        wait_for(lambda: h.store.last_event_id() == 2, what="backlog consumed")
        wait_for(lambda: h.controller.mirrors, what="install")
        time.sleep(0.2)
        assert [p["match"]["tcp_src"] for m, p in h.controller.calls
                if m == "install_mirror"] == [5002]
    finally:
        h.stop()
        h.controller.stop()


def test_other_apps_events_advance_the_cursor_but_tap_nothing(
        make: Callable[..., Harness]) -> None:
    h = make()
    h.engine.fire("someone_elses_threshold", FLOW_A)
    wait_for(lambda: h.store.last_event_id() == 1, what="cursor")
    time.sleep(0.2)
    assert h.controller.writes() == []


def test_an_input_the_core_cannot_take_is_skipped_not_fatal(make: Callable[..., Harness],
                                                            caplog: pytest.LogCaptureFixture
                                                            ) -> None:
    h = make()
    h.runtime.submit("not an input")
    h.engine.fire("demon_elephant", FLOW_A)
    wait_for(lambda: h.controller.mirrors, what="install after the bad input")
    assert any("input skipped" in r.getMessage() for r in caplog.records)


def test_port_map_is_reread_every_second_while_empty(tmp_path: Path,
                                                     mock: responses.RequestsMock) -> None:
    """Agents appear after the daemon started: it taps as soon as the map has them."""
    engine = ScriptedEngine(port_map=[]).register(mock)
    h = Harness(tmp_path, mock, {"elephant": ELEPHANT.format(max_taps=4)}, engine=engine,
                topology_interval=1000.0)  # only the while-empty re-read can help
    try:
        h.start()
        engine.set_flows("demon_elephant", [(FLOW_A, 400_000.0, "101")])
        engine.fire("demon_elephant", FLOW_A)
        time.sleep(0.3)
        assert h.controller.mirrors == {}  # nowhere to place it yet
        engine.port_map = seed_port_map()
        wait_for(lambda: h.controller.mirrors, timeout=5, what="tap once the port is known")
    finally:
        h.stop()
        h.controller.stop()


def test_an_event_from_a_port_not_yet_mapped_waits_for_the_map(
        tmp_path: Path, mock: responses.RequestsMock) -> None:
    """The first event arrives before the port map has its port: the flow waits while
    the runtime re-reads the map, instead of failing for want of a location."""
    engine = ScriptedEngine().register(mock)
    engine.hide_ports_until_events = True
    h = Harness(tmp_path, mock, {"elephant": ELEPHANT.format(max_taps=4)}, engine=engine,
                topology_interval=1000.0)
    try:
        h.start()
        assert h.runtime.ctx.topology.locate("127.0.0.1", "101") is None
        h.engine.fire("demon_elephant", FLOW_A)  # and no activeflows sighting ever
        wait_for(lambda: h.controller.mirrors, timeout=5, what="tap after the re-read")
        assert list(h.controller.mirrors) == ["elephant.1"]
    finally:
        h.stop()
        h.controller.stop()


@pytest.mark.parametrize("trigger", ["event", "poll"])
def test_a_port_the_map_lacks_is_tapped_when_it_appears(
        tmp_path: Path, mock: responses.RequestsMock, trigger: str) -> None:
    """The agent's counters for the port come a while after its first flow samples:
    the flow waits for them (the map re-read every second meanwhile), it does not
    fail, whether a threshold event or an ``/activeflows`` poll saw it first."""
    full = seed_port_map()
    engine = ScriptedEngine(port_map=[e for e in full if e["ifIndex"] != 101]).register(mock)
    h = Harness(tmp_path, mock, {"elephant": ELEPHANT.format(max_taps=4)}, engine=engine,
                topology_interval=1000.0)  # only the while-waiting re-read can help
    try:
        h.start()
        engine.set_flows("demon_elephant", [(FLOW_A, 400_000.0, "101")])  # still above threshold
        if trigger == "event":
            engine.fire("demon_elephant", FLOW_A)
        wait_for(lambda: any(e.kind == "waiting" and "location unknown" in e.detail["cause"]
                             for e in h.store.history()), timeout=5, what="the wait, recorded")
        time.sleep(0.3)  # 3 simulated seconds: re-read, still not in the map
        assert h.controller.mirrors == {}
        engine.port_map = full
        wait_for(lambda: h.controller.mirrors, timeout=5, what="tap once the port is known")
        assert [m for m, _ in h.controller.writes()] == ["install_mirror"]
    finally:
        h.stop()
        h.controller.stop()


def test_a_mirror_the_switch_drops_is_recorded_not_removed_again(
        make: Callable[..., Harness]) -> None:
    h = make()
    h.engine.set_flows("demon_elephant", [(FLOW_A, 400_000.0, "101")])
    h.engine.fire("demon_elephant", FLOW_A)
    wait_for(lambda: h.controller.mirrors, what="install")
    wait_for(lambda: h.controller.server.subscribers, what="daemon subscribed")
    assert h.controller.expire("elephant.1", "idle_timeout")  # pushes mirror_removed
    wait_for(lambda: h.runtime.state.taps["elephant.1"].state == "removed",
             what="tap removed on the controller's event")
    time.sleep(0.2)
    assert h.controller.writes() == [("install_mirror", "elephant.1")]
    assert "idle_timeout" in h.runtime.state.taps["elephant.1"].reason


def test_the_state_file_is_pruned_of_taps_that_ended_long_ago(tmp_path: Path,
                                                               mock: responses.RequestsMock) -> None:
    h = Harness(tmp_path, mock, {"elephant": ELEPHANT.format(max_taps=4),
                                 "_global": "history_retain: 1h\n"})
    now = time.time()
    old = Tap(tap_id="elephant.1", policy="elephant", flow_key=FLOW_A, match={}, dpid=1,
              in_port=1, copy_port=6, vlan_tag=None, bidirectional=False, state="removed",
              rate_bps=1e6, priority=100, created_at=now - 7300, updated_at=now - 7200,
              expires_at=now - 7000, last_trigger_at=now - 7300, ended_at=now - 7200)
    recent = replace(old, tap_id="elephant.2", flow_key=FLOW_B, ended_at=now - 60)
    h.store.save(State(taps={"elephant.1": old, "elephant.2": recent}, next_seq=3),
                 [HistoryEntry("elephant.1", now - 7300, "created", {}),
                  HistoryEntry("elephant.2", now - 120, "created", {})])
    h.store.save(State(next_seq=3))  # both ended and forgotten by the core
    try:
        h.start()
        wait_for(lambda: h.store.tap("elephant.1") is None, timeout=5, what="prune at start")
        assert h.store.tap("elephant.2") == recent
        assert [e.tap_id for e in h.store.history()
                if e.tap_id is not None and e.tap_id.startswith("elephant.")] == ["elephant.2"]
    finally:
        h.stop()
        h.controller.stop()
