"""``demon-sflow`` as a process: the OVS capture replayed over loopback UDP, read over HTTP."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Iterator

import pytest
import requests

from sflow.collector import replay_pcap

pytestmark = pytest.mark.replay

ELEPHANT = "10.0.0.1,10.0.0.2,51792,5201"
FLOW = {"keys": "ipsource,ipdestination,tcpsourceport,tcpdestinationport", "value": "bytes"}


@pytest.fixture
def demon_sflow() -> Iterator[dict]:
    proc = subprocess.Popen([sys.executable, "-m", "sflow.cli", "--sflow-port", "0",
                             "--http-port", "0", "--log-level", "warning"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        line = proc.stdout.readline() if proc.stdout else ""
        if not line:
            pytest.fail(f"demon-sflow did not start: {proc.stderr.read() if proc.stderr else ''}")
        ready = json.loads(line)
        yield {"url": ready["http"], "sflow": tuple(ready["sflow"]), "proc": proc}
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def test_elephant_on_top_over_the_wire(demon_sflow: dict, captures_dir: Path) -> None:
    url = demon_sflow["url"]
    resp = requests.put(url + "/flow/demon_tcp/json", data=json.dumps(FLOW), timeout=5)
    assert resp.status_code == 204
    speed = 2.0
    sent = replay_pcap(captures_dir / "ovs-seed-elephant.pcap", demon_sflow["sflow"], speed=speed)
    assert sent == 382
    # the elephant's traffic ended ~8 s into the 14 s capture; read the flows at its end
    flows = requests.get(url + "/activeflows/ALL/demon_tcp/json?maxFlows=5", timeout=5).json()
    assert flows[0]["key"] == ELEPHANT
    assert flows[0]["agent"] == "127.0.0.1" and flows[0]["dataSource"] == "1478"
    values = [f["value"] for f in flows]
    assert values == sorted(values, reverse=True)
    deadline = time.monotonic() + 5  # the collector may still be ingesting the last batch
    while time.monotonic() < deadline:
        analyzer = requests.get(url + "/analyzer/json", timeout=5).json()
        if analyzer["sFlowDatagramsReceived"] >= sent:
            break
        time.sleep(0.05)
    assert analyzer["sFlowDatagramsReceived"] == sent and analyzer["udpKernelDrops"] == 0


def test_elephant_rate_while_it_runs(demon_sflow: dict, captures_dir: Path) -> None:
    """Replayed in real time, the elephant's rate (2 s EWMA) is read while it runs."""
    url = demon_sflow["url"]
    requests.put(url + "/flow/demon_tcp/json", data=json.dumps(FLOW), timeout=5)
    stop = threading.Event()
    replayer = threading.Thread(target=replay_pcap,
                                args=(captures_dir / "ovs-seed-elephant.pcap", demon_sflow["sflow"]),
                                kwargs={"speed": 1.0, "stop": stop})
    replayer.start()
    try:
        time.sleep(7.5)  # the elephant runs ~0.2 s to ~8.2 s into the capture
        flows = requests.get(url + "/activeflows/ALL/demon_tcp/json?maxFlows=3", timeout=5).json()
    finally:
        stop.set()
        replayer.join()
    assert flows[0]["key"] == ELEPHANT
    # ~7 s = 3.5 t into a 25 MB/s flow: 97 % of it, ± the EWMA's sampling noise (~8 %)
    # and replay timing jitter
    assert 0.80 * 25e6 < flows[0]["value"] < 1.15 * 25e6


def test_decode_and_replay_subcommands(captures_dir: Path) -> None:
    capture = str(captures_dir / "ovs-seed-elephant.pcap")
    decoded = subprocess.run([sys.executable, "-m", "sflow.cli", "decode", capture],
                             capture_output=True, text=True, timeout=60, check=True)
    lines = decoded.stdout.splitlines()
    assert len(lines) == 382 and all(json.loads(line) for line in lines[:3])
    from sflow.collector import open_udp_socket
    sock = open_udp_socket("127.0.0.1", 0)
    try:
        port = sock.getsockname()[1]
        replayed = subprocess.run([sys.executable, "-m", "sflow.cli", "replay", capture,
                                   "--to", f"127.0.0.1:{port}"],
                                  capture_output=True, text=True, timeout=60, check=True)
        assert "sent 382 datagrams" in replayed.stderr
        sock.settimeout(2)
        first = sock.recv(65535)
        assert first[:4] == b"\x00\x00\x00\x05"
    finally:
        sock.close()
    bad = subprocess.run([sys.executable, "-m", "sflow.cli", "replay", capture, "--to", "nowhere"],
                         capture_output=True, text=True, timeout=60)
    assert bad.returncode == 2 and "--to" in bad.stderr


def _start(args: list[str]) -> tuple[subprocess.Popen, dict]:
    proc = subprocess.Popen([sys.executable, "-m", "sflow.cli", *args, "--log-level", "warning"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    line = proc.stdout.readline() if proc.stdout else ""
    if not line:
        proc.kill()
        pytest.fail(f"demon-sflow did not start: {proc.stderr.read() if proc.stderr else ''}")
    return proc, json.loads(line)


def test_listen_options_version_and_sigterm(tmp_path: Path) -> None:
    proc, ready = _start(["--sflow-listen", "127.0.0.1:0", "--http-listen", "127.0.0.1:0"])
    try:
        assert ready["sflow"][0] == "127.0.0.1" and ready["sflow"][1] > 0
        assert requests.get(ready["http"] + "/version", timeout=5).text.startswith("3.0-")
        # on loopback nothing asks for a token
        assert requests.put(ready["http"] + "/topology/json", data="{}", timeout=5).status_code == 204
    finally:
        proc.terminate()
        assert proc.wait(timeout=10) == 0
    assert proc.stderr is not None and "exposed" not in proc.stderr.read()
    version = subprocess.run([sys.executable, "-m", "sflow.cli", "--version"],
                             capture_output=True, text=True, timeout=30)
    assert version.returncode == 0 and version.stdout.startswith("demon-sflow ")


@pytest.mark.parametrize("args, says", [
    (["--http-listen", "127.0.0.1:http"], "--http-listen"),
    (["--sflow-listen", "::1:0"], "--sflow-listen"),
    (["--token-file", "/nonexistent/tokens"], "does not exist"),
    (["--asn-file", "/nonexistent/ip2asn.tsv"], "cannot read"),
])
def test_bad_options_exit_2_with_one_line(args: list[str], says: str) -> None:
    result = subprocess.run([sys.executable, "-m", "sflow.cli", "--http-listen", "127.0.0.1:0",
                             "--sflow-listen", "127.0.0.1:0", *args],
                            capture_output=True, text=True, timeout=30)
    assert result.returncode == 2
    assert says in result.stderr and "Traceback" not in result.stderr


def test_exposure_lines_name_every_exposed_listener() -> None:
    from sflow.cli import exposure_lines

    assert exposure_lines(("127.0.0.1", 6343), "127.0.0.1:8008", "127.0.0.1", False, None,
                          False) == []
    lines = exposure_lines(("0.0.0.0", 6343), "[::]:8008", "::", True, "/etc/t", False)
    assert lines == ["exposed: sFlow collector on udp 0.0.0.0:6343",
                     "exposed: HTTP API on [::]:8008 (reads open; writes need a bearer "
                     "token from /etc/t)"]
    assert "every write is refused" in exposure_lines(("127.0.0.1", 1), "10.0.0.5:8008",
                                                      "10.0.0.5", False, None, False)[0]
