"""Fabric description, static config (JSON and mirrorPorts.txt) and the entries they imply."""

import json
from pathlib import Path

import pytest

from demon.controller.fabric import (FabricError, Entry, baseline_entries, forward_actions, intended_entries,
                                     load_fabric, load_static, no_flood_ports, parse_fabric, parse_mirror_ports,
                                     parse_static, static_entries)
from demon.controller.spec import BASELINE_COOKIE, STATIC_COOKIE

SEED = {
    "version": 1,
    "switches": [
        {"dpid": 1, "name": "s1", "role": "filter", "host_ports": [1, 2, 3, 4, 5], "uplinks": [6, 7, 8, 9, 10]},
        {"dpid": 2, "name": "s2", "role": "filter", "host_ports": [1, 2, 3, 4, 5], "uplinks": [6, 7, 8, 9, 10]},
        {"dpid": 3, "name": "s3", "role": "aggregation", "uplinks": list(range(1, 11)), "capture_port": 11},
    ],
    "static": None,
}
PROTOTYPE_FILE = "s1MirrorSrc,1\ns1MirrorDst,6\ns2MirrorSrc,2\ns2MirrorDst,7\n"


def by_in_port(entries: list[Entry]) -> dict[int, tuple[str, ...]]:
    return {e.match["in_port"]: e.actions for e in entries}


@pytest.mark.parametrize("openflow", ["1.0", "1.3"])
def test_filter_baseline_keeps_uplinks_out(openflow: str) -> None:
    fabric = parse_fabric(SEED)
    entries = baseline_entries(fabric.role(1), openflow)
    assert all(e.cookie == BASELINE_COOKIE and e.idle_timeout == e.hard_timeout == 0 for e in entries)
    drops = {e.match["in_port"] for e in entries if e.match.get("in_port") in range(6, 11)}
    assert drops == {6, 7, 8, 9, 10}
    assert all(e.actions == () for e in entries if e.match.get("in_port") in drops)
    # nothing a filter switch does ever outputs to an uplink
    outputs = {a for e in entries for a in e.actions}
    assert not outputs & {f"output:{p}" for p in range(6, 11)}
    if openflow == "1.0":  # NORMAL, with the uplinks marked no-flood
        assert outputs == {"NORMAL"} and no_flood_ports(fabric.role(1)) == [6, 7, 8, 9, 10]
    else:  # learned L2 table; unknown destinations flood to host ports only
        assert Entry(0, {}, (), BASELINE_COOKIE) in entries  # table-miss drop
        assert Entry(10, {"in_port": 2}, ("learn(table=1)", "goto_table:1"), BASELINE_COOKIE) in entries
        assert Entry(1, {"in_port": 2}, ("output:1", "output:3", "output:4", "output:5"), BASELINE_COOKIE,
                     table_id=1) in entries
        assert "NORMAL" not in outputs


def test_aggregation_baseline_sends_uplinks_to_capture() -> None:
    entries = baseline_entries(parse_fabric(SEED).role(3))
    forwards = {e.match["in_port"]: e.actions for e in entries if e.match}
    assert forwards == {p: ("output:11",) for p in range(1, 11)}


def test_openflow10_baseline_has_no_table_miss_or_flood_entries() -> None:
    entries = baseline_entries(parse_fabric(SEED).role(1), "1.0")
    assert all(e.match for e in entries) and not any("eth_dst" in e.match for e in entries)


def test_prototype_file_reproduces_the_intended_table_without_the_mixup() -> None:
    static = parse_mirror_ports(PROTOTYPE_FILE)
    assert static.timeout == 120
    assert by_in_port(static_entries(static, 1)) == {1: ("output:2", "output:6"), 2: ("output:1", "output:6"),
                                                     3: ("output:4",), 4: ("output:3",)}
    # the prototype used s1's destination (6) on s2 too; here s2 mirrors to its own (7)
    assert by_in_port(static_entries(static, 2)) == {1: ("output:2", "output:7"), 2: ("output:1", "output:7")}
    assert by_in_port(static_entries(static, 3)) == {p: ("output:11",) for p in range(1, 11)}
    assert all(e.cookie == STATIC_COOKIE and e.idle_timeout == e.hard_timeout == 120 and e.send_flow_rem
               for e in static_entries(static, 1))


