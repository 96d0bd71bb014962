"""The first try without root: the shipped lab policies backtested on the lab's raw sFlow
recording, --init-policies, and what the package ships (demon.share)."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest

from demon.cli import main as watch_main
from demon.share import (CONTRIB, DEMO_POLICIES, DOCS, POLICIES, RECORDING, RECORDING_FABRIC,
                         main as share_main)

REPO = Path(__file__).resolve().parents[2]


def run(*argv: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    status = watch_main(list(argv), stdout=out, stderr=err)
    return status, out.getvalue(), err.getvalue()


def test_shipped_files_are_the_repositorys() -> None:
    assert sorted(p.name for p in POLICIES.glob("*.yaml")) == \
        sorted(p.name for p in (REPO / "policies").glob("*.yaml"))
    assert (DOCS / "fabric.md").read_text() == (REPO / "docs" / "fabric.md").read_text()
    assert (CONTRIB / "config.example.yaml").is_file()
    assert RECORDING.is_file() and RECORDING_FABRIC.is_file() and DEMO_POLICIES.is_dir()


def test_demo_ends_with_the_taps_and_why() -> None:
    status, out, err = run("--demo")
    assert status == 0, err
    assert "of raw sFlow (731 datagrams, 0 not decoded)" in out  # through the embedded engine
    taps = out.split(" tap(s):\n", 1)[1]
    why = out.split("why:\n", 1)[1].split("\n\n", 1)[0].splitlines()
    tapped = [line for line in why if " tapped " in line]
    # the recording's three elephants on s1; the third waits for the cap of two
    flows = [line.split(" tapped ")[1].split(" on ")[0] for line in tapped]
    assert flows == ["10.0.0.5,10.0.0.2,51794,5203", "10.0.0.3,10.0.0.4,51793,5202",
                     "10.0.0.1,10.0.0.2,51792,5201"]
    assert tapped[0].split(" on ", 1)[1].startswith("event 1: demon_elephant_tcp")
    assert "  a flow waited: policy cap reached (2 taps)" in why
    assert taps.count("removed: condition cleared") == 2


def test_demo_json() -> None:
    status, out, _ = run("--demo", "--json")
    lines = [json.loads(line) for line in out.splitlines()]
    assert status == 0 and sum(1 for line in lines if "tap" in line) == 3


def test_init_policies_writes_a_valid_set_and_never_overwrites(tmp_path: Path) -> None:
    target = tmp_path / "policies"
    status, out, _ = run("--init-policies", str(target))
    assert status == 0 and "file(s) written" in out
    assert run("--policies", str(target), "--check")[0] == 0
    assert run("--init-policies", str(target))[0] == 0  # identical files: nothing to do
    (target / "_global.yaml").write_text("max_taps: 1\n")
    status, _, err = run("--init-policies", str(target))
    assert status == 2 and "_global.yaml exists and differs" in err
    assert (target / "_global.yaml").read_text() == "max_taps: 1\n"


def test_policies_still_required_otherwise(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        run("--check")
    assert exc.value.code == 2
    assert "--policies" in capsys.readouterr().err


def test_share_lists_and_copies(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert share_main([]) == 0
    assert "policies" in capsys.readouterr().out
    assert share_main(["--copy", str(tmp_path)]) == 0
    assert (tmp_path / "contrib" / "config.example.yaml").is_file()
    assert (tmp_path / "recordings" / "lab-over-cap.pcap").is_file()
