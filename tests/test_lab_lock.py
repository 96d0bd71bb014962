"""The tests' machine-wide lab lock: counted within a process, released by the last holder."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from tests import conftest
from tests.conftest import held_lab_lock


def other_process_can_take(path: Path) -> bool:
    """flock -n from another process: the lock as the rest of the machine sees it."""
    return subprocess.run(["flock", "-n", str(path), "true"]).returncode == 0


def test_nested_holds_take_the_file_once_and_the_last_one_out_unlocks(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    lock = tmp_path / "lab.lock"
    monkeypatch.setattr(conftest, "LAB_LOCK", lock)
    outer = held_lab_lock()
    inner = held_lab_lock()
    outer.__enter__()
    inner.__enter__()  # would wait forever if it flocked a second descriptor
    assert not other_process_can_take(lock)
    outer.__exit__(None, None, None)  # the first holder leaves first (fixture scopes)
    assert not other_process_can_take(lock)
    inner.__exit__(None, None, None)
    assert other_process_can_take(lock)
    with held_lab_lock():
        assert not other_process_can_take(lock)
    assert other_process_can_take(lock)
