"""Policy files that used to kill the daemon or pass ``--check`` and then fail
(issue 14 #2, #5, #16): each is rejected whole with one line per error, naming the
file, the policy and the field, on ``--check`` and on reload (the old set runs on)."""

from __future__ import annotations

import io
import logging
import time
from pathlib import Path
from typing import Callable

import pytest

from demon import cli
from demon.policy import PolicyError, load_policy_set
from tests.demon.fakes import Harness

BASE = "name: p\nkind: elephant\nkeys: ipsource\nthreshold: 1Mbps\n"

DEEP_FILTER = "(" * 1500 + "ipsource=10.0.0.1" + ")" * 1500

KILLERS = {
    # 14 #2: exceptions that escaped the loader
    "nested_filter": (BASE + f"filter: '{DEEP_FILTER}'\n",
                      "policy 'p': field 'filter': does not parse: longer than 2000 characters"),
    "deep_yaml": (BASE + "description: " + "[" * 5000 + "]" * 5000 + "\n",
                  "not valid YAML: nested too deeply"),
    "huge_interval": (BASE + "interval: 1e300\n",
                      "policy 'p': field 'interval': 1e+300s is outside 200ms..1h"),
    # 14 #5: a hard_timeout the switch cannot take
    "long_max_duration": (BASE + "max_duration: 1d\n",
                          "policy 'p': field 'max_duration': 86400s is outside 1s..65535s"),
    # 14 #16: values that passed --check but cannot work
    "infinite_threshold": (BASE.replace("1Mbps", "1e300Tbps"),
                           "policy 'p': field 'threshold': '1e300Tbps' is above 100Tbps: no link "
                           "is that fast"),
    "interval_1ms": (BASE + "interval: 1ms\n",
                     "policy 'p': field 'interval': 0.001s is outside 200ms..1h"),
    "interval_1e-9": (BASE + "interval: 1e-9\n",
                      "policy 'p': field 'interval': 1e-09s is outside 200ms..1h"),
    "huge_holddown": (BASE + "holddown: 1e9\n",
                      "policy 'p': field 'holddown': 1e+09s is outside 0s..7d"),
    "huge_sustain": (BASE + "sustain: 100d\n",
                     "policy 'p': field 'sustain': 8.64e+06s is outside 0s..1h"),
    "duplicate_key": (BASE + "threshold: 900Mbps\n",
                      "line 5: duplicate key 'threshold' (first at line 4; YAML would silently "
                      "keep the last one)"),
}


@pytest.mark.parametrize("case", sorted(KILLERS))
def test_check_rejects_with_one_line_no_traceback(tmp_path: Path, case: str) -> None:
    text, expected = KILLERS[case]
    (tmp_path / "p.yaml").write_text(text)
    out, err = io.StringIO(), io.StringIO()
    assert cli.main(["--policies", str(tmp_path), "--check"], stdout=out, stderr=err) == \
        cli.EXIT_CONFIG
    lines = err.getvalue().splitlines()
    assert len(lines) == 2 and lines[1] == f"1 error(s) in {tmp_path}"
    assert lines[0].startswith(f"{tmp_path / 'p.yaml'}: {expected}")


def test_a_long_max_duration_names_the_switch_limit_with_the_grace(tmp_path: Path) -> None:
    (tmp_path / "p.yaml").write_text(BASE + "max_duration: 65530s\n")
    with pytest.raises(PolicyError) as info:
        load_policy_set(tmp_path)
    assert info.value.errors == [
        f"{tmp_path / 'p.yaml'}: policy 'p': field 'max_duration': 65530s + hard_timeout_grace "
        "10s exceeds 65535s, the longest hard_timeout a switch takes (16 bits): at most 65525s"]
    (tmp_path / "p.yaml").write_text(BASE + "max_duration: 65525s\n")
    assert load_policy_set(tmp_path).policies["p"].max_duration == 65525


def test_an_empty_directory_needs_an_explicit_yes(tmp_path: Path) -> None:
    with pytest.raises(PolicyError, match="holds no policy: running it would delete every "
                                          "engine definition of ours; if that is what you "
                                          "want, set allow_empty: true in _global.yaml"):
        load_policy_set(tmp_path)
    (tmp_path / "_global.yaml").write_text("allow_empty: true\n")
    assert load_policy_set(tmp_path).policies == {}


def test_every_global_duration_is_bounded(tmp_path: Path) -> None:
    (tmp_path / "p.yaml").write_text(BASE)
    (tmp_path / "_global.yaml").write_text(
        "retry_backoff: 1e300\nfailure_holddown: 1e-9\nretain: 1e9\nplacement_wait: 1e9\n"
        "capture_capacity: 1e300Tbps\n")
    with pytest.raises(PolicyError) as info:
        load_policy_set(tmp_path)
    fields = [line.split("field '")[1].split("'")[0] for line in info.value.errors]
    assert fields == ["capture_capacity", "retry_backoff", "placement_wait", "retain"]


@pytest.mark.parametrize("case", ["nested_filter", "deep_yaml", "huge_interval",
                                  "interval_1e-9", "duplicate_key", "long_max_duration"])
def test_reload_of_a_killer_file_keeps_the_daemon_and_its_set(
        make: Callable[..., Harness], caplog: pytest.LogCaptureFixture, case: str) -> None:
    h = make()
    before = dict(h.runtime.ctx.policies)
    (h.policies_dir / "zz-bad.yaml").write_text(KILLERS[case][0])
    with caplog.at_level(logging.ERROR, logger="demon.runtime"):
        h.runtime.request_reload()
        deadline = time.monotonic() + 30  # a condition, not a timing: deep YAML is slow on a loaded machine
        while time.monotonic() < deadline and not any("reload rejected" in r.getMessage()
                                                      for r in caplog.records):
            time.sleep(0.05)
    rejected = [r.getMessage() for r in caplog.records if "reload rejected" in r.getMessage()]
    assert len(rejected) == 1 and "zz-bad.yaml" in rejected[0]
    assert "Traceback" not in caplog.text
    assert h.thread.is_alive() and h.runtime.ctx.policies == before
    assert "demon_elephant" in h.engine.flows  # the old set's definitions stay


def test_reload_to_an_emptied_directory_is_refused(make: Callable[..., Harness],
                                                   caplog: pytest.LogCaptureFixture) -> None:
    h = make()
    for path in h.policies_dir.glob("*.yaml"):
        path.unlink()
    with caplog.at_level(logging.ERROR, logger="demon.runtime"):
        h.runtime.request_reload()
        deadline = time.monotonic() + 30  # a condition, not a timing: deep YAML is slow on a loaded machine
        while time.monotonic() < deadline and "reload rejected" not in caplog.text:
            time.sleep(0.05)
    assert "holds no policy" in caplog.text
    assert h.thread.is_alive() and list(h.runtime.ctx.policies) == ["elephant"]
    assert "demon_elephant" in h.engine.flows and "demon_elephant" in h.engine.thresholds
