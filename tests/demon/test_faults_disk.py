"""Issue 14 #3: a full filesystem under the state file.

Before: the daemon died, and the real cause ("database or disk is full") was
hidden behind "cannot rollback - no transaction is active". Now the save
fails with the real cause, the daemon keeps deciding in memory (the switches'
own timeouts still bound every mirror), says why, and saves everything it held
once space returns. A small tmpfs is mounted for each test (root only).
"""

from __future__ import annotations

import errno
import os
import subprocess
from pathlib import Path
from typing import Iterator

import pytest
import responses

from demon.model import HistoryEntry, State
from demon.store import Store, StoreError
from tests.demon.fakes import ELEPHANT, FLOW_A, FLOW_B, FLOW_C, Harness, wait_for
from tests.demon.test_store_sqlite import make_tap

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="mounting a small tmpfs needs root")


@pytest.fixture
def small_fs(tmp_path: Path) -> Iterator[Path]:
    where = tmp_path / "fs"
    where.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=512k,mode=0700", "tmpfs", str(where)],
                   check=True, capture_output=True)
    try:
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], capture_output=True)


def fill(fs: Path) -> Path:
    """Take every free byte of ``fs``; returns the filler (delete it to free them)."""
    filler = fs / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        for size in (65536, 4096, 512, 1):
            try:
                while True:
                    os.write(fd, b"\0" * size)
            except OSError as exc:
                assert exc.errno == errno.ENOSPC
    finally:
        os.close(fd)
    return filler


def entries(n: int, tag: str) -> list[HistoryEntry]:
    return [HistoryEntry(f"t.{i}", float(i), "created", {"cause": f"{tag} " + "x" * 2000})
            for i in range(n)]


def test_a_full_disk_is_named_and_nothing_half_written(small_fs: Path) -> None:
    path = small_fs / "state.sqlite"
    with Store(path) as store:
        first = make_tap("a.1")
        store.save(State(taps={first.tap_id: first}), entries(3, "kept"), last_event_id=3)
        filler = fill(small_fs)
        second = make_tap("a.2")
        with pytest.raises(StoreError) as failure:
            store.save(State(taps={first.tap_id: first, second.tap_id: second}),
                       entries(200, "lost"), last_event_id=9)
        assert "database or disk is full" in str(failure.value)
        assert "cannot rollback" not in str(failure.value)
        assert str(path) in str(failure.value) and "\n" not in str(failure.value)
        filler.unlink()
        # Space is back: the same connection saves the whole state again.
        store.save(State(taps={first.tap_id: first, second.tap_id: second}), entries(2, "new"),
                   last_event_id=9)
    with Store(path) as store:
        loaded = store.load()
        assert set(loaded.state.taps) == {"a.1", "a.2"} and loaded.last_event_id == 9
        assert [e.detail["cause"][:4] for e in store.history()] == ["kept"] * 3 + ["new "] * 2


def test_the_daemon_keeps_deciding_says_why_and_catches_up(
        small_fs: Path, tmp_path: Path, mock: responses.RequestsMock) -> None:
    h = Harness(tmp_path, mock, {"elephant": ELEPHANT.format(max_taps=4)},
                state_path=small_fs / "state.sqlite").start()
    try:
        h.engine.set_flows("demon_elephant", [(FLOW_A, 400_000.0, "101")])
        h.engine.fire("demon_elephant", FLOW_A)
        wait_for(lambda: "elephant.1" in h.controller.mirrors, what="first tap")
        filler = fill(small_fs)
        for flow, port in ((FLOW_B, "102"), (FLOW_C, "103")):
            h.engine.fire("demon_elephant", flow, data_source=port)
        # The decisions go on (taps installed), the daemon lives and says why.
        wait_for(lambda: len(h.controller.mirrors) == 3, what="taps while the disk is full")
        snapshot = wait_for(lambda: (lambda s: s if not s.store["writable"] else None)(
            h.runtime.view.snapshot()), what="the store reported unwritable")
        assert "database or disk is full" in snapshot.store["error"]
        assert snapshot.store["unsaved_transitions"] > 0 and h.thread.is_alive()
        held = h.runtime.view.last_id
        assert not any(t.tap_id == "elephant.3" for t in h.runtime.view.transitions_after(0))
        filler.unlink()
        # Space is back: everything held is saved, in order, and published.
        wait_for(lambda: h.runtime.view.snapshot().store["writable"], what="recovery")
        wait_for(lambda: h.store.tap("elephant.3") is not None, what="saved tap")
        saved = [t.id for t in h.runtime.view.transitions_after(held)]
        assert saved == list(range(held + 1, held + 1 + len(saved)))
        kinds = [(t.tap_id, t.kind) for t in h.runtime.view.transitions_after(held)]
        assert ("elephant.3", "created") in kinds and ("elephant.3", "active") in kinds
    finally:
        h.stop()
        h.controller.stop()
