"""``demon-sflow decode FILE.pcap`` (sflow.jsonview.main_decode)."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest

from sflow.jsonview import main_decode
from sflow.pcap import PcapWriter


def run(argv: list[str]) -> tuple[int, list[str], str]:
    out, err = io.StringIO(), io.StringIO()
    status = main_decode(argv, out, err)
    return status, out.getvalue().splitlines(), err.getvalue()


@pytest.mark.replay
def test_decodes_a_capture_and_counts_malformed(corpus_dir: Path) -> None:
    status, lines, err = run([str(corpus_dir / "pcap/tcpdump/sflow_multiple_counter_30_pdus.pcap")])
    assert status == 0
    objs = [json.loads(line) for line in lines]
    assert len(objs) == 30
    errors = [o for o in objs if "error" in o]
    assert len(errors) == 5 and {o["error"] for o in errors} == {"not-sflow-v5"}
    assert all(o["offset"] == 0 and o["datagramSourceIP"].startswith("168.87.240.") for o in errors)
    good = [o for o in objs if "error" not in o]
    with open(corpus_dir / "decodes/pcap_tcpdump_sflow_multiple_counter_30_pdus.sflowtool.jsonl") as fh:
        reference = [json.loads(line) for line in fh]
    assert [len(o["samples"]) for o in good] == [len(r["samples"]) for r in reference if "samples" in r]
    assert "30 datagrams, 5 malformed (not-sflow-v5 5)" in err
    assert err.count("\n") == 1


def test_malformed_datagram_line_carries_reason_and_partial(tmp_path: Path) -> None:
    truncated = bytes.fromhex("00000005 00000001 0a000001 00000000 0000002a 00000010 00000002"
                              "00000001 00000100")  # declares 2 samples, the first overruns
    path = tmp_path / "bad.pcap"
    with open(path, "wb") as fh:
        PcapWriter(fh).write_udp(1.0, truncated)
    status, lines, err = run([str(path)])
    assert status == 0
    (obj,) = [json.loads(line) for line in lines]
    assert obj["error"] == "truncated-sample" and obj["offset"] == 28
    assert obj["agent"] == "10.0.0.1" and obj["packetSequenceNo"] == "42"
    assert "1 malformed (truncated-sample 1)" in err


def test_port_option(tmp_path: Path) -> None:
    path = tmp_path / "p.pcap"
    with open(path, "wb") as fh:
        writer = PcapWriter(fh)
        writer.write_udp(1.0, b"\x00\x00\x00\x05", dport=6400)
    assert run([str(path)])[1] == []
    status, lines, _ = run([str(path), "--port", "6400"])
    assert status == 0 and json.loads(lines[0])["error"] == "truncated-header"
    assert len(run([str(path), "--port", "0"])[1]) == 1  # 0 = any UDP port


def test_unreadable_file_exits_1_with_one_line(tmp_path: Path) -> None:
    status, lines, err = run([str(tmp_path / "missing.pcap")])
    assert status == 1 and lines == [] and err.count("\n") == 1 and "missing.pcap" in err
    junk = tmp_path / "junk.pcap"
    junk.write_bytes(b"definitely not a capture")
    status, lines, err = run([str(junk)])
    assert status == 1 and lines == [] and "not a pcap" in err


def test_closed_output_stops_quietly(tmp_path: Path) -> None:
    class Closed(io.StringIO):
        def write(self, text: str) -> int:
            raise BrokenPipeError(32, "Broken pipe")

    path = tmp_path / "p.pcap"
    with open(path, "wb") as fh:
        PcapWriter(fh).write_udp(1.0, b"\x00\x00\x00\x05")
    err = io.StringIO()
    assert main_decode([str(path)], Closed(), err) == 0
    assert "cannot read" not in err.getvalue()
