"""The systemd units (contrib/systemd): they parse, systemd accepts them, they run
the right command with the configuration file, are hardened, and the commands
report readiness (sd_notify READY=1) only once they serve."""

from __future__ import annotations

import io
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from tests.conftest import REPO

UNITS = REPO / "contrib" / "systemd"
COMMANDS = {"pytapdemon-watch.service": "demon-watch", "pytapdemon-sflow.service": "demon-sflow",
            "pytapdemon-controller.service": "demon-controller",
            "pytapdemon-capture.service": "demon-capture"}
HARDENING = {"NoNewPrivileges": "yes", "ProtectSystem": "strict", "ProtectHome": "yes",
             "PrivateTmp": "yes", "PrivateDevices": "yes", "RestrictNamespaces": "yes",
             "SystemCallArchitectures": "native", "LockPersonality": "yes"}


def parse_unit(path: Path) -> dict[str, dict[str, list[str]]]:
    """systemd's syntax: [Section], Key=value (repeatable), # or ; comments."""
    sections: dict[str, dict[str, list[str]]] = {}
    current = None
    for number, raw in enumerate(path.read_text().splitlines(), 1):
        line = raw.strip()
        if not line or line[0] in "#;":
            continue
        if line.startswith("[") and line.endswith("]"):
            current = sections.setdefault(line[1:-1], {})
            continue
        assert current is not None and "=" in line, f"{path.name}:{number}: {raw!r}"
        key, _, value = line.partition("=")
        current.setdefault(key.strip(), []).append(value.strip())
    return sections


@pytest.mark.parametrize("unit, command", sorted(COMMANDS.items()))
def test_unit_runs_the_command_as_a_hardened_notify_service(unit: str, command: str) -> None:
    spec = parse_unit(UNITS / unit)
    service = spec["Service"]
    assert service["Type"] == ["notify"] and service["NotifyAccess"] == ["main"]
    exec_start = service["ExecStart"][0].split()
    assert Path(exec_start[0]).name == command
    assert exec_start[1:] == ["--config", "/etc/pytapdemon/config.yaml"]
    assert service["User"] == ["pytapdemon"]
    assert service["RestartPreventExitStatus"] == ["2"]  # a config error is not retried
    for key, value in HARDENING.items():
        assert service.get(key) == [value], (unit, key)
    caps = service["CapabilityBoundingSet"][0].split()
    assert caps == (["CAP_NET_RAW", "CAP_NET_ADMIN"] if command == "demon-capture" else [])
    assert spec["Install"]["WantedBy"] == ["multi-user.target"]


def test_every_long_running_command_has_a_unit_and_a_config_section() -> None:
    import yaml

    assert sorted(p.name for p in UNITS.glob("*.service")) == sorted(COMMANDS)
    example = yaml.safe_load((REPO / "contrib" / "config.example.yaml").read_text())
    assert {"watch", "sflow", "controller", "capture"} <= set(example)


def test_sysusers_creates_the_units_user() -> None:
    line = (UNITS / "pytapdemon.sysusers").read_text().splitlines()[-1].split()
    assert line[:2] == ["u", "pytapdemon"]


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze not installed")
def test_systemd_analyze_verify_accepts_the_units(tmp_path: Path) -> None:
    """The units with ExecStart pointed at this venv's commands (verify checks they exist)."""
    bindir = Path(sys.executable).parent
    for unit in COMMANDS:
        text = (UNITS / unit).read_text().replace("/opt/pytapdemon/bin", str(bindir))
        (tmp_path / unit).write_text(text)
    proc = subprocess.run(["systemd-analyze", "verify", "--man=no",
                           *[str(tmp_path / u) for u in COMMANDS]],
                          capture_output=True, text=True, timeout=120,
                          env=dict(os.environ, SYSTEMD_LOG_LEVEL="notice"))
    mentions = [line for line in (proc.stdout + proc.stderr).splitlines() if "pytapdemon" in line]
    assert proc.returncode == 0 and not mentions, proc.stdout + proc.stderr


# -- readiness ------------------------------------------------------------------------


