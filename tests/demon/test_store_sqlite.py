"""The tap store: round trips, history kept after the core forgets a tap, the
operator queue, atomic saves, schema versioning."""

from __future__ import annotations

import sqlite3
from dataclasses import replace
from pathlib import Path

import pytest

from demon.model import Candidate, HistoryEntry, State, Tap
from demon.store import SCHEMA_VERSION, Store, StoreError


def make_tap(tap_id: str = "elephant.1", state: str = "active", **kw) -> Tap:
    base = dict(tap_id=tap_id, policy="elephant", flow_key="10.0.0.1,10.0.0.2,6,5001,80",
                match={"ipv4_src": "10.0.0.1", "tcp_dst": 80}, dpid=1, in_port=1,
                copy_port=6, vlan_tag=None, bidirectional=False, state=state,
                rate_bps=8e6, priority=0, created_at=100.0, updated_at=100.0,
                expires_at=400.0, last_trigger_at=100.0, trigger="event 7")
    base.update(kw)
    return Tap(**base)


def test_state_round_trips_through_the_file(tmp_path: Path) -> None:
    path = tmp_path / "s.sqlite"
    cand = Candidate(policy="elephant", flow_key="k2", first_seen=1.0, last_seen=2.0,
                     value=5.0, rate_bps=40.0, agent="127.0.0.1", data_source="3",
                     trigger="event 9", event_id=9, waiting="cap")
    state = State(taps={"elephant.1": make_tap()}, holddown={("elephant", "k0"): 500.0},
                  paused=frozenset({"top"}), controller_up=True,
                  watch={("elephant", "k2"): cand}, next_seq=2)
    with Store(path) as store:
        store.save(state, [HistoryEntry("elephant.1", 100.0, "installed", {"cause": "event 7"})],
                   last_event_id=7)
    with Store(path) as store:
        loaded = store.load()
    assert loaded.state == state
    assert loaded.last_event_id == 7


def test_forgotten_taps_stay_in_the_history(tmp_path: Path) -> None:
    path = tmp_path / "s.sqlite"
    with Store(path) as store:
        tap = make_tap()
        store.save(State(taps={tap.tap_id: tap}))
        ended = replace(tap, state="removed", ended_at=200.0, packets=10, bytes=1500)
        store.save(State(taps={tap.tap_id: ended}),
                   [HistoryEntry(tap.tap_id, 200.0, "removed", {"cause": "expired"})])
        store.save(State(taps={}))  # the core purged it
        assert store.load().state.taps == {}
        assert store.tap(tap.tap_id) == ended
        assert store.taps(live_only=True) == []
        assert [e.kind for e in store.history(tap.tap_id)] == ["removed"]


def test_only_live_taps_are_listed_as_live(tmp_path: Path) -> None:
    with Store(tmp_path / "s.sqlite") as store:
        taps = {t.tap_id: t for t in (make_tap("a.1", "active", created_at=1.0),
                                      make_tap("a.2", "failed", created_at=2.0),
                                      make_tap("a.3", "pending", created_at=3.0))}
        store.save(State(taps=taps))
        assert [t.tap_id for t in store.taps(live_only=True)] == ["a.3", "a.1"]
        assert len(store.taps()) == 3


def test_history_filters_by_time_and_keeps_order(tmp_path: Path) -> None:
    with Store(tmp_path / "s.sqlite") as store:
        entries = [HistoryEntry("t.1", at, kind, {"cause": kind, "policy": "p"})
                   for at, kind in ((5.0, "a"), (3.0, "b"), (9.0, "c"))]
        store.save(State(), entries)
        assert [e.kind for e in store.history()] == ["a", "b", "c"]
        assert [e.kind for e in store.history(since=4.0)] == ["a", "c"]


def test_operator_requests_are_answered_in_the_same_save(tmp_path: Path) -> None:
    path = tmp_path / "s.sqlite"
    with Store(path) as operator, Store(path) as daemon:
        first = operator.enqueue_request("release", "elephant.1", "alice", now=1.0)
        second = operator.enqueue_request("pause", "elephant", "bob", now=2.0)
        assert [r.id for r in daemon.pending_requests(now=3.0)] == [first, second]
        daemon.save(State(paused=frozenset({"elephant"})), answered=[(second, "paused")],
                    now=3.0)
        assert [r.id for r in daemon.pending_requests(now=3.0)] == [first]
        done = operator.request(second)
        assert done is not None and done.outcome == "paused" and done.done_at == 3.0
        assert operator.paused() == frozenset({"elephant"})


