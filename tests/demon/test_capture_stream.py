"""``demon-capture --daemon``: the transition stream feeds the agent's tap table,
resumes from the last transition applied (kept in the output directory) through
a daemon restart and an agent restart, and never needs the daemon's state file."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest

from demon.capture.filer import CaptureAgent
from demon.capture.stream import (CURSOR_FILE, StreamConfigError, TransitionFollower, apply_transition,
                                  load_cursor, read_token)
from demon.capture.taptable import TapTable
from tests.demon.fake_daemon_api import FakeDaemonApi, tap_entry
from tests.demon.test_capture_agent import ELEPHANT, pcap_frames, tcp_frame

TOKEN = "s3cret"


def wait_for(predicate, timeout: float = 10.0) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


@pytest.fixture
def api() -> FakeDaemonApi:
    server = FakeDaemonApi(TOKEN).start()
    yield server
    server.stop()


def follow(api: FakeDaemonApi, out: Path, token: str | None = TOKEN) -> TransitionFollower:
    return TransitionFollower(api.url, out, token=token, poll_timeout=1).start()


def pump(follower: TransitionFollower, agent: CaptureAgent, want_id: int) -> None:
    def caught_up() -> bool:
        follower.apply(agent.table, agent.note_transition)
        return follower.applied_id >= want_id
    wait_for(caught_up)


def test_taps_learnt_from_the_stream_file_frames_and_end_with_the_switch_counter(api: FakeDaemonApi,
                                                                                 tmp_path: Path) -> None:
    out = tmp_path / "out"
    agent = CaptureAgent(out, TapTable(None), grace=0.5)
    follower = follow(api, out)
    try:
        tap = tap_entry("elephant_tcp.1", ELEPHANT, state="pending", start=time.time() - 1)
        api.add("created", tap, cause="threshold event 3 (120 Mbit/s)")
        api.add("active", {**tap, "state": "active"})
        rec = api.add("extended", {**tap, "state": "active"})
        pump(follower, agent, rec["id"])
        frames = [tcp_frame("10.0.0.1", "10.0.0.2", 51792, 5201, bytes([i]) * 50) for i in range(3)]
        for i, f in enumerate(frames):
            agent.handle(f, time.time_ns() + i)
        stop = time.time()
        rec = api.add("removed", {**tap, "state": "removed", "stop": stop, "packets": 5, "bytes": 999},
                      cause="the flow ended")
        pump(follower, agent, rec["id"])
        agent.tick()
        agent.close()
    finally:
        follower.stop()
    assert pcap_frames(out / "elephant_tcp.1") == frames
    summary = json.loads((out / "elephant_tcp.1" / "tap.json").read_text())
    assert (summary["policy"], summary["trigger"], summary["flow_key"]) == \
        ("elephant_tcp", "elephant_tcp event 3", "10.0.0.1,10.0.0.2,41000,5201")
    assert (summary["packets"], summary["switch_packets"], summary["difference"]) == (3, 5, 2)
    assert "2 counted by the switch but never received" in summary["explanation"]
    assert [t["kind"] for t in summary["transitions"]] == ["created", "active", "extended", "removed"]
    assert summary["transitions"][0]["cause"] == "threshold event 3 (120 Mbit/s)"
    assert json.loads((out / CURSOR_FILE).read_text())["last_id"] == rec["id"]


def test_it_catches_up_after_a_daemon_restart_and_after_its_own(api: FakeDaemonApi, tmp_path: Path) -> None:
    out = tmp_path / "out"
    table = TapTable(None)
    follower = follow(api, out)
    try:
        first = api.add("created", tap_entry("p.1", {"udp_dst": 1}))
        wait_for(lambda: follower.apply(table) or follower.applied_id == first["id"])
        port = api.port
        api.stop()  # the daemon goes away; transitions happen meanwhile (its history keeps them)
        wait_for(lambda: not follower.up)
        missed = [api.add("created", tap_entry(f"p.{n}", {"udp_dst": n})) for n in (2, 3)]
        api.start(port)  # back on the same address
        wait_for(lambda: follower.apply(table) or follower.applied_id == missed[-1]["id"])
        assert follower.up and sorted(table.by_id) == ["p.1", "p.2", "p.3"]
    finally:
        follower.stop()
    assert load_cursor(out, api.url) == missed[-1]["id"]
    # The agent itself restarts: it asks only for what came after its cursor.
    later = api.add("removed", tap_entry("p.2", {"udp_dst": 2}, state="removed"))
    api.requests.clear()
    table2 = TapTable(None)
    follower = follow(api, out)
    try:
        wait_for(lambda: follower.apply(table2) or follower.applied_id == later["id"])
    finally:
        follower.stop()
    assert api.requests[0]["after"] == missed[-1]["id"]
    assert list(table2.by_id) == ["p.2"] and table2.by_id["p.2"].ended


def test_a_bad_token_changes_nothing_and_is_reported(api: FakeDaemonApi, tmp_path: Path) -> None:
    api.add("created", tap_entry("p.1", {"udp_dst": 1}))
    table = TapTable(None)
    follower = follow(api, tmp_path, token="wrong")
    try:
        wait_for(lambda: follower.errors > 0)
        follower.apply(table)
    finally:
        follower.stop()
    assert table.taps == [] and not follower.up
    assert "401" in (follower.last_error or "") and "--token-file" in (follower.last_error or "")
    assert not (tmp_path / CURSOR_FILE).exists()


def test_records_without_a_placed_tap_change_nothing_and_an_ended_one_gets_its_stop() -> None:
    table = TapTable(None)
    apply_transition(table, {"id": 1, "at": 5.0, "tap_id": None, "kind": "paused", "tap": None})
    apply_transition(table, {"id": 2, "at": 6.0, "tap_id": "x.1", "kind": "failed",
                             "tap": tap_entry("x.1", None, state="failed")})  # never placed
    assert table.taps == [] and table.version == 0
    apply_transition(table, {"id": 3, "at": 7.0, "tap_id": "y.1", "kind": "created",
                             "tap": tap_entry("y.1", {"udp_dst": 9}, state="pending", start=6.5)})
    apply_transition(table, {"id": 4, "at": 9.0, "tap_id": "y.1", "kind": "removed",
                             "tap": tap_entry("y.1", {"udp_dst": 9}, state="removed", start=6.5)})
    assert table.by_id["y.1"].stop == 9.0 and table.by_id["y.1"].ended


def test_token_files(tmp_path: Path) -> None:
    f = tmp_path / "token"
    f.write_text("# the capture host\ncapture:abc123\n")
    os.chmod(f, 0o600)
    assert read_token(f) == "abc123"
    f.write_text("bare-secret\n")
    assert read_token(f) == "bare-secret"
    f.write_text("\n\n")
    with pytest.raises(StreamConfigError, match="no token"):
        read_token(f)
    with pytest.raises(StreamConfigError, match="no such file"):
        read_token(tmp_path / "missing")
