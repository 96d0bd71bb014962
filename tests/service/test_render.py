"""topo.render: any fabric draws, labels are escaped, mirrors come from the daemon."""

from __future__ import annotations

import json
import shutil
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Iterator

import pytest

from demon.controller.fabric import parse_fabric
from topo.render import DrawnMirror, fabric_graph, main, mirrors_of, render, seed_dot

needs_dot = pytest.mark.skipif(shutil.which("dot") is None,
                               reason="Graphviz's dot is not installed (bash scripts/setup)")

LEAVES = {"version": 1, "static": None, "switches": [
    {"dpid": 10, "name": "leaf-a", "role": "filter", "host_ports": [1, 2, 3], "uplinks": [48]},
    {"dpid": 11, "name": "leaf:b", "role": "filter", "host_ports": [1, 2], "uplinks": [47, 48]},
    {"dpid": 20, "name": "agg", "role": "aggregation", "uplinks": [1, 2, 3], "capture_port": 24},
]}


def red_edges(source: str) -> list[str]:
    return [line.strip() for line in source.splitlines() if " -- " in line and "color=red" in line]


def test_seed_mirror_path_is_red() -> None:
    dot = seed_dot([DrawnMirror(2, 3, 8, "t1")])
    red = red_edges(dot)
    # h8 -> s2 port 3, s2 port 8 -> s3 port 8, s3 port 11 -> h11
    assert len(red) == 3
    assert any(e.startswith("h8 -- s2") and "headlabel=3" in e and "label=t1" in e for e in red)
    assert any(e.startswith("s2 -- s3") and "taillabel=8" in e and "headlabel=8" in e for e in red)
    assert any(e.startswith("s3 -- h11") and "taillabel=11" in e for e in red)
    assert not red_edges(seed_dot([]))


def test_a_non_seed_fabric_draws_its_own_switches_and_mirror() -> None:
    fabric = parse_fabric(LEAVES, "leaves")
    source = fabric_graph(fabric, [DrawnMirror(11, 2, 47, "web.1")], "leaves").source
    assert '"leaf-a"' in source and "leaf_b" in source and "agg" in source
    assert "s1" not in source and "h11" not in source  # nothing of the seed
    red = red_edges(source)
    assert len(red) == 3, red
    assert any('"leaf_b port 2" -- leaf_b' in e for e in red)
    assert any(e.startswith("leaf_b -- agg") and "taillabel=47" in e for e in red)
    assert any(e.startswith("agg -- capture ") for e in red)
    # five host ports, three uplinks, one capture port: nine cables
    assert sum(1 for line in source.splitlines() if " -- " in line) == 9


@needs_dot
@pytest.mark.parametrize("title", ['say "hi"', 'ends in a backslash \\', "<b>not html</b> & ;{}"])
def test_titles_with_quotes_and_backslashes_draw(tmp_path: Path, title: str) -> None:
    out = render(tmp_path / "t.svg", [DrawnMirror(1, 1, 6, 'tap "x"')], title)
    svg = out.read_text()
    import html

    assert html.escape(title, quote=False).replace('"', "&quot;") in svg or \
        html.escape(title, quote=False) in svg
    assert "tap &quot;x&quot;" in svg or 'tap "x"' in svg


@needs_dot
def test_non_seed_fabric_renders_png(tmp_path: Path) -> None:
    fabric_file = tmp_path / "fabric.json"
    fabric_file.write_text(json.dumps(LEAVES))
    assert main([str(tmp_path / "f.png"), "--fabric", str(fabric_file), "--mirror", "10:3:48",
                 "--title", 'leaves "A"']) == 0
    assert (tmp_path / "f.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_dot_source_needs_no_graphviz_binary(tmp_path: Path) -> None:
    assert main([str(tmp_path / "f.dot"), "--title", 'a "b"']) == 0
    assert 'label="a \\"b\\""' in (tmp_path / "f.dot").read_text()


def test_bad_inputs_are_one_line_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "bad.json"
    bad.write_text('{"version": 1, "switches": [{"dpid": 1, "role": "nope"}]}')
    assert main([str(tmp_path / "x.dot"), "--fabric", str(bad)]) == 2
    assert main([str(tmp_path / "x.dot"), "--mirror", "9:1:2"]) == 2
    assert main([str(tmp_path / "x.gif")]) == 2
    assert main([str(tmp_path / "x.dot"), "--state", str(tmp_path / "missing.sqlite")]) == 2
    assert not (tmp_path / "missing.sqlite").exists()  # never created
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 4 and all(line.startswith("topo.render: ") for line in lines)


def test_mirrors_of_taps_in_place_only() -> None:
    taps = [{"tap_id": "a", "state": "active", "dpid": 1, "in_port": 2, "copy_port": 6},
            {"tap_id": "b", "state": "removed", "dpid": 1, "in_port": 3, "copy_port": 7},
            {"tap_id": "c", "state": "expiring", "dpid": 2, "in_port": None, "copy_port": 8},
            {"tap_id": "d", "state": "failed", "dpid": None, "copy_port": None}]
    assert mirrors_of(taps) == [DrawnMirror(1, 2, 6, "a"), DrawnMirror(2, None, 8, "c")]


@pytest.fixture
def fake_api() -> Iterator[tuple[str, list[dict[str, Any]]]]:
    seen: list[dict[str, Any]] = []

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802
            seen.append({"path": self.path, "auth": self.headers.get("Authorization")})
            body = json.dumps({"taps": [
                {"tap_id": "elephant_tcp.1", "state": "active", "dpid": 1, "in_port": 1,
                 "copy_port": 6}]}).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", seen
    finally:
        server.shutdown()
        server.server_close()


def test_mirrors_from_the_daemons_api(tmp_path: Path, fake_api: tuple[str, list[Any]]) -> None:
    url, seen = fake_api
    token = tmp_path / "token"
    token.write_text("# tokens\nviewer:s3cret:ro\noperator:0th3r\n")
    assert main([str(tmp_path / "api.dot"), "--api", url, "--token-file", str(token)]) == 0
    assert seen[0]["path"] == "/api/v1/taps?state=active%2Cexpiring"
    assert seen[0]["auth"] == "Bearer s3cret"
    red = red_edges((tmp_path / "api.dot").read_text())
    assert any(e.startswith("h1 -- s1") and "label=\"elephant_tcp.1\"" in e for e in red)


def test_mirrors_from_the_state_file(tmp_path: Path) -> None:
    from dataclasses import replace

    from demon.model import State, Tap
    from demon.store import Store

    tap = Tap(tap_id="top_udp_talkers.2", policy="top_udp_talkers", flow_key="a,b,1,2",
              match={"in_port": 4}, dpid=2, in_port=4, copy_port=9, vlan_tag=100,
              bidirectional=False, state="active", rate_bps=1e6, priority=50, created_at=1.0,
              updated_at=1.0, expires_at=99.0, last_trigger_at=1.0)
    gone = replace(tap, tap_id="top_udp_talkers.1", in_port=2, copy_port=7, state="removed")
    state = tmp_path / "state.sqlite"
    with Store(state) as store:
        store.save(replace(State(), taps={tap.tap_id: tap, gone.tap_id: gone}))
    assert main([str(tmp_path / "s.dot"), "--state", str(state)]) == 0
    red = red_edges((tmp_path / "s.dot").read_text())
    assert any(e.startswith("h9 -- s2") for e in red), red
    assert not any(e.startswith("h7 -- s2") for e in red)
