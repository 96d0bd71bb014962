"""Lab fixtures for the controller tests: components as subprocesses, one network per module.

Starting Mininet costs seconds, so a conformance module builds the seed network once
and holds the machine-wide lab lock for the whole module. The function-scoped
``lab_lock`` is overridden here to mean "this module holds the lock": taking the
flock a second time from the same process would deadlock.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import pytest

from demon.controller.poxhome import pox_home
from tests.conftest import REPO

#: The POX checkout: $POX_HOME, else the copy scripts/setup unpacked beside the venv.
POX_HOME = pox_home()
NO_POX = ("no POX checkout: run scripts/setup (it unpacks ../shared/third_party's snapshot, or clones it "
          "with DEMON_POX_CLONE=1) or set POX_HOME")


@pytest.fixture(scope="session")
def pox_tap() -> Any:
    """``demon.controller.pox_tap`` imported with POX on the path (skips without POX)."""
    if POX_HOME is None or not (POX_HOME / "pox.py").is_file():
        pytest.skip(NO_POX)
    if str(POX_HOME) not in sys.path:
        sys.path.insert(0, str(POX_HOME))
    from demon.controller import pox_tap as module

    return module


@pytest.fixture
def lab_lock(module_lab_lock: None) -> Iterator[None]:
    """A module's component tests hold the lab from its first to its last test."""
    yield


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def seed_fabric_json(static: bool = False) -> dict:
    from topo.fabricgen import seed_fabric

    return seed_fabric(static)


@dataclass
class Component:
    """A controller component running as a subprocess (os-ken or POX)."""

    kind: str
    workdir: Path
    fabric: Path
    static: Path | None = None
    of_port: int = field(default_factory=free_port)
    rpc_port: int = field(default_factory=free_port)
    metrics_port: int = field(default_factory=free_port)
    proc: subprocess.Popen | None = None

    @property
    def rpc(self) -> str:
        return f"tcp:127.0.0.1:{self.rpc_port}"

    @property
    def token_file(self) -> Path:
        return self.workdir / "rpc.token"

    @property
    def log_path(self) -> Path:
        return self.workdir / f"{self.kind}.log"

    @property
    def of_version(self) -> int:
        return 10 if self.kind == "pox" else 13

    @property
    def openflow(self) -> str:
        return "1.0" if self.kind == "pox" else "1.3"

    def command(self) -> list[str]:
        if self.kind == "pox":
            assert POX_HOME
            cmd = [sys.executable, str(Path(POX_HOME) / "pox.py"), "openflow.of_01",
                   "--address=127.0.0.1", f"--port={self.of_port}", "demon.controller.pox_tap",
                   f"--rpc={self.rpc}", f"--token-file={self.token_file}", f"--fabric={self.fabric}",
                   f"--metrics-listen=127.0.0.1:{self.metrics_port}"]
            if self.static:
                cmd.append(f"--static={self.static}")
            return cmd
        exe = Path(sys.executable).parent / "demon-controller"
        cmd = [str(exe if exe.exists() else shutil.which("demon-controller")), "--of-host", "127.0.0.1",
               "--of-port", str(self.of_port), "--rpc", self.rpc, "--token-file", str(self.token_file),
               "--fabric", str(self.fabric), "--log-level", "debug",
               "--metrics-listen", f"127.0.0.1:{self.metrics_port}"]
        if self.static:
            cmd += ["--static", str(self.static)]
        return cmd

    def start(self, timeout: float = 30.0) -> "Component":
        env = dict(os.environ, PYTHONPATH=str(REPO))
        log = open(self.log_path, "a")
        self.proc = subprocess.Popen(self.command(), stdout=log, stderr=subprocess.STDOUT, env=env,
                                     cwd=str(self.workdir))
        log.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.kind} exited with {self.proc.returncode}:\n{self.log_tail()}")
            if self.token_file.exists():
                try:
                    self.client(timeout=2.0).hello()
                    return self
                except Exception:  # noqa: BLE001 — not listening yet
                    pass
            time.sleep(0.1)
        raise RuntimeError(f"{self.kind} did not answer hello within {timeout} s:\n{self.log_tail()}")

    def metrics(self) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
        """The component's ``GET /metrics``, as {(sample name, sorted labels): value}."""
        import urllib.request

        from prometheus_client.parser import text_string_to_metric_families

        url = f"http://127.0.0.1:{self.metrics_port}/metrics"
        with urllib.request.urlopen(url, timeout=10) as reply:
            text = reply.read().decode()
        return {(s.name, tuple(sorted(s.labels.items()))): s.value
                for family in text_string_to_metric_families(text) for s in family.samples}

    def client(self, timeout: float = 15.0):
        from demon.rpc.client import RpcClient

        return RpcClient(self.rpc, self.token_file.read_text().strip(), timeout=timeout)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None

    def log_tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"


def write_json(path: Path, obj: object) -> Path:
    path.write_text(json.dumps(obj, indent=2))
    return path
