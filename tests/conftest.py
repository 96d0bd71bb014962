"""Shared fixtures: where ../shared is, and the guard for lab (OVS + Mininet) tests.

Tiers (see setup.cfg markers): plain tests are pure; ``replay`` tests read
recorded data; ``integration`` tests need root, a running Open vSwitch and
Mininet, and hold a machine-wide lock so two lab runs never share the switches.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
import subprocess
from pathlib import Path
from typing import IO, Iterator

import pytest

REPO = Path(__file__).resolve().parent.parent
LAB_LOCK = Path(os.environ.get("DEMON_LAB_LOCK", "/tmp/pytapdemon-lab.lock"))


def shared_path() -> Path:
    """``../shared`` beside the checkout, or ``$DEMON_SHARED``."""
    return Path(os.environ.get("DEMON_SHARED", REPO.parent / "shared"))


@pytest.fixture(scope="session")
def shared_dir() -> Path:
    path = shared_path()
    if not path.is_dir():
        pytest.skip(f"shared data not found at {path} (set DEMON_SHARED)")
    return path


@pytest.fixture(scope="session")
def corpus_dir(shared_dir: Path) -> Path:
    path = shared_dir / "corpus"
    if not path.is_dir():
        pytest.skip(f"sFlow corpus not found at {path}")
    return path


@pytest.fixture(scope="session")
def captures_dir(shared_dir: Path) -> Path:
    path = shared_dir / "captures"
    if not path.is_dir():
        pytest.skip(f"OVS captures not found at {path}")
    return path


def lab_unavailable_reason() -> str | None:
    """Why the lab (root + OVS + Mininet) cannot run here, or None if it can."""
    if os.geteuid() != 0:
        return "integration tests need root"
    for tool in ("ovs-vsctl", "ovs-ofctl", "mn", "mnexec", "tcpdump"):
        if shutil.which(tool) is None:
            return f"{tool} not installed (run: bash scripts/setup)"
    try:
        subprocess.run(["ovs-vsctl", "--timeout=3", "show"], check=True,
                       capture_output=True, timeout=10)
    except (subprocess.SubprocessError, OSError):
        return "Open vSwitch is not running (run: bash scripts/setup)"
    try:
        import mininet.net  # noqa: F401
    except ImportError:
        return "mininet is not importable (venv must see Debian's mininet)"
    return None


@pytest.fixture(scope="session")
def lab_available() -> None:
    reason = lab_unavailable_reason()
    if reason:
        pytest.skip(reason)


class _LabHold:
    """This process's hold of the lab lock: the locked file and how many hold it."""

    handle: IO[str] | None = None
    depth = 0


@contextlib.contextmanager
def held_lab_lock() -> Iterator[None]:
    """Hold the machine-wide lab lock (``demon-lab`` takes the same one).

    The seed topology's names (s1..s3, h1..h11) and the sFlow/OpenFlow ports
    are fixed, so two lab runs at once would fight over them. Counted within
    this process (flock on a second descriptor of the same file would wait
    forever): a test's hold inside its module's hold takes nothing more, and
    the file is unlocked when the last holder lets go, in whatever order.
    """
    if _LabHold.handle is None:
        LAB_LOCK.parent.mkdir(parents=True, exist_ok=True)
        handle = open(LAB_LOCK, "w")
        fcntl.flock(handle, fcntl.LOCK_EX)
        _LabHold.handle = handle
    _LabHold.depth += 1
    try:
        yield
    finally:
        _LabHold.depth -= 1
        if not _LabHold.depth and _LabHold.handle is not None:
            fcntl.flock(_LabHold.handle, fcntl.LOCK_UN)
            _LabHold.handle.close()
            _LabHold.handle = None


@pytest.fixture
def lab_lock(lab_available: None) -> Iterator[None]:
    """Serialise every test that touches OVS bridges or Mininet, machine-wide."""
    with held_lab_lock():
        yield


@pytest.fixture(scope="module")
def module_lab_lock(lab_available: None) -> Iterator[None]:
    """For a module whose lab outlives one test (module-scoped fixtures): the lock
    is held from the lab's start to its stop, so no other lab runs in between."""
    with held_lab_lock():
        yield


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Integration tests take the lab lock even if they forget to ask for it."""
    for item in items:
        if item.get_closest_marker("integration") and "lab_lock" not in getattr(item, "fixturenames", []):
            item.fixturenames.append("lab_lock")  # type: ignore[attr-defined]


@pytest.fixture(autouse=True)
def _private_default_state(tmp_path_factory: pytest.TempPathFactory,
                           monkeypatch: pytest.MonkeyPatch) -> None:
    """No test may touch the machine's default state file (/var/lib/... as root):
    a command run without --state gets a state file of its own test."""
    if "DEMON_STATE" not in os.environ:
        monkeypatch.setenv("DEMON_STATE", str(tmp_path_factory.mktemp("state") / "state.sqlite"))
