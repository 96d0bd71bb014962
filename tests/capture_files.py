"""Reading what the capture agent wrote (pcapng or pcap), through sflow.pcap, for tests."""

from __future__ import annotations

from pathlib import Path

from sflow.pcap import iter_packets


def capture_files(directory: Path) -> list[Path]:
    """The capture files of one tap directory, in order (either format)."""
    return sorted(p for p in Path(directory).glob("*") if p.suffix in (".pcap", ".pcapng"))


def read_capture(path: Path) -> list[tuple[float, bytes, int]]:
    """``(timestamp, frame, original length)`` of every record of one file."""
    return [(pkt.timestamp, pkt.frame, pkt.orig_len) for pkt in iter_packets(path)]


def frames_of(directory: Path) -> list[bytes]:
    return [frame for p in capture_files(directory) for _ts, frame, _len in read_capture(p)]