def test_static_json_round_trip_and_fabric_static() -> None:
    static = parse_mirror_ports(PROTOTYPE_FILE)
    again = parse_static(json.loads(json.dumps(static.to_json())))
    assert again == static
    fabric = parse_fabric({**SEED, "static": static.to_json()})
    assert len(intended_entries(fabric, 1)) == len(baseline_entries(fabric.role(1))) + 4


def test_load_static_reads_both_formats(tmp_path: Path) -> None:
    txt = tmp_path / "mirrorPorts.txt"
    txt.write_text(PROTOTYPE_FILE)
    js = tmp_path / "static.json"
    js.write_text(json.dumps({"static": parse_mirror_ports(PROTOTYPE_FILE).to_json()}))
    assert load_static(txt) == load_static(js)
    fab = tmp_path / "fabric.json"
    fab.write_text(json.dumps(SEED))
    assert sorted(load_fabric(fab).switches) == [1, 2, 3]


@pytest.mark.parametrize("mutate, field", [
    (lambda f: f["switches"][0].update(role="core"), "switches[0].role"),
    (lambda f: f["switches"][0].update(host_ports=[1, 6]), "switches[0].host_ports"),
    (lambda f: f["switches"][2].update(capture_port=5), "switches[2].capture_port"),
    (lambda f: f["switches"][1].update(dpid=1), "switches[1].dpid"),
    (lambda f: f["switches"][0].update(uplinks=[]), "switches[0].uplinks"),
    (lambda f: f["switches"][0].update(colour="red"), "switches[0].colour"),
    (lambda f: f.update(static={"switches": {"1": {"pairs": [[1, 2], [2, 3]]}}}), "static.switches.1.pairs[1]"),
    (lambda f: f.update(static={"switches": {"x": {}}}), "static.switches.x"),
    (lambda f: f.update(static={"timeout": -1}), "static.timeout"),
])
def test_bad_fabric_names_the_field(mutate, field: str) -> None:
    fabric = json.loads(json.dumps(SEED))
    mutate(fabric)
    with pytest.raises(FabricError) as info:
        parse_fabric(fabric, "seed.json")
    assert f"seed.json: {field}" in str(info.value)


@pytest.mark.parametrize("line", ["s1Mirror,1", "xMirrorSrc,1", "s1MirrorSrc,", "s1MirrorDst,a"])
def test_bad_mirror_ports_file(line: str) -> None:
    with pytest.raises(FabricError, match="mirrorPorts.txt:2:"):
        parse_mirror_ports("s1MirrorSrc,1\n" + line)


def test_static_mode_mirror_forwards_by_the_pair() -> None:
    static = parse_mirror_ports(PROTOTYPE_FILE)
    assert forward_actions(static, 1, {"in_port": 3}) == ("output:4",)
    assert forward_actions(static, 1, {"in_port": 5}) == ("NORMAL",)
    assert forward_actions(static, 1, {"ipv4_src": "10.0.0.1"}) == ("NORMAL",)


def test_launcher_refuses_a_bad_fabric_before_starting(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    from demon.controller.launcher import main

    bad = tmp_path / "fabric.json"
    bad.write_text(json.dumps({**SEED, "switches": [{**SEED["switches"][0], "role": "spine"}]}))
    assert main(["--fabric", str(bad), "--token-file", str(tmp_path / "tok")]) == 2
    assert "switches[0].role: must be one of filter, aggregation" in capsys.readouterr().err


@pytest.mark.parametrize("busy", ["rpc", "openflow"])
def test_launcher_exits_when_an_address_is_busy(tmp_path: Path, busy: str) -> None:
    import socket
    import subprocess
    import sys

    fabric = tmp_path / "fabric.json"
    fabric.write_text(json.dumps(SEED))
    with socket.socket() as taken, socket.socket() as spare:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        spare.bind(("127.0.0.1", 0))  # a free port, released when the launcher binds it
        free = spare.getsockname()[1]
        spare.close()
        rpc = f"tcp:127.0.0.1:{port if busy == 'rpc' else 0}"
        of_port = port if busy == "openflow" else free
        done = subprocess.run([sys.executable, "-m", "demon.controller.launcher", "--fabric", str(fabric),
                               "--token-file", str(tmp_path / "tok"), "--rpc", rpc, "--of-port", str(of_port),
                               "--metrics-listen", ""],  # not the machine-wide 8735
                              capture_output=True, text=True, timeout=60)
    assert done.returncode == 2
    assert f"127.0.0.1:{port}: Address already in use" in done.stderr
