"""`demon-lab` as a user runs it: the loop's verdict, report and picture, and a
clean teardown both at the end and when interrupted."""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from demon.controller.poxhome import pox_home

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def leftovers(out: Path) -> list[str]:
    """Bridges of the seed and processes started for this output directory."""
    bridges = subprocess.run(["ovs-vsctl", "list-br"], capture_output=True, text=True).stdout.split()
    procs = subprocess.run(["pgrep", "-af", str(out)], capture_output=True, text=True).stdout.splitlines()
    return [b for b in bridges if b in ("s1", "s2", "s3")] + [p for p in procs if "pgrep" not in p]


def log_tails(out: Path, lines: int = 25) -> str:
    """The last lines of every component's log, for a failure message."""
    parts = []
    for log in sorted((out / "logs").glob("*.log")):
        tail = log.read_text(errors="replace").splitlines()[-lines:]
        parts.append(f"--- {log.name}\n" + "\n".join(line[:400] for line in tail))
    return "\n".join(parts)


def test_demon_lab_reports_the_loop_and_leaves_nothing_behind(tmp_path: Path) -> None:
    out = tmp_path / "lab"
    proc = subprocess.run([sys.executable, "-m", "topo.lab", "--out", str(out), "--no-lock", "--seconds", "5",
                           "--report", str(tmp_path / "report.json"), "--render", str(tmp_path / "topo.png")],
                          capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:] + log_tails(out)
    assert "OK: the loop worked" in proc.stdout
    # where to look while it runs: the dashboard and every part's metrics
    assert re.search(r"^demon-lab: dashboard: +http://127\.0\.0\.1:\d+/ ", proc.stdout, re.M), proc.stdout[:2000]
    for part in ("daemon \\+ embedded engine", "engine HTTP", "controller", "capture agent"):
        assert re.search(rf"^demon-lab: metrics: +http://127\.0\.0\.1:\d+/metrics +{part}", proc.stdout, re.M), part
    report = json.loads((tmp_path / "report.json").read_text())
    (tap,) = report["taps"]
    assert tap["flow_key"] == "10.0.0.1,10.0.0.2,51792,5201" and (tap["switch"], tap["in_port"]) == (1, 1)
    m = tap["milestones"]
    # the first copy may beat the daemon's "active" record (that waits for the barrier reply)
    assert m["flow start"] < m["tap created"] <= m["tap active"] < m["tap removed"]
    assert m["tap created"] <= m["first packet captured"] < m["tap removed"]
    assert m["flow end"] < m["tap removed"]
    assert tap["captured_packets"] > 0 and all(Path(f).exists() for f in tap["files"])
    assert (tmp_path / "topo.png").read_bytes()[:4] == b"\x89PNG"
    assert leftovers(out) == []


def test_demon_lab_tears_down_when_interrupted(tmp_path: Path) -> None:
    out = tmp_path / "lab"
    proc = subprocess.Popen([sys.executable, "-m", "topo.lab", "--out", str(out), "--no-lock", "--seconds", "30"],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    seen = ""
    deadline = time.monotonic() + 90
    while "flow start" not in seen and time.monotonic() < deadline:
        seen += proc.stdout.readline()
    assert "flow start" in seen, seen
    proc.send_signal(signal.SIGTERM)
    rest, _ = proc.communicate(timeout=60)
    assert proc.returncode == 1 and "interrupted, tearing down" in rest
    assert leftovers(out) == []


@pytest.mark.pox
@pytest.mark.skipif(pox_home() is None, reason="no POX checkout (run scripts/setup or set POX_HOME)")
def test_demon_lab_with_the_pox_component(tmp_path: Path) -> None:
    out = tmp_path / "lab"
    proc = subprocess.run([sys.executable, "-m", "topo.lab", "--controller", "pox", "--out", str(out),
                           "--no-lock", "--seconds", "5", "--report", str(tmp_path / "report.json")],
                          capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    (tap,) = json.loads((tmp_path / "report.json").read_text())["taps"]
    assert (tap["switch"], tap["in_port"], tap["state"]) == (1, 1, "removed") and tap["captured_packets"] > 0
    assert leftovers(out) == []
