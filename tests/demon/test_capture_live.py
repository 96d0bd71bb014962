"""``demon-capture -i`` on a veth pair of the test's own (root; no Open vSwitch):
the kernel's rings and demultiplexer file every frame under its tap, exactly and
in order; taps come from a file or the daemon's stream (through a daemon
restart); the kernel's drops are counted per tap, never silent; metrics agree."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Iterator

import pytest
import requests

from demon.capture.taptable import write_tap_table
from tests.capture_files import capture_files, read_capture
from tests.demon.fake_daemon_api import FakeDaemonApi, tap_entry
from tests.demon.test_capture_agent import ELEPHANT, pcap_frames, tap, tcp_frame

REPO = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="capturing on an interface needs root")


@pytest.fixture
def veth() -> Iterator[tuple[str, socket.socket]]:
    """(capture side, a raw socket sending into it)."""
    a, b = f"dct{os.getpid() % 100000}a", f"dct{os.getpid() % 100000}b"
    subprocess.run(["ip", "link", "del", a], capture_output=True)
    subprocess.run(["ip", "link", "add", a, "type", "veth", "peer", "name", b], check=True)
    try:
        for dev in (a, b):
            subprocess.run(["sysctl", "-qw", f"net.ipv6.conf.{dev}.disable_ipv6=1"], check=True)
            subprocess.run(["ip", "link", "set", dev, "up"], check=True)
        tx = socket.socket(socket.AF_PACKET, socket.SOCK_RAW)
        tx.bind((b, 0))
        yield a, tx
        tx.close()
    finally:
        subprocess.run(["ip", "link", "del", a], capture_output=True)


class Agent:
    def __init__(self, interface: str, out: Path, *args: str) -> None:
        self.out = out
        (out / "agent.json").unlink(missing_ok=True)
        self.proc = subprocess.Popen([sys.executable, "-m", "demon.capture.agent", "-i", interface, "-o", str(out),
                                      "--block-timeout-ms", "10", *args], cwd=REPO, stderr=subprocess.PIPE,
                                     text=True, env={**os.environ, "PYTHONPATH": str(REPO)})
        deadline = time.monotonic() + 20
        while not (out / "agent.json").exists():
            assert self.proc.poll() is None, self.proc.stderr.read() if self.proc.stderr else ""
            assert time.monotonic() < deadline, "agent not ready"
            time.sleep(0.05)

    def status(self) -> dict:
        return json.loads((self.out / "agent.json").read_text())

    def wait(self, predicate, timeout: float = 10) -> None:  # type: ignore[no-untyped-def]
        deadline = time.monotonic() + timeout
        while True:
            try:
                if predicate(self.status()):
                    return
            except (OSError, ValueError, KeyError):
                pass
            assert time.monotonic() < deadline, self.status()
            time.sleep(0.05)

    def stop(self) -> str:
        self.proc.send_signal(signal.SIGTERM)
        _out, err = self.proc.communicate(timeout=30)
        assert self.proc.returncode == 0, err
        return err


def frames(src: str, dport: int, n: int, size: int = 100, vlan: int | None = None) -> list[bytes]:
    return [tcp_frame(src, "10.0.0.2", 51792, dport, i.to_bytes(4, "big") * (size // 4), vlan=vlan) for i in range(n)]


def test_each_tap_gets_exactly_its_frames_in_order_from_the_kernels_rings(veth, tmp_path: Path) -> None:
    iface, tx = veth
    taps = tmp_path / "taps.json"
    now = time.time()
    write_tap_table(taps, [tap("five", ELEPHANT, start=now - 5), tap("tagged", None, vlan_tag=42, start=now - 4)])
    agent = Agent(iface, tmp_path / "out", "--taps", str(taps), "--grace", "2", "--metrics-listen", "127.0.0.1:0")
    a = frames("10.0.0.1", 5201, 3000)
    v = frames("10.0.0.5", 7, 500, vlan=42)
    stray = frames("10.0.0.9", 9, 5)
    for i in range(3000):
        tx.send(a[i])
        if i < 500:
            tx.send(v[i])
        if i < 5:
            tx.send(stray[i])
    # a tap the table learns later: its first frames wait in ring 0, the rest get a ring
    late = frames("10.0.0.7", 5301, 400)
    for f in late[:100]:
        tx.send(f)
    time.sleep(0.3)
    write_tap_table(taps, [tap("five", ELEPHANT, start=now - 5), tap("tagged", None, vlan_tag=42, start=now - 4),
                           tap("late", {"ipv4_src": "10.0.0.7"}, start=time.time())])
    agent.wait(lambda st: "late" in st.get("rings", {}))
    for f in late[100:]:
        tx.send(f)
    agent.wait(lambda st: st["taps"].get("late", {}).get("packets") == 400
               and st["taps"].get("five", {}).get("packets") == 3000)
    agent.stop()
    out = tmp_path / "out"
    assert pcap_frames(out / "five") == a
    assert pcap_frames(out / "tagged") == v  # the tag the kernel stripped is back
    assert pcap_frames(out / "late") == late  # ring 0's early frames first, then its ring's
    assert pcap_frames(out / "unmatched") == stray
    st = json.loads((out / "agent.json").read_text())
    assert st["kernel_drops"] == 0
    assert st["counters"].get("matched", 0) == 100  # only the late tap's early frames took the Python path
    summary = json.loads((out / "five" / "tap.json").read_text())
    assert (summary["packets"], summary["kernel_drops"]) == (3000, 0)


def test_taps_from_the_daemon_stream_survive_a_daemon_restart(veth, tmp_path: Path) -> None:
    iface, tx = veth
    token = tmp_path / "token"
    token.write_text("capture:s3cret\n")
    token.chmod(0o600)
    api = FakeDaemonApi("s3cret").start()
    try:
        t1 = tap_entry("elephant_tcp.1", ELEPHANT, start=time.time() - 1)
        api.add("created", {**t1, "state": "pending"})
        api.add("active", t1)
        agent = Agent(iface, tmp_path / "out", "--daemon", api.url, "--token-file", str(token),
                      "--metrics-listen", "127.0.0.1:0")
        agent.wait(lambda st: st["daemon"]["last_id"] == 2 and "elephant_tcp.1" in st["rings"])
        a = frames("10.0.0.1", 5201, 1000)
        for f in a:
            tx.send(f)
        agent.wait(lambda st: st["taps"]["elephant_tcp.1"]["packets"] == 1000)
        port = api.port
        api.stop()  # the daemon restarts; meanwhile the tap is released and another one starts
        agent.wait(lambda st: not st["daemon"]["up"])
        for f in a[:10]:
            tx.send(f)  # capture goes on without the daemon
        api.add("removed", {**t1, "state": "removed", "stop": time.time(), "packets": 1012, "bytes": 1012 * 154})
        t2 = tap_entry("udp_flood.2", {"ipv4_src": "10.0.0.8", "tcp_dst": 6000}, start=time.time(),
                       policy="udp_flood")
        api.add("created", t2)
        api.start(port)
        agent.wait(lambda st: st["daemon"]["up"] and st["daemon"]["last_id"] == 4 and "udp_flood.2" in st["rings"])
        b = frames("10.0.0.8", 6000, 200)
        for f in b:
            tx.send(f)
        agent.wait(lambda st: st["taps"].get("udp_flood.2", {}).get("packets") == 200)
        scrape = requests.get(agent.status()["metrics"] + "/metrics", timeout=5).text
        agent.stop()
    finally:
        api.stop()
    out = tmp_path / "out"
    assert pcap_frames(out / "elephant_tcp.1") == a + a[:10]
    assert pcap_frames(out / "udp_flood.2") == b
    summary = json.loads((out / "elephant_tcp.1" / "tap.json").read_text())
    assert (summary["policy"], summary["switch_packets"], summary["difference"]) == ("elephant_tcp", 1012, 2)
    assert [t["kind"] for t in summary["transitions"]] == ["created", "active", "removed"]
    assert json.loads((out / "daemon-cursor.json").read_text())["last_id"] == 4
    assert not list(out.glob("*.sqlite"))  # no state file anywhere
    assert 'pytapdemon_capture_packets_total{tap_id="udp_flood.2"} 200.0' in scrape
    assert 'pytapdemon_capture_packets_total{tap_id="elephant_tcp.1"} 1010.0' in scrape
    assert 'pytapdemon_capture_kernel_drops_total{tap_id="udp_flood.2"} 0.0' in scrape
    assert "pytapdemon_capture_daemon_up 1.0" in scrape
    assert "pytapdemon_capture_daemon_last_transition_id 4.0" in scrape


def test_kernel_drops_are_counted_per_tap_and_reported(veth, tmp_path: Path) -> None:
    iface, tx = veth
    taps = tmp_path / "taps.json"
    write_tap_table(taps, [tap("five", ELEPHANT, start=time.time() - 5)])
    agent = Agent(iface, tmp_path / "out", "--taps", str(taps), "--ring-mb", "1", "--metrics-listen", "127.0.0.1:0")
    agent.wait(lambda st: "five" in st["rings"])
    os.kill(agent.proc.pid, signal.SIGSTOP)  # the agent falls behind: its 1 MiB ring overflows
    sent = frames("10.0.0.1", 5201, 3000, size=1400)
    try:
        for f in sent:
            tx.send(f)
    finally:
        os.kill(agent.proc.pid, signal.SIGCONT)
    agent.wait(lambda st: st["taps"]["five"]["packets"] + st["taps"]["five"]["kernel_drops"] == 3000)
    scrape = requests.get(agent.status()["metrics"] + "/metrics", timeout=5).text
    agent.stop()
    summary = json.loads((tmp_path / "out" / "five" / "tap.json").read_text())
    assert summary["kernel_drops"] > 0 and summary["packets"] + summary["kernel_drops"] == 3000
    assert "dropped by the capture host's kernel" in summary["explanation"] or summary["switch_packets"] is None
    got = [f for p in capture_files(tmp_path / "out" / "five") for _t, f, _l in read_capture(p)]
    assert got == [f for f in sent if f in set(got)]  # what was kept is in order, nothing invented
    assert f'pytapdemon_capture_kernel_drops_total{{tap_id="five"}} {float(summary["kernel_drops"])}' in scrape


def test_snap_length_is_applied_in_the_kernel_and_the_original_length_kept(veth, tmp_path: Path) -> None:
    iface, tx = veth
    taps = tmp_path / "taps.json"
    write_tap_table(taps, [tap("five", ELEPHANT, start=time.time() - 5), tap("tagged", None, vlan_tag=42)])
    agent = Agent(iface, tmp_path / "out", "--taps", str(taps), "--snaplen", "64", "--format", "pcap",
                  "--metrics-listen", "")
    sent = frames("10.0.0.1", 5201, 50, size=1000)
    tagged = frames("10.0.0.5", 7, 20, size=1000, vlan=42)
    for f in sent + tagged:
        tx.send(f)
    agent.wait(lambda st: st["taps"].get("five", {}).get("packets") == 50
               and st["taps"].get("tagged", {}).get("packets") == 20)
    agent.stop()
    for name, want in (("five", sent), ("tagged", tagged)):
        got = [(f, n) for p in capture_files(tmp_path / "out" / name) for _t, f, n in read_capture(p)]
        assert [f for f, _n in got] == [f[:64] for f in want]
        assert [n for _f, n in got] == [len(f) for f in want]
