"""The engine's rolling recording of raw datagrams: segments, bounds, what comes back."""

from __future__ import annotations

from pathlib import Path

from sflow.pcap import read_udp_packets
from sflow.rolling import RollingRecorder, export, iter_datagrams, segments

T0 = 1_764_000_000.0


def payload(n: int, size: int = 200) -> bytes:
    return n.to_bytes(4, "big") * (size // 4)


def test_datagrams_come_back_as_recorded(tmp_path: Path) -> None:
    with RollingRecorder(tmp_path, clock=lambda: T0) as rec:
        rec.record(T0, "10.0.0.9", 50000, payload(1))
        rec.record(T0 + 0.25, "fe80::1", 50001, payload(2))
    (path,) = segments(tmp_path)
    assert path.name == "sflow-20251124T160000.000000Z.pcap"
    pkts = list(read_udp_packets(path))
    assert [(p.timestamp, p.src_ip, p.src_port, p.dst_port, p.payload) for p in pkts] == [
        (T0, "10.0.0.9", 50000, 6343, payload(1)), (T0 + 0.25, "fe80::1", 50001, 6343, payload(2))]


def test_segments_rotate_by_time_and_size(tmp_path: Path) -> None:
    with RollingRecorder(tmp_path, segment_seconds=10, segment_bytes=2048,
                         clock=lambda: T0) as rec:
        for n in range(30):  # 1 datagram/s: 3 segments by time
            rec.record(T0 + n, "10.0.0.9", 50000, payload(n, 100))
        assert len(segments(tmp_path)) == 3
        for n in range(30):  # 20 x ~260 bytes at once: by size
            rec.record(T0 + 30, "10.0.0.9", 50000, payload(n, 200))
    assert len(segments(tmp_path)) >= 5
    assert sum(1 for _ in iter_datagrams(tmp_path)) == 60


def test_old_and_excess_segments_are_deleted_whole_others_never(tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("mine")
    (tmp_path / "sflow-other.pcap").write_bytes(b"not a segment name")
    rec = RollingRecorder(tmp_path, max_age=60, segment_seconds=10, clock=lambda: T0)
    for n in range(0, 200, 2):  # 200 s of traffic, one segment per 10 s
        rec.record(T0 + n, "10.0.0.9", 50000, payload(n))
    kept = segments(tmp_path)
    # segments whose last datagram is older than 60 s are gone (checked as segments open)
    assert 6 <= len(kept) <= 8
    first = min(ts for ts, _, _ in iter_datagrams(tmp_path))
    assert T0 + 198 - first <= 60 + 2 * 10  # pruned when a segment opens
    assert rec.deleted == 20 - len(kept)
    assert (tmp_path / "notes.txt").exists() and (tmp_path / "sflow-other.pcap").exists()
    rec.close()
    rec = RollingRecorder(tmp_path, max_bytes=5000, segment_seconds=10, clock=lambda: T0 + 200)
    total = sum(p.stat().st_size for p in segments(tmp_path))
    assert total <= 5000 and segments(tmp_path)  # pruned at start, newest kept
    rec.close()


def test_export_one_file_for_a_time_range(tmp_path: Path) -> None:
    rec_dir = tmp_path / "rec"
    with RollingRecorder(rec_dir, segment_seconds=5, clock=lambda: T0) as rec:
        for n in range(20):
            rec.record(T0 + n, "10.0.0.9", 50000, payload(n))
    out = tmp_path / "last.pcap"
    assert export(rec_dir, out, since=T0 + 10) == 10
    assert [int.from_bytes(p.payload[:4], "big") for p in read_udp_packets(out)] == \
        list(range(10, 20))