def test_bad_request_kind_names_the_choices(tmp_path: Path) -> None:
    with Store(tmp_path / "s.sqlite") as store, pytest.raises(StoreError, match="release"):
        store.enqueue_request("explode", "x", "me")


def test_a_failed_save_changes_nothing(tmp_path: Path) -> None:
    path = tmp_path / "s.sqlite"
    with Store(path) as store:
        store.save(State(taps={"a.1": make_tap("a.1")}), last_event_id=3)
        bad = HistoryEntry("a.2", 1.0, "x", {"cause": object()})  # serialisable via str
        broken = State(taps={"a.2": make_tap("a.2", dpid="not-a-number-but-stored")})
        store._db.execute("CREATE TRIGGER boom BEFORE INSERT ON history "
                          "BEGIN SELECT RAISE(ABORT, 'disk full'); END")
        with pytest.raises(StoreError, match="cannot write state file .*: disk full"):
            store.save(broken, [bad], last_event_id=4)
    with Store(path) as store:
        loaded = store.load()
        assert set(loaded.state.taps) == {"a.1"}
        assert loaded.last_event_id == 3


def test_newer_schema_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "s.sqlite"
    Store(path).close()
    db = sqlite3.connect(path)
    db.execute(f"PRAGMA user_version={SCHEMA_VERSION + 1}")
    db.commit()
    db.close()
    with pytest.raises(StoreError, match="newer"):
        Store(path)


def test_readonly_open_of_a_missing_file_says_which(tmp_path: Path) -> None:
    with pytest.raises(StoreError, match="does not exist"):
        Store(tmp_path / "nope.sqlite", readonly=True)


def test_prune_drops_what_ended_before_the_cutoff_and_keeps_held_taps(tmp_path: Path) -> None:
    with Store(tmp_path / "s.sqlite") as store:
        old = make_tap("e.1", created_at=10.0)
        recent = make_tap("e.2", created_at=900.0)
        held = make_tap("e.3", created_at=20.0)  # old, but the core still holds it
        store.save(State(taps={t.tap_id: t for t in (old, recent, held)}),
                   [HistoryEntry("e.1", 10.0, "created", {}), HistoryEntry("e.3", 20.0, "created", {}),
                    HistoryEntry(None, 30.0, "waiting", {"flow_key": "k"}),
                    HistoryEntry("e.2", 900.0, "created", {})])
        store.save(State(taps={"e.1": replace(old, state="removed", ended_at=50.0),
                               "e.2": replace(recent, state="removed", ended_at=950.0),
                               "e.3": held}),
                   [HistoryEntry("e.1", 50.0, "removed", {}), HistoryEntry("e.2", 950.0, "removed", {})])
        store.save(State(taps={"e.3": held}))  # the core purged e.1 and e.2
        done = store.enqueue_request("pause", "elephant", "op", now=40.0)
        store.save(State(taps={"e.3": held}), answered=[(done, "paused")], now=40.0)
        fresh = store.enqueue_request("resume", "elephant", "op", now=41.0)  # not answered yet

        assert store.prune(before=500.0) == {"taps": 1, "history": 3, "requests": 1}

        assert store.tap("e.1") is None and store.tap("e.2") is not None
        assert [(e.tap_id, e.kind) for e in store.history()] == [
            ("e.3", "created"), ("e.2", "created"), ("e.2", "removed")]
        assert store.request(done) is None and store.request(fresh) is not None
        assert store.load().state.taps == {"e.3": held}
        assert store.prune(before=500.0) == {"taps": 0, "history": 0, "requests": 0}


def test_an_unreadable_request_queue_is_a_store_error_not_a_crash(tmp_path: Path) -> None:
    """The daemon polls the queue every tick and survives a StoreError; a raw sqlite3
    error from another writer's damage would end its loop."""
    store = Store(tmp_path / "s.sqlite")
    store.enqueue_request("release", "elephant.1", "alice", now=100.0)
    assert [r.target for r in store.pending_requests(now=101.0)] == ["elephant.1"]
    with sqlite3.connect(tmp_path / "s.sqlite") as other:
        other.execute("DROP TABLE requests")
    with pytest.raises(StoreError, match="cannot read state file"):
        store.pending_requests(now=102.0)
    store.close()
