"""``--replay FILE --compare DIR2``: the taps a second policy set gains and loses on the
same recording (a JSON engine session here; raw sFlow in the lab capture tests)."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest

from demon import cli
from demon.replay_compare import compare_dirs

pytestmark = pytest.mark.replay

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures" / "replay"
LIVE = FIXTURES / "live_session.jsonl"
FABRIC = FIXTURES / "live_session.fabric.json"
A_FLOW = "10.0.0.1,10.0.0.2,6,51792,5201"
B_FLOW = "10.0.0.8,10.0.0.6,6,40100,80"
BASE = {"name": "elephant", "keys": "ipsource,ipdestination,ipprotocol,tcpsourceport,"
                                    "tcpdestinationport",
        "interval": "1s", "duration": "5s", "max_duration": "60s"}


def policy_dir(tmp: Path, name: str, extra: str, kind: str = "top_talkers") -> Path:
    """A set of one policy: BASE with ``extra``'s ``field: value`` lines over it."""
    fields = {**BASE, "kind": kind,
              **dict(line.split(": ", 1) for line in extra.splitlines() if line)}
    directory = tmp / name
    directory.mkdir()
    (directory / "elephant.yaml").write_text("".join(f"{k}: {v}\n" for k, v in fields.items()))
    return directory


def test_a_stricter_set_loses_a_tap_and_keeps_the_other(tmp_path: Path) -> None:
    a = policy_dir(tmp_path, "a", "top: 1\nmin_rate: 8Mbps\n")
    b = policy_dir(tmp_path, "b", "top: 1\nmin_rate: 8Mbps\nmax_taps: 1\nholddown: 1h\n"
                                  "duration: 30s\n")
    cmp = compare_dirs(a, b, LIVE, FABRIC)
    assert [t.flow_key for t in cmp.lost] == [B_FLOW]  # B still holds A's tap when B fires
    assert [(x.flow_key, y.flow_key) for x, y in cmp.kept] == [(A_FLOW, A_FLOW)]
    assert cmp.gained == []


def test_cli_prints_gained_lost_and_kept(tmp_path: Path) -> None:
    a = policy_dir(tmp_path, "a", "top: 1\nmin_rate: 8Mbps\n")
    b = policy_dir(tmp_path, "b", "top: 2\nmin_rate: 1Mbps\nduration: 20s\n")
    out, err = io.StringIO(), io.StringIO()
    assert cli.main(["--policies", str(a), "--replay", str(LIVE), "--fabric", str(FABRIC),
                     "--compare", str(b)], stdout=out, stderr=err) == 0, err.getvalue()
    text = out.getvalue().splitlines()
    assert text[0].startswith(f"A = {a}: 2 tap(s); B = {b}: ")
    assert text[1].startswith("gained (B only): ") and "lost (A only): 0" in text
    out = io.StringIO()
    assert cli.main(["--policies", str(a), "--replay", str(LIVE), "--fabric", str(FABRIC),
                     "--compare", str(b), "--json"], stdout=out, stderr=err) == 0
    changes = [json.loads(line) for line in out.getvalue().splitlines()]
    assert {c["change"] for c in changes} <= {"gained", "kept"}
    kept = [c for c in changes if c["change"] == "kept"]
    assert kept and all(c["a"]["flow_key"] == c["b"]["flow_key"] for c in kept)


def test_compare_needs_a_recording_and_good_sets(tmp_path: Path) -> None:
    a = policy_dir(tmp_path, "a", "top: 1\n")
    err = io.StringIO()
    assert cli.main(["--policies", str(a), "--compare", str(a)], stdout=io.StringIO(),
                    stderr=err) == cli.EXIT_CONFIG
    assert err.getvalue() == "demon-watch: --compare needs --replay FILE (the recording to " \
                             "compare on)\n"
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "x.yaml").write_text("name: x\nkind: mouse\n")
    err = io.StringIO()
    assert cli.main(["--policies", str(a), "--replay", str(LIVE), "--fabric", str(FABRIC),
                     "--compare", str(bad)], stdout=io.StringIO(), stderr=err) == cli.EXIT_CONFIG
    assert err.getvalue().startswith(f"demon-watch: bad policy set in {bad}:")


def test_raw_sflow_compare_of_thresholds(tmp_path: Path, captures_dir: Path) -> None:
    capture = captures_dir / "ovs-seed-elephant.pcap"
    seed = FIXTURES / "elephant_session.fabric.json"
    low = policy_dir(tmp_path, "low", "threshold: 50Mbps\n", kind="elephant")
    high = policy_dir(tmp_path, "high", "threshold: 400Mbps\n", kind="elephant")
    late = policy_dir(tmp_path, "late", "threshold: 50Mbps\nsustain: 2s\n", kind="elephant")
    cmp = compare_dirs(low, high, capture, seed)
    assert [t.flow_key for t in cmp.lost] == ["10.0.0.1,10.0.0.2,6,51792,5201"]
    assert cmp.kept == [] and cmp.gained == []
    cmp = compare_dirs(low, late, capture, seed)
    ((a, b),) = cmp.kept
    assert b.created_at - a.created_at == pytest.approx(2.0, abs=0.6)
