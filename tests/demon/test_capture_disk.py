"""Rotation, disk budgets and a full disk: the active file is never removed, the
oldest ended captures go first, and a full disk stops writing with an error in
the manifest and the metrics instead of a crash (and writing resumes once there
is room again)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path
from typing import Iterator

import pytest

from demon.capture import sink as sink_mod
from demon.capture.budget import DiskBudget
from demon.capture.filer import CaptureAgent
from demon.capture.metrics import registry_for
from demon.capture.taptable import TapTable, write_tap_table
from tests.capture_files import capture_files, read_capture
from tests.demon.test_capture_agent import FakeClock, tap, tcp_frame

S = 1_000_000_000
A = {"ipv4_src": "10.0.0.1", "tcp_dst": 5201}
B = {"ipv4_src": "10.0.0.3", "tcp_dst": 5202}


def frame_a(i: int) -> bytes:
    return tcp_frame("10.0.0.1", "10.0.0.2", 1, 5201, i.to_bytes(4, "big") * 100)


def frame_b(i: int) -> bytes:
    return tcp_frame("10.0.0.3", "10.0.0.2", 1, 5202, i.to_bytes(4, "big") * 100)


def metric(agent: CaptureAgent, name: str, **labels: str) -> float:
    value = registry_for(agent).get_sample_value(name, labels)
    assert value is not None, (name, labels)
    return value


def test_a_long_capture_rotates_and_keeps_within_both_budgets(tmp_path: Path) -> None:
    table = tmp_path / "taps.json"
    write_tap_table(table, [tap("a", A, start=1.0), tap("b", B, start=2.0)])
    clock = FakeClock()
    budget = DiskBudget(total=45_000, per_tap=40_000)
    agent = CaptureAgent(tmp_path / "out", TapTable(table), rotate_bytes=10_000, budget=budget, clock=clock)
    sent_a = [frame_a(i) for i in range(200)]  # ~92 kB of a: 9+ files
    for i, f in enumerate(sent_a):
        agent.handle(f, (1000 + i) * S)
        if i % 10 == 0:
            clock.now += 1
            agent.tick()
            on_disk = sum(p.stat().st_size for p in capture_files(tmp_path / "out" / "a"))
            assert on_disk <= 40_000 + 10_000  # the per-tap budget, give or take one tick's file
    # a ends; b keeps writing: a's files are the oldest ended capture and go first
    write_tap_table(table, [tap("a", A, start=1.0, stop=clock.now, state="removed"), tap("b", B, start=2.0)])
    clock.now += 10
    agent.tick()
    current_a = [p.name for p in capture_files(tmp_path / "out" / "a")]
    assert current_a  # a's last file survived its own budget
    for i in range(120):
        agent.handle(frame_b(i), (2000 + i) * S)
        if i % 10 == 0:
            clock.now += 1
            agent.tick()
            b_files = capture_files(tmp_path / "out" / "b")
            assert b_files and agent.sinks["b"].files.current is not None
            assert agent.sinks["b"].files.current.path.exists()  # the active file is never removed
    agent.tick()
    total = sum(p.stat().st_size for d in ("a", "b") for p in capture_files(tmp_path / "out" / d))
    assert total <= 45_000 + 10_000
    agent.close()
    summary = json.loads((tmp_path / "out" / "a" / "tap.json").read_text())
    b_summary = json.loads((tmp_path / "out" / "b" / "tap.json").read_text())
    # the overall budget took the ended tap's files, none of the live tap's
    assert "overall disk budget" in [f["deleted"] for f in summary["files"]]
    assert "overall disk budget" not in [f["deleted"] for f in b_summary["files"]]
    assert summary["packets"] == len(sent_a)  # the record keeps the figures of removed files
    assert all(f["deleted"] in ("tap disk budget", "overall disk budget", None) for f in summary["files"])
    deleted_manifest = json.loads((tmp_path / "out" / "a" / "a-0001.json").read_text())
    assert deleted_manifest["deleted"] == "tap disk budget" and deleted_manifest["packets"] > 0
    assert budget.removed_files >= 9
    assert metric(agent, "pytapdemon_capture_budget_removed_files_total") == budget.removed_files
    kept = [f for d in ("a", "b") for p in capture_files(tmp_path / "out" / d) for f in read_capture(p)]
    assert kept  # what is left still reads back


def test_a_budget_taken_by_open_files_stops_writing_and_says_so(tmp_path: Path) -> None:
    table = tmp_path / "taps.json"
    write_tap_table(table, [tap("a", A, start=1.0)])
    clock = FakeClock()
    agent = CaptureAgent(tmp_path / "out", TapTable(table), rotate_bytes=100_000,
                         budget=DiskBudget(per_tap=3_000), clock=clock)
    for i in range(20):
        agent.handle(frame_a(i), i)
        clock.now += 0.3
        agent.tick()
    agent.close()
    summary = json.loads((tmp_path / "out" / "a" / "tap.json").read_text())
    assert summary["budget_dropped"] > 0 and summary["packets"] + summary["not_written"] == 20
    assert "disk full or budget" in summary["explanation"] or summary["switch_packets"] is None
    assert metric(agent, "pytapdemon_capture_not_written_frames_total", tap_id="a", reason="budget") > 0


@pytest.fixture
def small_fs(tmp_path: Path) -> Iterator[Path]:
    """A 1 MiB tmpfs: root only."""
    if os.geteuid() != 0 or shutil.which("mount") is None:
        pytest.skip("mounting a small filesystem needs root")
    mnt = tmp_path / "small"
    mnt.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mnt)], check=True)
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


def test_a_full_disk_stops_writing_with_the_error_recorded_and_resumes_when_room_returns(
        small_fs: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    table = tmp_path / "taps.json"
    write_tap_table(table, [tap("a", A, start=1.0)])
    clock = FakeClock()
    filler = small_fs / "filler"
    filler.write_bytes(bytes(300_000))  # someone else's file: removed later to make room
    agent = CaptureAgent(small_fs / "out", TapTable(table), rotate_bytes=0, clock=clock)
    n = 0
    while agent.sinks.get("a") is None or agent.sinks["a"].writing:
        agent.handle(frame_a(n), n)
        n += 1
        if n % 50 == 0:
            agent.tick()
        assert n < 5000, "the disk never filled"
    sink = agent.sinks["a"]
    assert sink.write_errors == 1 and "No space left on device" in (sink.last_error or "")
    for i in range(100):  # frames go on arriving: counted, not written, no exception
        agent.handle(frame_a(n + i), n + i)
    agent.tick()
    summary = json.loads((small_fs / "out" / "a" / "tap.json").read_text())  # rewritten in place
    assert "No space left on device" in summary["error"] and summary["writing"] is False
    assert summary["not_written"] >= 100
    agent.write_status()
    status = json.loads((small_fs / "out" / "agent.json").read_text())
    assert "No space left on device" in status["taps"]["a"]["error"]
    assert metric(agent, "pytapdemon_capture_write_errors_total", tap_id="a") == 1
    assert metric(agent, "pytapdemon_capture_writing", tap_id="a") == 0
    (path,) = capture_files(small_fs / "out" / "a")
    assert len(read_capture(path)) == sink.packets  # the file holds whole records only
    # room comes back (an operator frees space); writing resumes after the retry delay
    filler.unlink()
    clock.now += sink_mod.RETRY_AFTER + 1
    agent.tick()
    before = sink.packets
    agent.handle(frame_a(99_999), 99_999)
    agent.close()
    assert sink.packets == before + 1 and sink.writing
    assert len(read_capture(path)) == sink.packets
