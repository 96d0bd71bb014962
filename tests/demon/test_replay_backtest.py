"""Backtest (``demon-watch --replay``) over a recorded engine session.

``tests/fixtures/replay/elephant_session.jsonl``: 45 s of ``/events/json`` and
``/activeflows`` answers in the recording format (docs/recordings.md). Flow A
(s1 port 1) fires at +2 s and stays hot until +15 s; flow B (s2 port 3) fires
at +20.4 s and stays hot to the end; flow A fires again at +22.2 s, inside its
3 s hold-down.
"""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest

from demon import cli
from demon.replay import backtest
from demon.replay_core import ReplayError

pytestmark = pytest.mark.replay

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures" / "replay"
RECORDING = FIXTURES / "elephant_session.jsonl"
POLICIES = FIXTURES / "policies"
FLOW_A = "10.0.0.1,10.0.0.2,6,51792,5201"
FLOW_B = "10.0.0.8,10.0.0.6,6,40100,80"
T0 = 1764000000.0


def test_backtest_takes_extends_and_releases_with_causes() -> None:
    result = backtest(POLICIES, RECORDING)
    taps = sorted(result.taps.values(), key=lambda t: t.created_at)
    assert [(t.tap_id, t.flow_key, t.dpid, t.in_port) for t in taps] == [
        ("elephant.1", FLOW_A, 1, 1), ("elephant.2", FLOW_B, 2, 3),
        ("elephant.3", FLOW_B, 2, 3)]
    first, second, third = taps
    # A: tapped by event 1, kept alive by every poll up to +15 s, released 5 s later.
    assert first.created_at == pytest.approx(T0 + 2.01)
    assert result.extensions["elephant.1"] >= 10
    assert first.state == "removed" and first.ended_at == pytest.approx(T0 + 20.0, abs=1.0)
    assert "condition cleared" in first.reason
    # B: still hot, but ended by max_duration (20 s), then re-tapped after its hold-down.
    assert second.state == "removed" and "max duration" in second.reason
    assert second.ended_at - second.created_at == pytest.approx(20.0, abs=1.0)
    assert third.created_at >= second.ended_at + 3.0 and third.state == "active"
    # A's event at +22.2 s falls in its hold-down: no tap for it.
    assert [t.flow_key for t in taps].count(FLOW_A) == 1
    assert result.events == 3


def test_cli_replay_prints_the_decisions(tmp_path: Path) -> None:
    out, err = io.StringIO(), io.StringIO()
    status = cli.main(["--policies", str(POLICIES), "--replay", str(RECORDING)],
                      stdout=out, stderr=err)
    assert status == 0, err.getvalue()
    text = out.getvalue()
    assert "3 event(s), 45 top-N poll(s)" in text
    assert "max duration reached" in text and "condition cleared" in text
    out = io.StringIO()
    assert cli.main(["--policies", str(POLICIES), "--replay", str(RECORDING), "--json"],
                    stdout=out, stderr=err) == 0
    lines = [json.loads(line) for line in out.getvalue().splitlines()]
    created = [(line["tap_id"], line["t"]) for line in lines if line.get("kind") == "created"]
    assert [tap for tap, _ in created] == ["elephant.1", "elephant.2", "elephant.3"]
    assert [line["tap"]["state"] for line in lines if "tap" in line] == [
        "removed", "removed", "active"]


def test_replay_without_a_fabric_says_what_to_pass(tmp_path: Path) -> None:
    copy = tmp_path / "session.jsonl"
    copy.write_text(RECORDING.read_text())
    with pytest.raises(ReplayError, match="--fabric"):
        backtest(POLICIES, copy)
    err = io.StringIO()
    assert cli.main(["--policies", str(POLICIES), "--replay", str(copy)],
                    stdout=io.StringIO(), stderr=err) == cli.EXIT_CONFIG
    assert "--fabric" in err.getvalue()


def test_replay_of_a_broken_recording_names_the_line(tmp_path: Path) -> None:
    bad = tmp_path / "bad.jsonl"
    bad.write_text(RECORDING.read_text().splitlines()[0] + "\n{not json\n")
    with pytest.raises(ReplayError, match=r"bad.jsonl:2"):
        backtest(POLICIES, bad, fabric=FIXTURES / "elephant_session.fabric.json")


def test_backtest_of_a_live_engine_recording() -> None:
    """``live_session.jsonl``: recorded from the embedded engine fed sFlow (see
    record_live_session.py). A is hot from +1 s to +12 s and decays through the
    engine's smoothing; B is hot from +24 s to the end."""
    result = backtest(POLICIES, FIXTURES / "live_session.jsonl")
    taps = sorted(result.taps.values(), key=lambda t: t.created_at)
    assert [(t.flow_key, t.dpid, t.in_port, t.state) for t in taps] == [
        ("10.0.0.1,10.0.0.2,6,51792,5201", 1, 1, "removed"),
        ("10.0.0.8,10.0.0.6,6,40100,80", 2, 3, "removed")]
    a, b = taps
    assert a.created_at - result.start < 2.0  # tapped on the engine's first event
    assert b.created_at - result.start == pytest.approx(24.0, abs=1.5)
    # A stays above the threshold in the engine's smoothed rates for a while after +12 s,
    # so both end by max_duration (20 s), not by the condition clearing.
    for tap in taps:
        assert "max duration" in tap.reason
        assert tap.ended_at - tap.created_at == pytest.approx(20.0, abs=1.5)
    assert result.events == 2


def test_backtest_of_a_top_talkers_policy_uses_the_polls(tmp_path: Path) -> None:
    """Same live recording, read as the top-1 talker of the flow: taps come from the
    /activeflows answers alone (the recording's threshold events belong to no
    threshold of this policy)."""
    (tmp_path / "elephant.yaml").write_text(
        "name: elephant\nkind: top_talkers\n"
        "keys: ipsource,ipdestination,ipprotocol,tcpsourceport,tcpdestinationport\n"
        "top: 1\nmin_rate: 8Mbps\ninterval: 1s\nduration: 5s\nmax_duration: 60s\n")
    result = backtest(tmp_path, FIXTURES / "live_session.jsonl",
                      fabric=FIXTURES / "live_session.fabric.json")
    taps = sorted(result.taps.values(), key=lambda t: t.created_at)
    assert [t.flow_key for t in taps] == ["10.0.0.1,10.0.0.2,6,51792,5201",
                                          "10.0.0.8,10.0.0.6,6,40100,80"]
    a, b = taps
    assert "condition cleared" in a.reason  # A fell below 8 Mbit/s, 5 s later released
    assert a.ended_at <= b.created_at + 5.0
    assert b.state == "active"  # still the top talker when the recording ends
    assert all(e.detail.get("event_id") is None for e in result.timeline
               if e.kind == "created")
