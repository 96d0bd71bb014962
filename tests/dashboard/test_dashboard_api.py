"""The dashboard's server side against the real runtime: the page and its
assets (offline, strict CSP), the two reads it adds (a policy's top flows over
time, the fabric with its mirrors), and the token rules."""

from __future__ import annotations

import re
import time
from importlib import resources
from pathlib import Path

import httpx
import pytest
import responses

from demon.api.app import create_app
from demon.api.auth import Auth
from demon.api.dashboard.flowhistory import FlowHistory, threshold_bps
from sflow.webserve import BackgroundServer
from tests.dashboard.harness import FLOW, MOUSE, OPERATOR, READER, Daemon
from tests.demon.fakes import wait_for

pytestmark = pytest.mark.replay

STATIC = resources.files("demon.api.dashboard").joinpath("static")


def test_the_page_and_its_assets_are_served_from_the_api_address(daemon: Daemon) -> None:
    page = daemon.get("/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    csp = page.headers["content-security-policy"]
    assert "default-src 'self'" in csp and "script-src 'self'" in csp and "connect-src 'self'" in csp
    for asset in re.findall(r'(?:src|href)="(/dashboard/[^"]+)"', page.text):
        resp = daemon.get(asset)
        assert resp.status_code == 200, asset
    assert daemon.get("/dashboard/main.js").headers["content-type"].startswith("text/javascript")
    assert daemon.get("/dashboard/dashboard.css").headers["content-type"].startswith("text/css")
    missing = daemon.get("/dashboard/../app.py")
    assert missing.status_code == 404
    assert daemon.get("/dashboard/nope.js").json() == {"error": "no dashboard file 'nope.js'"}


def test_the_page_loads_nothing_from_elsewhere() -> None:
    """Offline: no CDN, no third-party host, no inline script (the CSP forbids it too)."""
    files = [f for f in STATIC.iterdir() if f.is_file()]
    assert {f.name for f in files} >= {"index.html", "main.js", "api.js", "chart.js", "fabric.js",
                                       "dom.js", "dashboard.css"}
    for f in files:
        text = f.read_text()
        urls = set(re.findall(r"https?://[^\s\"'`)]+", text)) - {"http://www.w3.org/2000/svg"}
        assert not urls, (f.name, urls)
        assert "@import" not in text and "eval(" not in text, f.name
    html = STATIC.joinpath("index.html").read_text()
    assert not re.search(r"<script(?![^>]*\bsrc=)[^>]*>", html)  # every script is a file
    assert " style=" not in html


def test_flows_give_each_polled_flow_over_time_with_the_threshold_and_its_tap(daemon: Daemon) -> None:
    daemon.flows([(MOUSE, 2e5)])
    wait_for(lambda: daemon.get("/api/v1/policies/elephant/flows").json()["polled_at"], what="a poll")
    tap_id = daemon.elephant(FLOW, 4e6)
    wait_for(lambda: any(f["flow_key"] == FLOW for f in daemon.get(
        "/api/v1/policies/elephant/flows").json()["flows"]), what="the elephant in the history")
    time.sleep(2.2)  # a few more polls
    body = daemon.get("/api/v1/policies/elephant/flows?window=60&top=5").json()
    assert body["policy"] == "elephant" and body["threshold_bps"] == 1e6 and body["interval_s"] == 1
    assert body["window_s"] == 60 and body["kind"] == "elephant" and body["paused"] is False
    (elephant,) = [f for f in body["flows"] if f["flow_key"] == FLOW]
    assert elephant["tap_id"] == tap_id and elephant["tap_state"] == "active"
    assert elephant["last_bps"] == pytest.approx(4e6)  # bytes/s from the engine, in bits/s
    assert len(elephant["points"]) >= 3 and all(v == pytest.approx(4e6) for _, v in elephant["points"])
    assert all(body["as_of"] - 60 <= t <= body["as_of"] for t, _ in elephant["points"])
    assert body["flows"][0]["flow_key"] == FLOW  # by peak rate
    assert body["polled_at"] == sorted(body["polled_at"])
    # Ended within the window: the chart still names its tap, as ended.
    assert daemon.post(f"/api/v1/taps/{tap_id}/release", OPERATOR).status_code == 200
    wait_for(lambda: daemon.runtime.state.taps.get(tap_id) is None
             or daemon.runtime.state.taps[tap_id].state == "removed", what="removed")
    (row,) = [f for f in daemon.get("/api/v1/policies/elephant/flows").json()["flows"] if f["flow_key"] == FLOW]
    assert (row["tap_id"], row["tap_state"]) == (tap_id, "removed")


def test_flows_cost_the_engine_nothing(daemon: Daemon) -> None:
    """The history comes from the runtime's own polls: reading it often sends no
    request to the engine."""
    daemon.flows([(FLOW, 2e5)])
    time.sleep(1.5)

    def polls_in(seconds: float, read: bool) -> int:
        before = sum(1 for _, path in daemon.engine.requests if path.startswith("/activeflows"))
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            if read:
                assert daemon.get("/api/v1/policies/elephant/flows").status_code == 200
                assert daemon.get("/api/v1/fabric").status_code == 200
            else:
                time.sleep(0.05)
        return sum(1 for _, path in daemon.engine.requests if path.startswith("/activeflows")) - before

    quiet, busy = polls_in(3, read=False), polls_in(3, read=True)
    assert quiet >= 2 and busy <= quiet + 1, (quiet, busy)


def test_flows_of_an_unknown_policy_and_bad_queries(daemon: Daemon) -> None:
    assert daemon.get("/api/v1/policies/nope/flows").json() == {"error": "no policy 'nope'"}
    resp = daemon.get("/api/v1/policies/elephant/flows?window=5")
    assert resp.status_code == 400 and resp.json()["error"].startswith("window: ")
    resp = daemon.get("/api/v1/policies/elephant/flows?top=0")
    assert resp.status_code == 400 and resp.json()["error"].startswith("top: ")


def test_fabric_gives_the_switches_and_the_live_mirrors(daemon: Daemon) -> None:
    body = daemon.get("/api/v1/fabric").json()
    assert [(s["dpid"], s["name"], s["role"]) for s in body["switches"]] == \
        [(1, "s1", "filter"), (2, "s2", "filter"), (3, "s3", "aggregation")]
    s1, _, s3 = body["switches"]
    assert s1["host_ports"] == [1, 2, 3, 4, 5] and s1["uplinks"] == [6, 7, 8, 9, 10]
    assert s3["capture_port"] == 11 and [p["port_no"] for p in s3["ports"]] == list(range(1, 12))
    assert body["mirrors"] == [] and body["controller_reachable"] is True
    tap_id = daemon.elephant()
    (mirror,) = daemon.get("/api/v1/fabric").json()["mirrors"]
    placed = daemon.runtime.state.taps[tap_id]
    assert mirror["tap_id"] == tap_id and mirror["flow_key"] == FLOW and mirror["state"] == "active"
    assert (mirror["dpid"], mirror["in_port"], mirror["copy_port"]) == (1, 1, placed.copy_port)
    assert placed.copy_port in s1["uplinks"]
    assert daemon.post(f"/api/v1/taps/{tap_id}/release", OPERATOR).status_code == 200
    wait_for(lambda: not daemon.get("/api/v1/fabric").json()["mirrors"], what="the mirror gone")


def test_writes_need_a_token_that_may_write(daemon: Daemon) -> None:
    tap_id = daemon.elephant()
    for path in (f"/api/v1/taps/{tap_id}/release", "/api/v1/policies/elephant/pause",
                 "/api/v1/policies/elephant/resume"):
        none = daemon.post(path)
        assert none.status_code == 401 and none.headers["www-authenticate"] == "Bearer"
        assert daemon.post(path, READER).status_code == 403
        bad = httpx.post(daemon.url + path, headers={"Authorization": "Bearer not-a-token-at-all"})
        assert bad.status_code == 401
    assert daemon.runtime.state.taps[tap_id].state == "active"  # nothing happened
    assert "elephant" not in daemon.runtime.state.paused
    assert not [w for w in daemon.controller.writes() if w[0] == "remove_mirror"]


def test_an_exposed_api_serves_the_page_but_not_its_data_without_a_token(tmp_path: Path) -> None:
    with responses.RequestsMock(assert_all_requests_are_fired=False) as mock:
        mock.add_passthru("http://127.0.0.1")
        d = Daemon(tmp_path, mock, tokens=[]).start()  # the loopback API, for the runtime
        app = create_app(d.runtime, Auth([OPERATOR, READER], reads_need_token=True))
        server = BackgroundServer(app, "127.0.0.1", 0, name="exposed").start()
        try:
            url = server.url
            assert httpx.get(url + "/").status_code == 200  # the page is code, not data
            assert httpx.get(url + "/dashboard/main.js").status_code == 200
            for path in ("/api/v1/fabric", "/api/v1/policies/elephant/flows", "/api/v1/status"):
                assert httpx.get(url + path).status_code == 401, path
                assert httpx.get(url + path, headers={
                    "Authorization": f"Bearer {READER.secret}"}).status_code == 200, path
        finally:
            server.stop()
            app.state.dashboard_detach()
            d.stop()


def test_a_daemon_without_tokens_takes_no_write_from_the_page(daemon: Daemon, tmp_path: Path) -> None:
    app = create_app(daemon.runtime, Auth([]))
    server = BackgroundServer(app, "127.0.0.1", 0, name="no tokens").start()
    try:
        resp = httpx.post(server.url + "/api/v1/policies/elephant/pause",
                          headers={"Authorization": f"Bearer {OPERATOR.secret}"})
        assert resp.status_code == 403 and "--api-token-file" in resp.json()["error"]
    finally:
        server.stop()
        app.state.dashboard_detach()


# -- the history on its own ----------------------------------------------------------------


def test_history_is_bounded_in_time_polls_and_flows() -> None:
    h = FlowHistory(window=10, keep=3, max_polls=5)  # at most one poll per 2 s kept
    for i in range(40):
        h.add("p", [(f"k{j}", float(j * 100 + i), "a", "1") for j in range(8)], at=1000 + i * 0.5)
    polls = h.polls("p", 0)
    assert 5 <= len(polls) <= 5 + 2 and polls[0].at >= 1019.5 - 10 and polls[-1].at == 1019.5
    assert all(b.at - a.at >= 2 for a, b in zip(polls, polls[1:-1]))
    assert all(len(p.flows) == 3 and p.flows[0][0] == "k7" for p in polls)  # the fastest three
    series = h.series("p", 0, top=2)
    assert [f["flow_key"] for f in series["flows"]] == ["k7", "k6"]
    h.add("p", [("late", 1.0, "a", "1")], at=900)  # an older poll finishing late is dropped
    assert h.polls("p", 0)[-1].at == 1019.5
    h.forget(["q"])
    assert h.polls("p", 0) == []


def test_threshold_line_of_each_kind() -> None:
    from demon.policy import load_policy_set

    loaded = load_policy_set(Path(__file__).resolve().parents[2] / "policies")
    for name, pol in loaded.policies.items():
        spec = pol.threshold_spec() if hasattr(pol, "threshold_spec") else None
        line = threshold_bps(pol)
        if spec is None:
            assert line is None, name
        else:
            assert line == pytest.approx(pol.to_bps(spec["value"])), name
    elephants = [p for p in loaded.policies.values() if p.kind == "elephant"]
    assert elephants and all(threshold_bps(p) == pytest.approx(p.threshold) for p in elephants)
