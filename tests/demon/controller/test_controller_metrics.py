"""The controller's Prometheus metrics (fake switches; the real ones: the conformance suite),
and the ``demon-controller`` command line."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import threading
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from demon.controller import metrics
from demon.rpc.client import RpcClient
from demon.rpc.server import RpcServer
from tests.conftest import REPO
from tests.demon.controller.bookharness import FLOW, Harness, packet
from tests.demon.controller.conftest import free_port
from tests.demon.controller.test_fabric_roles_static import SEED


def parse(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


@pytest.mark.parametrize("openflow", ["1.0", "1.3"])
def test_the_figures_are_the_books_and_the_servers(openflow: str) -> None:
    h = Harness(openflow)
    with RpcServer("tcp:127.0.0.1:0", "t" * 16, h.service) as server:
        registry = metrics.registry_for(h.service, server)
        h.install("a", FLOW, idle_timeout=2, bidirectional=True)
        h.tables[1].send(packet(), 3)
        h.advance(3)  # both directions idle out
        with RpcClient(server.address, "t" * 16) as client:
            client.call("list_switches")
            with pytest.raises(Exception):
                client.call("remove_mirror", tap_id="bad id!")
        # a scrape never waits for the service's lock (held across switch round trips)
        got: list[bytes] = []
        with h.service.lock:
            scraper = threading.Thread(target=lambda: got.append(generate_latest(registry)))
            scraper.start()
            scraper.join(5)
        m = parse(got[0].decode())
    assert m[("pytapdemon_controller_switches_connected", ())] == 3
    assert m[("pytapdemon_controller_mirrors_installed", ())] == 0
    assert m[("pytapdemon_controller_mirror_entries", ())] == 0
    assert m[("pytapdemon_controller_flow_mods_total", (("command", "add"),))] == h.service.flow_mods_total["add"]
    assert m[("pytapdemon_controller_flow_removed_total", (("reason", "idle_timeout"),))] == 2
    assert m[("pytapdemon_controller_rpc_requests_total", (("method", "list_switches"),))] == 1
    assert m[("pytapdemon_controller_rpc_errors_total", (("code", "-32602"), ("method", "remove_mirror")))] == 1
    assert m[("pytapdemon_controller_info", (("component", "fake"), ("openflow", openflow),
                                             ("version", __import__("demon").__version__)))] == 1


def test_served_at_metrics_only() -> None:
    h = Harness("1.3")
    with RpcServer("tcp:127.0.0.1:0", "t" * 16, h.service) as server:
        listener = metrics.serve(h.service, server, "127.0.0.1:0")
        try:
            with urllib.request.urlopen(f"{listener.url}/metrics", timeout=5) as reply:
                assert ("pytapdemon_controller_switches_connected", ()) in parse(reply.read().decode())
            with pytest.raises(urllib.error.HTTPError) as info:
                urllib.request.urlopen(f"{listener.url}/", timeout=5)
            assert info.value.code == 404
        finally:
            listener.stop()


# --------------------------------------------------------- demon-controller

def launcher(*args: str, timeout: float = 30) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "demon.controller.launcher", *args], capture_output=True,
                          text=True, timeout=timeout, cwd=REPO)


def test_version() -> None:
    proc = launcher("--version")
    assert proc.returncode == 0 and proc.stdout.strip() == f"demon-controller {__import__('demon').__version__}"


def test_a_busy_metrics_address_is_one_line_and_exit_2(tmp_path: Path) -> None:
    fabric = tmp_path / "fabric.json"
    fabric.write_text(json.dumps(SEED))
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen(1)
        port = busy.getsockname()[1]
        proc = launcher("--fabric", str(fabric), "--token-file", str(tmp_path / "t"), "--of-port", str(free_port()),
                        "--rpc", "tcp:127.0.0.1:0", "--metrics-listen", f"127.0.0.1:{port}")
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines()[-1].startswith(f"demon-controller: cannot listen: --metrics-listen 127.0.0.1:{port}")


def test_json_logs(tmp_path: Path) -> None:
    fabric = tmp_path / "fabric.json"
    fabric.write_text(json.dumps(SEED))
    proc = subprocess.Popen([sys.executable, "-m", "demon.controller.launcher", "--fabric", str(fabric),
                             "--token-file", str(tmp_path / "t"), "--of-port", str(free_port()),
                             "--rpc", "tcp:127.0.0.1:0", "--metrics-listen", "", "--log-format", "json", "--log-level", "INFO"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO)
    try:
        line = proc.stdout.readline()  # type: ignore[union-attr]
        assert line.startswith("demon-controller: openflow 127.0.0.1:") and " rpc tcp:127.0.0.1:" in line and "metrics" not in line
    finally:
        proc.terminate()
        _, err = proc.communicate(timeout=10)
    records = [json.loads(x) for x in err.splitlines() if x.strip()]
    assert any(r["logger"] == "demon.rpc.server" and r["msg"].startswith("rpc: listening on") for r in records)


@pytest.mark.parametrize("settle", [0.0, 1.5], ids=["at-once", "running"])
def test_sigterm_stops_cleanly_and_frees_the_ports(tmp_path: Path, settle: float) -> None:
    """The real os-ken component: SIGTERM (at once after its ready line, or once os-ken
    runs) exits 0 promptly with a 'stopped' line, no traceback, its state file written
    and the OpenFlow, RPC and metrics ports free again."""
    import re
    import signal
    import time

    fabric, state = tmp_path / "fabric.json", tmp_path / "osken-taps.json"
    fabric.write_text(json.dumps(SEED))
    proc = subprocess.Popen([sys.executable, "-m", "demon.controller.launcher", "--fabric", str(fabric),
                             "--token-file", str(tmp_path / "t"), "--of-port", str(free_port()),
                             "--rpc", "tcp:127.0.0.1:0", "--metrics-listen", "127.0.0.1:0",
                             "--state-file", str(state)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO)
    try:
        line = proc.stdout.readline()  # type: ignore[union-attr]
        found = re.match(r"demon-controller: openflow 127\.0\.0\.1:(\d+) rpc tcp:127\.0\.0\.1:(\d+) "
                         r"metrics http://127\.0\.0\.1:(\d+)/metrics", line)
        assert found, line
        ports = [int(p) for p in found.groups()]
        time.sleep(settle)
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=10)  # "promptly": the component gives up after 3 s
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 0, err
    assert "Traceback" not in err, err
    assert "demon.controller: signal 15: stopping" in err and "demon.controller: stopped: " in err, err
    assert not state.exists() or json.loads(state.read_text())  # no switch: nothing to write
    for port in ports:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", port))  # free again (no SO_REUSEADDR: nothing listens)


def test_closing_the_service_writes_unsaved_state(tmp_path: Path) -> None:
    """What SIGTERM relies on (launcher._on_stop_signals closes the service first)."""
    from demon.controller.book import MirrorBook
    from demon.controller.fabric import load_fabric
    from demon.controller.service import TapService

    fabric, state = tmp_path / "fabric.json", tmp_path / "state.json"
    fabric.write_text(json.dumps(SEED))
    service = TapService(MirrorBook(load_fabric(str(fabric)), "1.3", None), "os-ken",
                         state_file=state).start()
    service.book.dirty = True  # a change the worker has not written yet
    service.close()
    assert json.loads(state.read_text()) and not service.book.dirty
