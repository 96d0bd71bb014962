"""Issue 14 #10: a partly corrupt state file. Before: 7 of 17 corruptions made
demon-watch exit 1 with a traceback (demon-tap too). Now: the documented exit 5
with one line naming the file, whatever part is damaged."""

from __future__ import annotations

import io
import sqlite3
from pathlib import Path
from typing import Callable

import pytest
import responses

from demon import cli, tapctl
from demon.model import Candidate, HistoryEntry, State
from demon.store import Store
from tests.demon.fakes import TOKEN, FakeController, ScriptedEngine
from tests.demon.test_store_sqlite import make_tap


def healthy(path: Path) -> None:
    cand = Candidate(policy="elephant", flow_key="k2", first_seen=1.0, last_seen=2.0, value=5.0,
                     rate_bps=40.0, agent="127.0.0.1", data_source="3", trigger="event 9")
    taps = {t.tap_id: t for t in (make_tap("elephant.1"),
                                  make_tap("elephant.2", "removed", ended_at=200.0))}
    with Store(path) as store:
        store.save(State(taps=taps, holddown={("elephant", "k0"): 500.0},
                         watch={("elephant", "k2"): cand}, next_seq=3),
                   [HistoryEntry("elephant.1", 100.0 + i, "created", {"cause": f"event {i}"})
                    for i in range(300)], last_event_id=7)
    with sqlite3.connect(path) as db:
        db.execute("PRAGMA wal_checkpoint(TRUNCATE)")


def sql(statement: str) -> Callable[[Path], None]:
    def corrupt(path: Path) -> None:
        with sqlite3.connect(path) as db:
            db.execute(statement)
        with sqlite3.connect(path) as db:
            db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    return corrupt


def overwrite(offset: int, data: bytes) -> Callable[[Path], None]:
    def corrupt(path: Path) -> None:
        with open(path, "r+b") as fh:
            fh.seek(offset)
            fh.write(data)
    return corrupt


def page_of(table: str, offset: int = 0, data: bytes = b"\x0d\xff\xff\xff" * 4
            ) -> Callable[[Path], None]:
    """Overwrite the b-tree page header of ``table``'s root page (or an index's)."""
    def corrupt(path: Path) -> None:
        with sqlite3.connect(path) as db:
            page = 1 if table == "sqlite_master" else db.execute(
                "SELECT rootpage FROM sqlite_master WHERE name = ?", (table,)).fetchone()[0]
            size = db.execute("PRAGMA page_size").fetchone()[0]
        with open(path, "r+b") as fh:
            fh.seek((page - 1) * size + (100 if page == 1 else 0) + offset)
            fh.write(data)
    return corrupt


def truncate(path: Path) -> None:
    with open(path, "r+b") as fh:
        fh.truncate(path.stat().st_size // 3)


def garbage(path: Path) -> None:
    path.write_bytes(b"this is not a database at all\n" * 100)


CORRUPTIONS: dict[str, Callable[[Path], None]] = {
    "header": overwrite(0, b"SQLite format 9\0"),
    "page size": overwrite(16, b"\x00\x03"),
    "taps page": page_of("taps"),
    "history page": page_of("history"),
    "history index page": page_of("history_tap"),
    "meta page": page_of("meta"),
    "watch cells": page_of("watch", 8, b"\xff" * 64),
    "schema page": page_of("sqlite_master"),
    "truncated": truncate,
    "not a database": garbage,
    "tap not JSON": sql("UPDATE taps SET data = '{nope' WHERE tap_id = 'elephant.1'"),
    "tap misses fields": sql("UPDATE taps SET data = '{\"tap_id\": \"elephant.1\"}'"),
    "tap wrong types": sql("UPDATE taps SET data = json_set(data, '$.match', 5)"),
    "candidate not JSON": sql("UPDATE watch SET data = 'x'"),
    "candidate extra field": sql("UPDATE watch SET data = json_set(data, '$.bogus', 1)"),
    "holddown not a number": sql("UPDATE holddown SET until = 'soon'"),
    "next_seq not a number": sql("UPDATE meta SET value = 'abc' WHERE key = 'next_seq'"),
    "paused not a list": sql("UPDATE meta SET value = '{\"a\": 1}' WHERE key = 'paused'"),
    "cursor not a number": sql("UPDATE meta SET value = 'x' WHERE key = 'last_event_id'"),
    "history not JSON": sql("UPDATE history SET detail = '{' WHERE seq = 5"),
    "history not an object": sql("UPDATE history SET detail = '[1, 2]' WHERE seq = 6"),
    "history tap not JSON": sql("UPDATE history SET tap = '{' WHERE seq = 7"),
    "taps table gone": sql("DROP TABLE taps"),
    "old schema number": sql("PRAGMA user_version = 1"),
}


@pytest.fixture
def lab(tmp_path: Path):
    token = tmp_path / "rpc.token"
    token.write_text(TOKEN + "\n")
    token.chmod(0o600)
    with FakeController() as controller, \
            responses.RequestsMock(assert_all_requests_are_fired=False) as mock:
        engine = ScriptedEngine().register(mock)
        yield {"token": token, "controller": controller, "engine": engine}


def one_line(err: str, prog: str) -> str:
    mine = [line for line in err.splitlines() if line.startswith(f"{prog}:")]
    assert "Traceback" not in err, err
    assert len(mine) == 1, err
    return mine[0]


@pytest.mark.parametrize("damage", list(CORRUPTIONS))
def test_demon_watch_exits_5_with_one_line(tmp_path: Path, lab: dict, damage: str) -> None:
    from tests.conftest import REPO

    path = tmp_path / "state.sqlite"
    healthy(path)
    CORRUPTIONS[damage](path)
    err = io.StringIO()
    status = cli.main(["--policies", str(REPO / "policies"), "--sflow-rt", lab["engine"].base_url,
                       "--controller", lab["controller"].address, "--token-file",
                       str(lab["token"]), "--state", str(path), "--listen", "127.0.0.1:0",
                       "--log-level", "error"], stdout=io.StringIO(), stderr=err)
    line = one_line(err.getvalue(), "demon-watch")
    assert status == cli.EXIT_STATE, err.getvalue()
    assert str(path) in line


@pytest.mark.parametrize("damage", list(CORRUPTIONS))
def test_demon_tap_exits_5_with_one_line(tmp_path: Path, damage: str) -> None:
    path = tmp_path / "state.sqlite"
    healthy(path)
    CORRUPTIONS[damage](path)
    failed = 0
    for argv in (["list"], ["show", "elephant.1"], ["history"], ["--json", "history"],
                 ["requests"]):
        out, err = io.StringIO(), io.StringIO()
        status = tapctl.main(["--state", str(path), *argv], stdout=out, stderr=err)
        if status == 0:
            continue  # what this command reads is intact
        failed += 1
        line = one_line(err.getvalue(), "demon-tap")
        assert status in (tapctl.EXIT_STATE, tapctl.EXIT_REFUSED), (argv, err.getvalue())
        if status == tapctl.EXIT_STATE:
            assert str(path) in line
