"""Modules that describe a topology, and every command, import without Mininet
(issue 15): a subprocess whose import system refuses ``mininet``."""

from __future__ import annotations

import subprocess
import sys

from tests.conftest import REPO

BLOCK = """
import importlib, importlib.abc, pkgutil, sys
class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name == "mininet" or name.startswith("mininet."):
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
sys.meta_path.insert(0, Block())
"""

IMPORT_ALL = BLOCK + """
import demon, sflow, topo
bad = []
for pkg in (demon, sflow, topo):
    for m in pkgutil.walk_packages(pkg.__path__, pkg.__name__ + "."):
        if m.name.endswith("__main__") or m.name == "demon.controller.pox_tap":
            continue  # pox_tap runs inside POX's interpreter
        try:
            importlib.import_module(m.name)
        except Exception as exc:
            bad.append(f"{m.name}: {exc!r}")
print("\\n".join(bad))
"""


def test_every_module_imports_without_mininet() -> None:
    proc = subprocess.run([sys.executable, "-c", IMPORT_ALL], cwd=REPO, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip() == ""


def test_fabric_and_lab_say_what_they_need() -> None:
    code = BLOCK + """
from topo.fabricgen import seed_fabric
assert [s["role"] for s in seed_fabric()["switches"]] == ["filter", "filter", "aggregation"]
from topo.lab import main
sys.exit(main(["--scenario", "elephant"]))
"""
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [proc.stderr.strip()]
    assert proc.stderr.startswith("demon-lab: needs Mininet")
