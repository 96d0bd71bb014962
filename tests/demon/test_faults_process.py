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


def free_tcp_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


FLOW_A = (1411, tcp_frame("10.0.0.1", "10.0.0.2", 5001, 80))   # s1 port 1
FLOW_B = (1423, tcp_frame("10.0.0.8", "10.0.0.6", 40100, 80))  # s2 port 3


class Traffic:
    """Sends port counters and samples of the ``flows`` that are hot (A at first)."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.flows = [FLOW_A]
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        seq = 0
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            while not self.stop.is_set():
                seq += 1
                flows = [flow for flow in self.flows for _ in range(4)]
                sock.sendto(sflow_datagram(seq, flows=flows,
                                           ports=PORTS if seq % 10 == 1 else []),
                            ("127.0.0.1", self.port))
                self.stop.wait(0.1)


class Engine:
    """``demon-sflow`` as a subprocess on fixed ports, so it can be restarted."""

    def __init__(self) -> None:
        self.udp, self.http = free_udp_port(), free_tcp_port()
        self.url = f"http://127.0.0.1:{self.http}"
        self.proc: subprocess.Popen | None = None

    def start(self) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "sflow.cli", "--sflow-port", str(self.udp), "--http-port",
             str(self.http), "--log-level", "warning"], cwd=REPO, stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL, text=True)
        line = self.proc.stdout.readline() if self.proc.stdout else ""
        if not line.startswith("{"):
            self.stop()
            pytest.fail(f"demon-sflow did not start: {line!r}")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)


@pytest.fixture
def lab(tmp_path: Path) -> Iterator[dict]:
    engine = Engine()
    engine.start()
    url = engine.url
    traffic = Traffic(engine.udp)
    traffic.thread.start()
    controller = FakeController().start()
    token = tmp_path / "rpc.token"
    token.write_text(TOKEN + "\n")
    token.chmod(0o600)
    policies = tmp_path / "policies"
    policies.mkdir()
    (policies / "elephant.yaml").write_text(POLICY.format(max_duration="8s"))
    procs: list[subprocess.Popen] = []

    def watch(log_name: str, *extra: str) -> subprocess.Popen:
        log = open(tmp_path / log_name, "w")
        proc = subprocess.Popen(
            [sys.executable, "-m", "demon.cli", "--policies", str(policies), "--sflow-rt", url,
             "--controller", controller.address, "--token-file", str(token),
             "--state", str(tmp_path / "state.sqlite"), "--listen", "127.0.0.1:0",
             "--log-level", "debug", *extra],
            cwd=REPO, stdout=log, stderr=subprocess.STDOUT)
        procs.append(proc)
        return proc

    yield {"url": url, "controller": controller, "traffic": traffic, "watch": watch,
           "policies": policies, "tmp": tmp_path, "engine": engine}
    for proc in procs:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)
    traffic.stop.set()
    controller.stop()
    engine.stop()


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


def test_engine_restart_definitions_restored_and_new_events_taken(lab: dict) -> None:
    """The engine restarts (definitions and event ids gone): the daemon defines its
    flow and threshold again and takes the new engine's events; the flow it already
    taps is not tapped twice."""
    controller: FakeController = lab["controller"]
    engine: Engine = lab["engine"]
    # A's tap must outlive the outage (no sighting while the engine is away).
    (lab["policies"] / "elephant.yaml").write_text(
        POLICY.format(max_duration="60s").replace("duration: 3s", "duration: 20s"))
    proc = lab["watch"]("watch.log")
    wait_for(lambda: controller.mirrors, timeout=30, what="A tapped")
    engine.stop()
    time.sleep(1.0)
    engine.start()
    wait_for(lambda: requests.get(f"{engine.url}/threshold/demon_elephant/json",
                                  timeout=5).status_code == 200,
             timeout=20, what="threshold defined again")
    lab["traffic"].flows = [FLOW_A, FLOW_B]
    wait_for(lambda: len(set(install_ids(controller))) == 2, timeout=30, what="B tapped")
    tapped = {m["match"]["ipv4_src"] for m in controller.mirrors.values()}
    assert tapped == {"10.0.0.1", "10.0.0.8"}
    assert sorted(set(install_ids(controller))) == ["elephant.1", "elephant.2"]
    assert controller.max_concurrent == 2  # A's tap was kept, not doubled
    assert proc.poll() is None
