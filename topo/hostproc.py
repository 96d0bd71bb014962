"""Run the project's tools inside Mininet hosts: the capture agent on the
capture host, ``demon-traffic`` on production hosts. Processes are started with
``host.popen`` and stopped by their own pid only.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

PY = sys.executable


class HostProcessError(RuntimeError):
    """A tool run in a host failed or did not become ready."""


@dataclass
class HostProc:
    """A tool running in a Mininet host; ``stop()`` sends SIGTERM then waits."""

    name: str
    proc: subprocess.Popen

    def stop(self, timeout: float = 10) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        return self.proc.returncode

    def json_lines(self) -> list[dict[str, Any]]:
        """The JSON lines the tool printed (call after it ended)."""
        out = self.proc.stdout.read() if self.proc.stdout else ""
        return [json.loads(line) for line in (out or "").splitlines() if line.startswith("{")]


def spawn(host: Any, argv: list[str], name: str | None = None, stderr_to: Path | None = None) -> HostProc:
    err: Any = open(stderr_to, "ab") if stderr_to else subprocess.DEVNULL
    proc = host.popen(argv, stdout=subprocess.PIPE, stderr=err, text=True)
    return HostProc(name or argv[0], proc)


def traffic(host: Any, *args: str) -> HostProc:
    """Start ``demon-traffic <args>`` in ``host``."""
    return spawn(host, [PY, "-m", "topo.traffic", *args], name=f"traffic {args[0]} on {host.name}")


def traffic_result(host: Any, *args: str, timeout: float = 120) -> dict[str, Any]:
    """Run ``demon-traffic <args>`` in ``host`` to its end; its last JSON line."""
    hp = traffic(host, *args)
    try:
        hp.proc.wait(timeout)
    except subprocess.TimeoutExpired:
        hp.stop()
        raise HostProcessError(f"demon-traffic {' '.join(args)} on {host.name}: no end within {timeout}s")
    lines = hp.json_lines()
    if not lines:
        raise HostProcessError(f"demon-traffic {' '.join(args)} on {host.name}: no report")
    return lines[-1]


def start_capture_agent(host: Any, out_dir: Path, taps: Path | None, *, grace: float = 2.0,
                        rotate_bytes: int = 100_000_000, rotate_seconds: float = 0,
                        daemon: str | None = None, token_file: Path | None = None,
                        metrics_listen: str = "127.0.0.1:0", extra: list[str] | None = None,
                        ready_timeout: float = 10, log: Path | None = None) -> HostProc:
    """``demon-capture`` on the host's default interface; returns once it captures.

    Taps come from ``taps`` (a tap table file) or, with ``daemon``, from the daemon
    API's transition stream (``token_file`` for its token). ``metrics_listen``
    defaults to an ephemeral port: several labs' agents never collide; the
    address it took is in ``agent.json`` (``metrics``)."""
    out_dir = Path(out_dir)
    status = out_dir / "agent.json"
    status.unlink(missing_ok=True)
    argv = [PY, "-m", "demon.capture.agent", "-i", str(host.defaultIntf()), "-o", str(out_dir),
            "--grace", str(grace), "--rotate-bytes", str(rotate_bytes),
            "--rotate-seconds", str(rotate_seconds), "--metrics-listen", metrics_listen, *(extra or [])]
    if daemon is not None:
        argv += ["--daemon", daemon] + (["--token-file", str(token_file)] if token_file else [])
    elif taps is not None:
        argv += ["--taps", str(taps)]
    hp = spawn(host, argv, name=f"demon-capture on {host.name}", stderr_to=log)
    deadline = time.monotonic() + ready_timeout
    while not status.exists():
        if hp.proc.poll() is not None:
            raise HostProcessError(f"demon-capture on {host.name} exited with {hp.proc.returncode}")
        if time.monotonic() > deadline:
            hp.stop()
            raise HostProcessError(f"demon-capture on {host.name} not ready within {ready_timeout}s")
        time.sleep(0.05)
    return hp
