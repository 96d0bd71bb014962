"""Faults with real processes: ``demon-watch`` as a subprocess against a live
embedded engine (``demon-sflow`` subprocess, fed sFlow datagrams over loopback
UDP) and the fake controller (the real RPC server, in this process).

* SIGKILL mid-tap, then restart: no duplicate mirror, and the tap still ends
  at its max duration;
* SIGHUP with a bad policy set keeps the old one; SIGTERM exits cleanly and
  removes the daemon's definitions from the engine.
"""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Iterator

import pytest
import requests

from tests.conftest import REPO
from tests.demon.fakes import (FakeController, TOKEN, sflow_datagram, tcp_frame, wait_for)

pytestmark = pytest.mark.slow

POLICY = """\
name: elephant
kind: elephant
keys: ipsource,ipdestination,ipprotocol,tcpsourceport,tcpdestinationport
threshold: 1Mbps
interval: 1s
duration: 3s
max_duration: {max_duration}
holddown: 60s
max_taps: 4
"""
FLOW_KEY = "10.0.0.1,10.0.0.2,6,5001,80"
PORTS = [(1400 + 10 * d + p, d, p, f"s{d}-eth{p}") for d in (1, 2) for p in range(1, 11)]


def free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Traffic:
    """Sends port counters and, while ``hot``, samples of one elephant (s1 port 1)."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.hot = True
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        header = tcp_frame("10.0.0.1", "10.0.0.2", 5001, 80)
        seq = 0
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            while not self.stop.is_set():
                seq += 1
                flows = [(1411, header)] * 4 if self.hot else []
                sock.sendto(sflow_datagram(seq, flows=flows,
                                           ports=PORTS if seq % 10 == 1 else []),
                            ("127.0.0.1", self.port))
                self.stop.wait(0.1)


@pytest.fixture
def lab(tmp_path: Path) -> Iterator[dict]:
    udp = free_udp_port()
    engine = subprocess.Popen(
        [sys.executable, "-m", "sflow.cli", "--sflow-port", str(udp), "--http-port", "0",
         "--log-level", "warning"], cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
        text=True)
    line = engine.stdout.readline() if engine.stdout else ""
    try:
        url = json.loads(line)["http"]
    except (ValueError, KeyError):
        engine.kill()
        pytest.fail(f"demon-sflow did not start: {line!r}")
    traffic = Traffic(udp)
    traffic.thread.start()
    controller = FakeController().start()
    token = tmp_path / "rpc.token"
    token.write_text(TOKEN + "\n")
    policies = tmp_path / "policies"
    policies.mkdir()
    (policies / "elephant.yaml").write_text(POLICY.format(max_duration="8s"))
    procs: list[subprocess.Popen] = []

    def watch(log_name: str, *extra: str) -> subprocess.Popen:
        log = open(tmp_path / log_name, "w")
        proc = subprocess.Popen(
            [sys.executable, "-m", "demon.cli", "--policies", str(policies), "--sflow-rt", url,
             "--controller", controller.address, "--token-file", str(token),
             "--state", str(tmp_path / "state.sqlite"), "--log-level", "debug", *extra],
            cwd=REPO, stdout=log, stderr=subprocess.STDOUT)
        procs.append(proc)
        return proc

    yield {"url": url, "controller": controller, "traffic": traffic, "watch": watch,
           "policies": policies, "tmp": tmp_path}
    for proc in procs:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)
    traffic.stop.set()
    controller.stop()
    engine.send_signal(signal.SIGTERM)
    try:
        engine.wait(timeout=10)
    except subprocess.TimeoutExpired:
        engine.kill()


def install_ids(controller: FakeController) -> list[str]:
    return [tap for method, tap in controller.writes() if method == "install_mirror"]


def test_sigkill_mid_tap_then_restart_no_duplicate_and_ends_on_time(lab: dict) -> None:
    controller: FakeController = lab["controller"]
    first = lab["watch"]("watch-1.log")
    wait_for(lambda: controller.mirrors, timeout=30, what="the elephant tapped")
    installed_at = time.time()
    assert list(controller.mirrors) == ["elephant.1"]
    assert controller.mirrors["elephant.1"]["match"]["tcp_src"] == 5001
    first.send_signal(signal.SIGKILL)
    first.wait(timeout=10)
    assert list(controller.mirrors) == ["elephant.1"]  # a killed daemon leaves it in place

    second = lab["watch"]("watch-2.log")
    # Still hot: the restarted daemon keeps the same tap and ends it at max_duration (8 s).
    wait_for(lambda: not controller.mirrors, timeout=20, what="removal at max duration")
    ended = time.time()
    assert ended - installed_at < 8 + 4, (lab["tmp"] / "watch-2.log").read_text()[-3000:]
    assert set(install_ids(controller)) == {"elephant.1"}  # no second tap of the flow
    assert controller.max_concurrent == 1
    assert ("remove_mirror", "elephant.1") in controller.writes()
    second.send_signal(signal.SIGTERM)
    assert second.wait(timeout=20) == 0


def test_sighup_with_a_bad_set_keeps_the_old_one_and_sigterm_cleans_up(lab: dict) -> None:
    controller: FakeController = lab["controller"]
    url = lab["url"]
    proc = lab["watch"]("watch.log")
    log = lab["tmp"] / "watch.log"
    wait_for(lambda: "started:" in log.read_text(), timeout=30, what="daemon started")
    (lab["policies"] / "broken.yaml").write_text("name: broken\nkind: elephant\ncolour: red\n")
    proc.send_signal(signal.SIGHUP)
    wait_for(lambda: "reload rejected" in log.read_text(), timeout=10, what="reload rejected")
    assert "broken.yaml" in log.read_text()
    assert proc.poll() is None
    # The old policy still works: the elephant is tapped.
    wait_for(lambda: controller.mirrors, timeout=30, what="tap under the old set")
    assert requests.get(f"{url}/flow/demon_elephant/json", timeout=5).status_code == 200
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=20) == 0
    assert "stopping: SIGTERM" in log.read_text()
    # Clean exit: our flow and threshold are gone from the engine; the tap is left to
    # its hard timeout (--on-exit leave, the default).
    assert requests.get(f"{url}/flow/demon_elephant/json", timeout=5).status_code == 404
    assert requests.get(f"{url}/threshold/demon_elephant/json", timeout=5).status_code == 404
    assert list(controller.mirrors) == ["elephant.1"]


def test_on_exit_remove_takes_the_taps_down(lab: dict) -> None:
    controller: FakeController = lab["controller"]
    proc = lab["watch"]("watch.log", "--on-exit", "remove")
    wait_for(lambda: controller.mirrors, timeout=30, what="tap")
    proc.send_signal(signal.SIGINT)
    assert proc.wait(timeout=20) == 0
    assert controller.mirrors == {}
    assert controller.writes()[-1] == ("remove_mirror", "elephant.1")


def test_demon_tap_lists_and_releases_a_running_daemons_tap(lab: dict) -> None:
    controller: FakeController = lab["controller"]
    lab["watch"]("watch.log")
    wait_for(lambda: controller.mirrors, timeout=30, what="tap")
    state = str(lab["tmp"] / "state.sqlite")

    def tap(*argv: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "demon.tapctl", "--state", state, *argv],
                              cwd=REPO, capture_output=True, text=True, timeout=30)

    listed = tap("--json", "list")
    assert listed.returncode == 0, listed.stderr
    assert [t["tap_id"] for t in json.loads(listed.stdout)] == ["elephant.1"]
    released = tap("release", "elephant.1")
    assert released.returncode == 0, released.stderr
    assert "release requested" in released.stdout
    wait_for(lambda: not controller.mirrors, timeout=10, what="mirror removed")
    story = tap("show", "elephant.1")
    assert "demon-tap" in story.stdout  # who released it is on record
