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


def test_the_embedded_engine_records_what_it_receives(tmp_path: Path) -> None:
    import socket
    import time

    from sflow.embedded import EmbeddedEngine

    rec = RollingRecorder(tmp_path / "rec")
    engine = EmbeddedEngine(sflow_addr=("127.0.0.1", 0), http_addr=("127.0.0.1", 0),
                            recorder=rec).start()
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            for n in range(50):
                sock.sendto(payload(n), engine.sflow_address)
        deadline = time.monotonic() + 5
        while engine.collector.received < 50 and time.monotonic() < deadline:
            time.sleep(0.02)
    finally:
        engine.stop()  # closes the recorder
    got = [(src, p) for _, src, p in iter_datagrams(tmp_path / "rec")]
    assert got == [("127.0.0.1", payload(n)) for n in range(50)]
    assert engine.engine.analyzer()["sFlowDatagramsReceived"] == 50  # and ingested them


def test_record_options(tmp_path: Path) -> None:
    import argparse

    import pytest

    from sflow import rolling

    parser = argparse.ArgumentParser()
    rolling.add_arguments(parser)
    args = parser.parse_args(["--record-sflow", str(tmp_path / "r"), "--record-sflow-size",
                              "2GB", "--record-sflow-age", "90m"])
    rec = rolling.from_args(args)
    assert (rec.max_bytes, rec.max_age) == (2_000_000_000, 5400.0)
    assert rolling.from_args(parser.parse_args([])) is None
    for bad in (["--record-sflow-size", "10"], ["--record-sflow-age", "5s"],
                ["--record-sflow-size", "lots"]):
        with pytest.raises(SystemExit):
            parser.parse_args(bad)
