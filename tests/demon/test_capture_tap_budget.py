"""A tap's capture budget (``max_packets``/``max_bytes``) and the limit that ended it,
carried as structured fields from the daemon's tap into the tap table entry and the
capture agent's manifests; entries from before they existed still load."""

from __future__ import annotations

import json
from pathlib import Path

from demon.capture.filer import CaptureAgent
from demon.capture.taptable import TapTable, placed, tap_table_entry, write_tap_table
from demon.model import Tap, tap_to_dict
from tests.demon.test_capture_agent import ELEPHANT, FakeClock, tap, tcp_frame

BUDGET_KEYS = ("max_packets", "max_bytes", "limit")


def model_tap(**extra: object) -> Tap:
    fields: dict = dict(tap_id="elephant.1", policy="elephant", flow_key="k", match=ELEPHANT, dpid=1,
                        in_port=1, copy_port=6, vlan_tag=None, bidirectional=False, state="active",
                        rate_bps=1e8, priority=200, created_at=999.0, updated_at=999.0,
                        expires_at=2000.0, last_trigger_at=999.0)
    fields.update(extra)
    return Tap(**fields)


def test_the_entry_carries_the_budget_from_the_daemons_tap() -> None:
    entry = tap_table_entry(tap_to_dict(model_tap(max_packets=10_000, max_bytes=1.5 * 2**30)))
    assert (entry["max_packets"], entry["max_bytes"], entry["limit"]) == (10_000, 1_610_612_736, None)
    assert isinstance(entry["max_bytes"], int)


def test_the_entry_rounds_a_fractional_byte_budget_up_and_names_the_ending_limit() -> None:
    # the budget is reached at the first whole count >= it
    ended = model_tap(max_bytes=1000.1, state="removed", ended_at=1005.0, limit="max_bytes")
    entry = tap_table_entry(tap_to_dict(ended))
    assert (entry["max_packets"], entry["max_bytes"], entry["limit"]) == (None, 1001, "max_bytes")
    assert entry["stop"] == 1005.0


def test_an_unbudgeted_tap_has_null_budget_fields() -> None:
    entry = tap_table_entry(tap_to_dict(model_tap()))
    assert {k: entry[k] for k in BUDGET_KEYS} == {"max_packets": None, "max_bytes": None, "limit": None}


def test_the_entry_from_the_apis_tap_json_carries_the_budget() -> None:
    """The lab's split-host mode builds entries from ``GET /api/v1/taps`` taps."""
    from demon.api.records import tap_json

    entry = tap_table_entry(tap_json(model_tap(max_packets=500, limit="max_packets")))
    assert (entry["max_packets"], entry["max_bytes"], entry["limit"]) == (500, None, "max_packets")


def run_agent(tmp_path: Path, entry: dict, frames: int = 3) -> tuple[dict, list[dict]]:
    table = tmp_path / "taps.json"
    write_tap_table(table, [entry])
    clock = FakeClock()
    agent = CaptureAgent(tmp_path / "out", TapTable(table), clock=clock)
    for i in range(frames):
        agent.handle(tcp_frame("10.0.0.1", "10.0.0.2", 51792, 5201), 1_000_000_000_000 + i)
    agent.close()
    d = tmp_path / "out" / entry["tap_id"]
    return (json.loads((d / "tap.json").read_text()),
            [json.loads(p.read_text()) for p in sorted(d.glob(f"{entry['tap_id']}-*.json"))])


def test_a_budgeted_taps_manifests_have_the_numbers_and_the_ending_limit(tmp_path: Path) -> None:
    entry = tap("t1", ELEPHANT, max_packets=10_000, max_bytes=15_000_000, limit="max_packets",
                stop=1001.0, state="removed", packets=10_012, bytes=15_018_000)
    summary, files = run_agent(tmp_path, entry)
    assert summary["packets"] == 3 and files
    for doc in [summary, *files]:
        assert (doc["max_packets"], doc["max_bytes"], doc["limit"]) == (10_000, 15_000_000, "max_packets")


def test_an_entry_from_before_the_budget_fields_still_writes_its_manifests(tmp_path: Path) -> None:
    entry = tap("old", ELEPHANT)
    assert not any(k in entry for k in BUDGET_KEYS)
    summary, files = run_agent(tmp_path, entry)
    assert summary["packets"] == 3 and files
    for doc in [summary, *files]:
        assert (doc["max_packets"], doc["max_bytes"], doc["limit"]) == (None, None, None)


def test_bad_budget_values_read_as_none_and_do_not_cost_the_tap(tmp_path: Path) -> None:
    entry = tap("odd", ELEPHANT, max_packets="lots", max_bytes=True, limit=7)
    summary, _ = run_agent(tmp_path, entry)
    assert summary["packets"] == 3
    assert (summary["max_packets"], summary["max_bytes"], summary["limit"]) == (None, None, None)


def test_an_old_entry_takes_the_ending_limit_from_the_daemons_transition(tmp_path: Path) -> None:
    """An agent fed by a daemon whose tap entries lack ``limit``: the transition's
    ``detail.limit`` (machine-readable, not its cause sentence) names it."""
    table = tmp_path / "taps.json"
    write_tap_table(table, [])
    agent = CaptureAgent(tmp_path / "out", TapTable(table), clock=FakeClock())
    ended = tap("t1", ELEPHANT, stop=1001.0, state="removed")
    assert agent.table.upsert(ended) is not None
    agent.note_transition({"id": 7, "at": 1000.5, "tap_id": "t1", "kind": "expiring", "state": "expiring",
                           "cause": "some words that are not parsed",
                           "detail": {"limit": "max_bytes", "packets": 10, "bytes": 15_000}, "tap": ended})
    agent.handle(tcp_frame("10.0.0.1", "10.0.0.2", 51792, 5201), 1_000_000_000_000)
    agent.close()
    summary = json.loads((tmp_path / "out" / "t1" / "tap.json").read_text())
    assert summary["limit"] == "max_bytes" and summary["max_bytes"] is None
    assert summary["transitions"][-1]["limit"] == "max_bytes"


def test_the_state_file_table_carries_the_budget(tmp_path: Path) -> None:
    from demon.model import State
    from demon.store import Store
    from demon.capture.taptable import StoreTapTable

    store = Store(tmp_path / "state.sqlite")
    t = model_tap(max_packets=2_000)
    store.save(State(taps={t.tap_id: t}), [])
    store.close()
    table = StoreTapTable(tmp_path / "state.sqlite")
    assert table.reload_if_changed()
    (loaded,) = table.taps
    assert placed(loaded.info) and loaded.info["max_packets"] == 2_000 and loaded.info["max_bytes"] is None
