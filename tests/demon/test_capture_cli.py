"""``demon-capture`` on bad input: one line on stderr naming what is wrong, exit
status 2, no traceback, nothing written beyond what was good. And --version,
the log options, and ``--read`` of both formats through sflow.pcap."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from demon import __version__
from demon.capture.taptable import write_tap_table
from sflow.pcap import PcapngWriter
from tests.capture_files import capture_files
from tests.demon.test_capture_agent import ELEPHANT, pcap_frames, tap, tcp_frame, write_pcap

REPO = Path(__file__).resolve().parents[2]


def capture(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "demon.capture.agent", *args], capture_output=True, text=True,
                          timeout=60, cwd=cwd or REPO, env={**os.environ, "PYTHONPATH": str(REPO)})


@pytest.fixture
def inputs(tmp_path: Path) -> dict[str, Path]:
    good = tmp_path / "good.pcap"
    write_pcap(good, [(1000, tcp_frame("10.0.0.1", "10.0.0.2", 51792, 5201))])
    taps = tmp_path / "taps.json"
    write_tap_table(taps, [tap("t1", ELEPHANT)])
    text = tmp_path / "notes.txt"
    text.write_text("these are not packets\n" * 10)
    broken_ng = tmp_path / "broken.pcapng"
    shb = b"\x0a\x0d\x0d\x0a\x1c\x00\x00\x00\x4d\x3c\x2b\x1a\x01\x00\x00\x00" + b"\xff" * 8 + b"\x1c\x00\x00\x00"
    broken_ng.write_bytes(shb + (6).to_bytes(4, "little") + (7).to_bytes(4, "little") + bytes(40))
    huge = tmp_path / "huge-record.pcap"
    huge.write_bytes(good.read_bytes()[:24] + (0).to_bytes(8, "little") + (1 << 30).to_bytes(4, "little") * 2)
    bad_json = tmp_path / "bad.json"
    bad_json.write_text("{not json")
    not_table = tmp_path / "scalar.json"
    not_table.write_text("42")
    bad_entry = tmp_path / "bad-entry.json"
    bad_entry.write_text(json.dumps({"taps": [tap("t1", {"tcp_dst": "http"})]}))
    binary = tmp_path / "binary.json"
    binary.write_bytes(b"\xff\xfe\x00garbage")
    return {"good": good, "taps": taps, "text": text, "broken_ng": broken_ng, "huge": huge, "bad_json": bad_json,
            "not_table": not_table, "bad_entry": bad_entry, "binary": binary, "dir": tmp_path}


CASES = {
    "missing --read file": (["--read", "{dir}/nope.pcap", "-o", "{dir}/o", "--taps", "{taps}"], "nope.pcap: no such file"),
    "not a capture": (["--read", "{text}", "-o", "{dir}/o", "--taps", "{taps}"], "not a pcap or pcapng file"),
    "broken pcapng": (["--read", "{broken_ng}", "-o", "{dir}/o", "--taps", "{taps}"], "broken.pcapng"),
    "absurd record": (["--read", "{huge}", "-o", "{dir}/o", "--taps", "{taps}"], "not a capture"),
    "a directory": (["--read", "{dir}", "-o", "{dir}/o", "--taps", "{taps}"], "is a directory"),
    "missing taps file": (["--read", "{good}", "-o", "{dir}/o", "--taps", "{dir}/none.json"], "none.json: no such file"),
    "taps not JSON": (["--read", "{good}", "-o", "{dir}/o", "--taps", "{bad_json}"], "bad.json: not a JSON tap table"),
    "taps not a table": (["--read", "{good}", "-o", "{dir}/o", "--taps", "{not_table}"], "expected a list of taps"),
    "taps binary": (["--read", "{good}", "-o", "{dir}/o", "--taps", "{binary}"], "binary.json: not a JSON tap table"),
    "a bad tap": (["--read", "{good}", "-o", "{dir}/o", "--taps", "{bad_entry}"], "taps[0].match.tcp_dst"),
    "missing store": (["--read", "{good}", "-o", "{dir}/o", "--store", "{dir}/state.sqlite"], "state.sqlite: no such file"),
    "negative rotation": (["--read", "{good}", "-o", "{dir}/o", "--rotate-bytes", "-5"], "--rotate-bytes"),
    "bad size": (["--read", "{good}", "-o", "{dir}/o", "--budget", "lots"], "--budget"),
    "zero snaplen": (["--read", "{good}", "-o", "{dir}/o", "--snaplen", "0"], "--snaplen"),
    "unknown format": (["--read", "{good}", "-o", "{dir}/o", "--format", "erf"], "--format"),
    "unknown option": (["--read", "{good}", "-o", "{dir}/o", "--frobnicate"], "unrecognized arguments"),
    "no source": (["-o", "{dir}/o"], "one of the arguments -i/--interface --read is required"),
    "no output": (["--read", "{good}"], "--out"),
    "two tap sources": (["--read", "{good}", "-o", "{dir}/o", "--taps", "{taps}", "--store", "{taps}"], "not allowed"),
    "token without daemon": (["--read", "{good}", "-o", "{dir}/o", "--token-file", "{taps}"], "--token-file: only with --daemon"),
    "bad daemon URL": (["-i", "lo", "-o", "{dir}/o", "--daemon", "ftp://x"], "--daemon 'ftp://x'"),
    "missing token file": (["-i", "lo", "-o", "{dir}/o", "--daemon", "http://127.0.0.1:1", "--token-file",
                            "{dir}/tok"], "tok: no such file"),
    "rotation above the tap budget": (["--read", "{good}", "-o", "{dir}/o", "--rotate-bytes", "10000000", "--tap-budget",
                                       "1M"], "exceeds --tap-budget"),
    "output under a file": (["--read", "{good}", "-o", "{good}/o", "--taps", "{taps}"], "--out"),
    "bad metrics listen": (["-i", "lo", "-o", "{dir}/o", "--taps", "{taps}", "--metrics-listen", "127.0.0.1:99999"],
                           "--metrics-listen"),
    "missing interface": (["-i", "nosuchif0", "-o", "{dir}/o", "--taps", "{taps}", "--metrics-listen", ""],
                          "--interface nosuchif0"),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_each_bad_input_gives_one_line_and_exit_status_2(case: str, inputs: dict[str, Path]) -> None:
    argv, expected = CASES[case]
    proc = capture(*[a.format(**inputs) for a in argv])
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2, proc.stderr
    assert len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert lines[0].startswith("demon-capture: ") and expected in lines[0], lines[0]


def test_version_and_json_logs(inputs: dict[str, Path]) -> None:
    proc = capture("--version")
    assert proc.returncode == 0 and proc.stdout.strip() == f"demon-capture {__version__}"
    proc = capture("--read", str(inputs["good"]), "-o", str(inputs["dir"] / "o"), "--taps", str(inputs["taps"]),
                   "--metrics-listen", "", "--log-format", "json", "--log-level", "debug")
    assert proc.returncode == 0, proc.stderr
    for line in proc.stderr.splitlines():
        assert json.loads(line)["level"]  # every log line is one JSON object


def test_read_takes_pcapng_too_and_snaplen_cuts_frames(tmp_path: Path) -> None:
    src = tmp_path / "in.pcapng"
    frames = [tcp_frame("10.0.0.1", "10.0.0.2", 51792, 5201, bytes([i]) * 300) for i in range(3)]
    with open(src, "wb") as fh:
        w = PcapngWriter(fh)
        for i, f in enumerate(frames):
            w.write_ns(1_700_000_000_000_000_000 + i, f)
    taps = tmp_path / "taps.json"
    write_tap_table(taps, [tap("t1", ELEPHANT)])
    proc = capture("--read", str(src), "-o", str(tmp_path / "out"), "--taps", str(taps), "--snaplen", "100",
                   "--format", "pcap", "--metrics-listen", "")
    assert proc.returncode == 0, proc.stderr
    assert pcap_frames(tmp_path / "out" / "t1") == [f[:100] for f in frames]
    (path,) = capture_files(tmp_path / "out" / "t1")
    assert path.suffix == ".pcap"
    summary = json.loads((tmp_path / "out" / "t1" / "tap.json").read_text())
    assert summary["bytes"] == sum(map(len, frames))  # original lengths, as the switch counts them
