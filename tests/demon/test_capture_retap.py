"""Issue 14 #12: the first packets of a re-tap are never filed into the previous,
ended tap's files — whether the re-tap is already in the table or arrives a
moment after its first copies."""

from __future__ import annotations

from pathlib import Path

from demon.capture.filer import CaptureAgent
from demon.capture.taptable import TapTable, write_tap_table
from tests.demon.test_capture_agent import ELEPHANT, FakeClock, pcap_frames, tap, tcp_frame

S = 1_000_000_000


def flow(n: int, tag: bytes) -> list[bytes]:
    return [tcp_frame("10.0.0.1", "10.0.0.2", 51792, 5201, tag + bytes([i])) for i in range(n)]


def test_copies_after_a_taps_stop_wait_for_the_re_tap_instead_of_joining_the_ended_tap(tmp_path: Path) -> None:
    table = tmp_path / "taps.json"
    clock = FakeClock()  # 1000.0
    write_tap_table(table, [tap("old", ELEPHANT, start=990.0, stop=None, state="active")])
    agent = CaptureAgent(tmp_path / "out", TapTable(table), grace=3.0, clock=clock)
    old_frames = flow(3, b"old")
    for i, f in enumerate(old_frames):
        agent.handle(f, int(995 * S) + i)
    # The old tap ends at 998; a hold-down later the same flow is tapped again, and its
    # first copies arrive before the capture host's table knows the re-tap.
    write_tap_table(table, [tap("old", ELEPHANT, start=990.0, stop=998.0, state="removed")])
    clock.now = 1000.5
    agent.tick()
    retap_frames = flow(4, b"new")
    for i, f in enumerate(retap_frames[:2]):
        agent.handle(f, int(1000.4 * S) + i)
    clock.now = 1001.0
    agent.tick()
    write_tap_table(table, [tap("old", ELEPHANT, start=990.0, stop=998.0, state="removed"),
                            tap("new", ELEPHANT, start=1000.3, stop=None, state="active")])
    clock.now = 1001.2
    agent.tick()
    for i, f in enumerate(retap_frames[2:]):
        agent.handle(f, int(1001.1 * S) + i)
    agent.close()
    out = tmp_path / "out"
    assert pcap_frames(out / "old") == old_frames  # nothing stamped after its stop
    assert pcap_frames(out / "new") == retap_frames  # its first copies included, in order
    assert not (out / "unmatched").exists()


def test_a_re_tap_in_the_table_takes_its_copies_even_if_listed_before_the_old_tap(tmp_path: Path) -> None:
    table = tmp_path / "taps.json"
    # Listed newest first, and the old tap's stop not known yet: start times decide.
    write_tap_table(table, [tap("new", ELEPHANT, start=1000.3), tap("old", ELEPHANT, start=990.0)])
    agent = CaptureAgent(tmp_path / "out", TapTable(table), grace=3.0, clock=FakeClock())
    frames = flow(3, b"x")
    for i, f in enumerate(frames):
        agent.handle(f, int(1000.5 * S) + i)
    agent.close()
    assert pcap_frames(tmp_path / "out" / "new") == frames
    assert not (tmp_path / "out" / "old").exists()


def test_late_copies_of_an_ended_tap_stay_its_own_and_strays_after_the_grace_are_unmatched(tmp_path: Path) -> None:
    table = tmp_path / "taps.json"
    clock = FakeClock()
    write_tap_table(table, [tap("old", ELEPHANT, start=990.0, stop=999.9, state="removed")])
    agent = CaptureAgent(tmp_path / "out", TapTable(table), grace=1.0, clock=clock)
    late, stray = flow(1, b"late"), flow(1, b"stray")
    agent.handle(late[0], int(1000.0 * S))  # within the stop slack (0.25 s): in flight at removal
    agent.handle(stray[0], int(1003.0 * S))  # long after: no tap of it known
    clock.now += 2
    agent.tick()
    agent.close()
    assert pcap_frames(tmp_path / "out" / "old") == late
    assert pcap_frames(tmp_path / "out" / "unmatched") == stray