class NotifySocket:
    def __init__(self, path: Path) -> None:
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))

    def receive(self, timeout: float) -> dict[str, str] | None:
        self.sock.settimeout(timeout)
        try:
            data = self.sock.recv(4096).decode()
        except socket.timeout:
            return None
        return dict(line.split("=", 1) for line in data.splitlines())

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def notify(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    ns = NotifySocket(tmp_path / "notify")
    monkeypatch.setenv("NOTIFY_SOCKET", str(ns.path))
    yield ns
    ns.close()


def test_demon_sflow_is_ready_once_both_listeners_are_bound(notify: NotifySocket) -> None:
    proc = subprocess.Popen([sys.executable, "-m", "sflow.cli", "--sflow-port", "0", "--http-port",
                             "0", "--log-level", "warning"], cwd=REPO, stdout=subprocess.PIPE,
                            text=True)
    try:
        bound = json.loads(proc.stdout.readline())  # printed once both sockets are bound
        ready = notify.receive(30)
        assert ready is not None and ready["READY"] == "1" and ready["MAINPID"] == str(proc.pid)
        assert bound["http"] in ready["STATUS"]
        with socket.create_connection(("127.0.0.1", int(bound["http"].rsplit(":", 1)[1])), 5):
            pass
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def test_demon_watch_is_ready_once_started(notify: NotifySocket, tmp_path: Path) -> None:
    from demon import cli
    from tests.demon.fakes import TOKEN, FakeController

    token = tmp_path / "rpc.token"
    token.write_text(TOKEN + "\n")
    token.chmod(0o600)
    got: list[dict[str, str] | None] = []
    with FakeController() as controller:
        listener = threading.Thread(target=lambda: got.append(notify.receive(20)))
        listener.start()
        stopper = threading.Timer(4.0, lambda: signal.raise_signal(signal.SIGTERM))
        stopper.start()
        err = io.StringIO()
        try:
            status = cli.main(["--policies", str(REPO / "policies"), "--sflow-listen",
                               "127.0.0.1:0", "--listen", "127.0.0.1:0", "--controller",
                               controller.address, "--token-file", str(token), "--state",
                               str(tmp_path / "s.sqlite"), "--log-level", "warning"],
                              stdout=io.StringIO(), stderr=err)
        finally:
            stopper.cancel()  # a main that returned early must not leave a SIGTERM behind
        listener.join()
        hello = [m for m, _ in controller.calls]
    assert status == 0, err.getvalue()
    assert got and got[0] is not None and got[0]["READY"] == "1"
    assert hello, "ready before the controller was asked anything"


@pytest.mark.slow
def test_demon_controller_is_ready_once_openflow_listens(notify: NotifySocket,
                                                         tmp_path: Path) -> None:
    from topo.fabricgen import seed_fabric, write_fabric

    fabric = write_fabric(tmp_path / "fabric.json", seed_fabric())
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        of_port = probe.getsockname()[1]
    proc = subprocess.Popen([sys.executable, "-m", "demon.controller.launcher", "--fabric",
                             str(fabric), "--of-port", str(of_port), "--rpc", "tcp:127.0.0.1:0",
                             "--token-file", str(tmp_path / "rpc.token"), "--log-level",
                             "warning", "--metrics-listen", ""],  # not the machine-wide 8735
                            cwd=REPO, stdout=subprocess.PIPE, text=True)
    try:
        ready = notify.receive(60)
        assert ready is not None and ready["READY"] == "1", "no readiness within 60 s"
        # ready means the OpenFlow port accepts connections now
        with socket.create_connection(("127.0.0.1", of_port), 5):
            pass
        assert f"openflow 127.0.0.1:{of_port}" in ready["STATUS"]
    finally:
        # os-ken's hub may sleep through a SIGTERM another thread took (as the controller
        # tests know): stopping it is not what this test checks
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=30)


@pytest.mark.skipif(os.geteuid() != 0, reason="an AF_PACKET socket needs root")
def test_demon_capture_is_ready_once_its_socket_is_open(notify: NotifySocket,
                                                        tmp_path: Path) -> None:
    proc = subprocess.Popen([sys.executable, "-m", "demon.capture.agent", "-i", "lo", "-o",
                             str(tmp_path / "out"), "--log-level", "warning"], cwd=REPO)
    try:
        ready = notify.receive(30)
        assert ready is not None and ready["READY"] == "1"
        assert "capturing on lo" in ready["STATUS"]
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0
