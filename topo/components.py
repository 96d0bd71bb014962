"""The lab's processes in the root namespace: the controller component and
``demon-watch``. Each runs from this interpreter (``python -m``), listens on
127.0.0.1 on ports picked free at start, logs to a file, and is stopped by pid.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from topo.net import tcp_listening
from topo.sflowcfg import udp_port_bound

PY = sys.executable
REPO = Path(__file__).resolve().parent.parent


class ComponentError(RuntimeError):
    """A lab component did not start (the message says which and where its log is)."""


def free_port(kind: int = socket.SOCK_STREAM) -> int:
    """A port nobody holds on 127.0.0.1 right now (TCP or UDP)."""
    with socket.socket(socket.AF_INET, kind) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_until(predicate: Callable[[], bool], timeout: float, what: str,
               proc: subprocess.Popen | None = None, log: Path | None = None) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if proc is not None and proc.poll() is not None:
            raise ComponentError(f"{what}: process exited with {proc.returncode}"
                                 + (f" (log: {log}){_tail(log)}" if log else ""))
        if time.monotonic() > deadline:
            raise ComponentError(f"{what}: not ready within {timeout:g}s" + (f" (log: {log})" if log else ""))
        time.sleep(0.05)


def _tail(log: Path | None, lines: int = 8) -> str:
    if log is None or not log.exists():
        return ""
    text = log.read_text(errors="replace").splitlines()[-lines:]
    return "\n  " + "\n  ".join(text) if text else ""


@dataclass
class Proc:
    name: str
    popen: subprocess.Popen
    log: Path
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def pid(self) -> int:
        return self.popen.pid

    def alive(self) -> bool:
        return self.popen.poll() is None

    def stop(self, timeout: float = 10) -> int | None:
        if self.popen.poll() is None:
            self.popen.send_signal(signal.SIGTERM)
            try:
                self.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait(5)
        return self.popen.returncode

    def kill(self) -> None:
        """SIGKILL: the crash the daemon must survive."""
        if self.popen.poll() is None:
            self.popen.kill()
            self.popen.wait(5)


def _spawn(name: str, argv: list[str], log: Path, env: dict[str, str] | None = None) -> Proc:
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "ab") as fh:
        popen = subprocess.Popen(argv, stdout=fh, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                 env={**os.environ, **(env or {})}, cwd=str(REPO))
    return Proc(name, popen, log)


@dataclass(frozen=True)
class ControllerSettings:
    kind: str  # "os-ken" or "pox"
    of_port: int
    rpc_port: int
    token_file: Path
    fabric_file: Path
    metrics_port: int | None = None  # Prometheus metrics on 127.0.0.1 (None: the component's default)

    @property
    def metrics_url(self) -> str | None:
        return None if self.metrics_port is None else f"http://127.0.0.1:{self.metrics_port}/metrics"

    @property
    def rpc_address(self) -> str:
        return f"tcp:127.0.0.1:{self.rpc_port}"

    @property
    def of_version(self) -> int:
        return 10 if self.kind == "pox" else 13


def start_controller(settings: ControllerSettings, log: Path, timeout: float = 30) -> Proc:
    """The controller component; returns when both its OpenFlow and RPC ports answer."""
    if settings.kind == "os-ken":
        argv = [PY, "-m", "demon.controller.launcher", "--of-host", "127.0.0.1",
                "--of-port", str(settings.of_port), "--rpc", settings.rpc_address,
                "--token-file", str(settings.token_file), "--fabric", str(settings.fabric_file)]
        if settings.metrics_port is not None:
            argv += ["--metrics-listen", f"127.0.0.1:{settings.metrics_port}"]
        env = None
    elif settings.kind == "pox":
        from demon.controller.poxhome import pox_home as find_pox

        pox_home = find_pox()  # $POX_HOME, else the copy scripts/setup unpacked beside the venv
        if not pox_home or not (Path(pox_home) / "pox.py").exists():
            raise ComponentError("--controller pox: no POX checkout (run scripts/setup or set POX_HOME; "
                                 "never pip install pox)")
        if not (REPO / "demon" / "controller" / "pox_tap.py").exists():
            raise ComponentError("--controller pox: demon/controller/pox_tap.py is not in this checkout yet")
        argv = [PY, str(Path(pox_home) / "pox.py"), "openflow.of_01", "--address=127.0.0.1",
                f"--port={settings.of_port}", "demon.controller.pox_tap", f"--rpc={settings.rpc_address}",
                f"--token-file={settings.token_file}", f"--fabric={settings.fabric_file}"]
        if settings.metrics_port is not None:
            argv.append(f"--metrics-listen=127.0.0.1:{settings.metrics_port}")
        env = {"PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
    else:
        raise ComponentError(f"controller: must be os-ken or pox, not {settings.kind!r}")
    proc = _spawn(f"controller ({settings.kind})", argv, log, env)
    try:
        wait_until(lambda: tcp_listening("127.0.0.1", settings.of_port, 0.2)
                   and tcp_listening("127.0.0.1", settings.rpc_port, 0.2),
                   timeout, f"controller ({settings.kind})", proc.popen, log)
    except ComponentError:
        proc.stop()
        raise
    return proc


def wait_for_switches(rpc: Any, dpids: set[int], timeout: float = 20) -> list[dict[str, Any]]:
    """Until the controller reports every dpid connected; its ``list_switches`` answer."""
    seen: list[dict[str, Any]] = []

    def ready() -> bool:
        nonlocal seen
        try:
            seen = rpc.list_switches()
        except Exception:  # noqa: BLE001 — not up yet; retried until the timeout
            return False
        return dpids <= {s["dpid"] for s in seen}

    wait_until(ready, timeout, f"switches {sorted(dpids)} connecting to the controller")
    return seen


@dataclass(frozen=True)
class WatchSettings:
    policies: Path
    controller: str
    token_file: Path
    state_file: Path
    sflow_port: int
    sflow_rt: str | None = None
    engine_http_port: int = 0  # the embedded engine's API (0: ephemeral, unknown to the lab)
    api_port: int = 0  # the daemon's API (0: ephemeral)
    api_token_file: Path | None = None
    sflow_host: str = "127.0.0.1"  # where the embedded engine takes sFlow from the switches
    api_host: str = "127.0.0.1"
    extra: tuple[str, ...] = ()  # more demon-watch options (notifications, ...)


def start_watch(settings: WatchSettings, log: Path, timeout: float = 30) -> Proc:
    """``demon-watch``; returns when its embedded engine's collector is bound
    (so sFlow may be enabled: OVS's connected socket would lose datagrams otherwise)."""
    argv = [PY, "-m", "demon.cli", "--policies", str(settings.policies),
            "--controller", settings.controller, "--token-file", str(settings.token_file),
            "--state", str(settings.state_file), "--log-format", "json", "--log-level", "info",
            "--listen", f"{settings.api_host}:{settings.api_port}"]
    if settings.api_token_file is not None:
        argv += ["--api-token-file", str(settings.api_token_file)]
    argv += list(settings.extra)
    if settings.sflow_rt:
        argv += ["--sflow-rt", settings.sflow_rt]
    else:
        argv += ["--sflow-listen", f"{settings.sflow_host}:{settings.sflow_port}",
                 "--engine-listen", f"127.0.0.1:{settings.engine_http_port}"]
    proc = _spawn("demon-watch", argv, log)
    try:
        if not settings.sflow_rt:
            wait_until(lambda: udp_port_bound(settings.sflow_port), timeout,
                       "demon-watch's embedded sFlow collector", proc.popen, log)
        if settings.api_port:
            wait_until(lambda: tcp_listening(settings.api_host, settings.api_port, 0.2), timeout,
                       "demon-watch's API", proc.popen, log)
    except ComponentError:
        proc.stop()
        raise
    return proc


def engine_port_map(http_port: int) -> list[dict[str, Any]]:
    """The embedded engine's ``/demon/portmap/json`` ([] when it does not answer)."""
    import json
    import urllib.request

    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{http_port}/demon/portmap/json", timeout=2) as resp:
            return json.loads(resp.read())
    except (OSError, ValueError):
        return []
