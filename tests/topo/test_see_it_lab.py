"""Seeing it, in the lab (issue 9): every part's Prometheus metrics exist and
move with a real elephant and agree with what the switches and the capture
host report; the dashboard in headless Debian chromium shows the tap within
2 s, draws the elephant above its threshold, and a release clicked on the page
ends the mirror in the switch; writes need the token.

One lab for the module; each test uses flows of its own (own ports).
Observations come from the network: ``ovs-ofctl dump-flows``, the capture
agent's files and status on h11, the controller's FlowRemoved counters.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import re
import statistics
import sys
import time
from pathlib import Path
from typing import Any, Iterator

import httpx
import pytest

from demon.rpc.protocol import RpcError
from demon.runtime import CAUSE_CLASSES
from demon.rpc.token import read_api_tokens
from tests.browser import Browser, browser  # noqa: F401  (browser: the fixture)
from tests.capture_files import read_capture
from tests.demon.fakes import sflow_datagram
from tests.metricnames import exported, grouping_labels, names_in, queries
from tests.topo.test_loop_end_to_end import TcpFlow, agent_counters, run_flows, taps_of, wait_released
from topo.session import LabSession, SessionOptions

pytestmark = [pytest.mark.integration, pytest.mark.slow,
              pytest.mark.filterwarnings("ignore::DeprecationWarning:mininet.*")]

POLICY = "elephant_tcp"
THRESHOLD_BPS = 50e6  # policies/lab/elephant-tcp.yaml
FAKE_AGENT = "192.0.2.99"  # an sFlow agent of the test's own, with a sequence gap



@pytest.fixture(scope="module")
def session(module_lab_lock: None, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LabSession]:
    s = LabSession(SessionOptions(out=tmp_path_factory.mktemp("seeit")))
    s.start()
    try:
        yield s
    finally:
        s.stop()


# -- scraping -------------------------------------------------------------------------------

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def scrape(session: LabSession) -> dict[str, str]:
    """Every part's /metrics as text (the capture agent's from inside h11)."""
    urls = session.metrics_urls()
    assert set(urls) == {"daemon", "engine", "controller", "capture"}, urls
    out = {part: httpx.get(urls[part], timeout=10).raise_for_status().text
           for part in ("daemon", "engine", "controller")}
    code = ("import sys, urllib.request; "
            f"sys.stdout.write(urllib.request.urlopen({urls['capture']!r}, timeout=5).read().decode())")
    out["capture"] = session.lab.host("h11").cmd(f"{sys.executable} -c \"{code}\"")
    assert "pytapdemon_capture_" in out["capture"], out["capture"][-500:]
    return out


def samples(text: str) -> Samples:
    from prometheus_client.parser import text_string_to_metric_families

    return {(s.name, frozenset(s.labels.items())): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def value(vals: Samples, name: str, **labels: str) -> float:
    """The sum of ``name``'s samples carrying ``labels`` (0 when none)."""
    want = set(labels.items())
    return sum(v for (n, ls), v in vals.items() if n == name and want <= ls)


def label_values(vals: Samples, name: str, label: str) -> set[str]:
    return {dict(ls)[label] for (n, ls) in vals if n == name and label in dict(ls)}


def api(session: LabSession, path: str) -> Any:
    return httpx.get(f"{session.api_url}{path}", timeout=10).raise_for_status().json()


def switch_entries(session: LabSession, switch: str, sport: int) -> list[str]:
    return [line for line in session.lab.ofctl("dump-flows", switch).splitlines()
            if f"tp_src={sport}" in line or f"tcp_src={sport}" in line]


def capture_port_tx(session: LabSession) -> int:
    """Packets s3 sent out of its capture port, from the datapath now (OVSDB's
    interface statistics lag by seconds)."""
    out = session.lab.ofctl("dump-ports", "s3", "11")
    match = re.search(r"tx pkts=(\d+)", out)
    assert match, out
    return int(match.group(1))


def h11_rx_packets(session: LabSession) -> int:
    """What the capture host's interface received (its own kernel's count)."""
    return int(session.lab.host("h11").cmd("cat /sys/class/net/h11-eth0/statistics/rx_packets").strip())


def agent_tap(session: LabSession, tap_id: str) -> dict[str, Any]:
    return session.agent_status().get("taps", {}).get(tap_id, {})


# -- metrics ----------------------------------------------------------------------------------


def test_every_metric_exists_moves_and_agrees_with_the_switches_and_the_capture_host(
        session: LabSession) -> None:
    before = {part: samples(text) for part, text in scrape(session).items()}
    h11_before, s3_before = h11_rx_packets(session), capture_port_tx(session)
    # What the elephant alone would not move: a datagram the engine cannot decode, an
    # agent whose sequence numbers skip three datagrams, an RPC the controller refuses,
    # and a policy reload.
    sflow = ("127.0.0.1", session.ports["sflow"])
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
        udp.sendto(b"\x00\x00\x00\x05 not sFlow", sflow)
        udp.sendto(sflow_datagram(1, agent=FAKE_AGENT), sflow)
        udp.sendto(sflow_datagram(5, agent=FAKE_AGENT), sflow)
    with pytest.raises(RpcError):
        session.rpc.call("remove_mirror", tap_id="bad id!")
    os.kill(session.watch.pid, signal.SIGHUP)

    flow = TcpFlow(session, 1, 2, 41201, 5601, nbytes=150_000_000)  # ~6 s at 200 Mbit/s
    assert session.wait(lambda s: any(t["state"] == "active" for t in taps_of(s, flow.key)), 15)
    (tap,) = taps_of(session, flow.key)
    tap_id = tap["tap_id"]
    time.sleep(1.5)  # copies reach h11
    during = {part: samples(text) for part, text in scrape(session).items()}
    live_api = api(session, "/api/v1/taps?state=live")["taps"]
    d, c, k, e = during["daemon"], during["controller"], during["capture"], during["engine"]
    # taps active = taps in the API = mirrors on the switch
    assert value(d, "pytapdemon_daemon_live_taps", policy=POLICY) == len(live_api) == 1
    assert value(d, "pytapdemon_daemon_taps", state="active", policy=POLICY) == 1
    assert value(c, "pytapdemon_controller_mirrors_installed") == len(session.rpc.list_mirrors()) == 1
    assert value(c, "pytapdemon_controller_mirror_entries") == len(switch_entries(session, "s1", 41201)) == 1
    assert value(c, "pytapdemon_controller_switches_connected") == len(session.rpc.list_switches()) == 3
    assert value(k, "pytapdemon_capture_taps") >= 1 and value(k, "pytapdemon_capture_packets_total",
                                                               tap_id=tap_id) > 0
    assert value(e, "pytapdemon_engine_active_flows", flow=f"demon_{POLICY}") >= 1
    used = value(d, "pytapdemon_daemon_capture_budget_used_bits_per_second")
    assert used == pytest.approx(sum(t["rate_bps"] for t in live_api), rel=0.5) and used > THRESHOLD_BPS
    assert value(d, "pytapdemon_daemon_capture_budget_bits_per_second") == 1e9  # policies/lab/_global.yaml
    assert value(d, "pytapdemon_daemon_engine_up") == value(d, "pytapdemon_daemon_controller_up") == 1

    run_flows(session, [flow])
    flow.results()
    wait_released(session, [flow.key])
    assert session.wait(lambda s: agent_tap(s, tap_id).get("packets") and not switch_entries(s, "s1", 41201), 10)
    time.sleep(1.0)  # the agent's last status write after the tap ended
    session.poll()
    texts = scrape(session)
    after = {part: samples(text) for part, text in texts.items()}
    d, c, k, e = after["daemon"], after["controller"], after["capture"], after["engine"]
    k0 = before["capture"]

    def moved(part: str, name: str, by: float = 1, **labels: str) -> float:
        delta = value(after[part], name, **labels) - value(before[part], name, **labels)
        assert delta >= by, (name, labels, delta)
        return delta

    # mirrored packets = the capture agent's packets for that tap
    captured = value(k, "pytapdemon_capture_packets_total", tap_id=tap_id)
    status = agent_tap(session, tap_id)
    frames = sum(1 for p in session.capture_files(tap_id) for _ in read_capture(p))
    assert captured == status["packets"] == frames > 0
    assert value(k, "pytapdemon_capture_bytes_total", tap_id=tap_id) == status["bytes"]
    # What the capture host's interface received is what the agent captured (only this
    # tap was live), with the frames the kernel dropped before the agent's rings and the
    # frames of no tap; the aggregation switch sent it all from its capture port.
    to_h11 = h11_rx_packets(session) - h11_before
    sent_to_h11 = capture_port_tx(session) - s3_before
    unmatched = value(k, "pytapdemon_capture_unmatched_frames_total") - value(
        k0, "pytapdemon_capture_unmatched_frames_total")
    drops = value(k, "pytapdemon_capture_kernel_drops_total", tap_id=tap_id)
    slack = max(5, 0.002 * to_h11)  # a few stray frames (ARP, link-local) reach h11 too
    assert abs(to_h11 - captured - unmatched - drops) <= slack, \
        (to_h11, captured, unmatched, drops, agent_counters(session))
    assert abs(sent_to_h11 - to_h11) <= slack, (sent_to_h11, to_h11)
    # The switch counts what its mirror entry matched: never fewer than the copies. It
    # may count more: packets its datapath forwarded before it took the new entry, and
    # copies the userspace datapath dropped on the way (a loaded machine).
    switch = sum(ev.get("packets", 0) for ev in session.mirror_events if ev["tap_id"] == tap_id)
    assert captured <= switch and to_h11 <= switch, (captured, to_h11, switch)
    assert captured >= 0.8 * switch, (captured, switch, agent_counters(session))
    assert value(k, "pytapdemon_capture_files", tap_id=tap_id) == len(session.capture_files(tap_id)) >= 1
    assert value(k, "pytapdemon_capture_files_opened_total", tap_id=tap_id) >= 1
    assert value(k, "pytapdemon_capture_kernel_drops_total", tap_id=tap_id) == status.get("kernel_drops", 0)
    assert value(k, "pytapdemon_capture_unmatched_frames_total") == \
        session.agent_status().get("taps", {}).get("unmatched", {}).get("packets", 0)
    moved("capture", "pytapdemon_capture_kernel_packets_total", by=captured * 0.5)  # the rings took them
    # taps active = taps in the API, now none
    assert value(d, "pytapdemon_daemon_live_taps", policy=POLICY) == \
        len(api(session, "/api/v1/taps?state=live")["taps"]) == 0
    assert api(session, f"/api/v1/taps/{tap_id}")["counters"]["packets"] == switch
    moved("daemon", "pytapdemon_daemon_taps", state="removed", policy=POLICY)
    for kind in ("created", "active", "removed"):
        moved("daemon", "pytapdemon_daemon_transitions_total", kind=kind)
    # causes are bounded classes (docs/api.md), never a sentence; a flow that waited for
    # its port in the port map counts as `capacity`. The elephant was created by its
    # threshold event or by the activeflows poll, whichever saw it first.
    assert label_values(d, "pytapdemon_daemon_transitions_total", "cause") <= set(CAUSE_CLASSES)
    assert sum(value(d, "pytapdemon_daemon_transitions_total", kind="created", cause=cause)
               - value(before["daemon"], "pytapdemon_daemon_transitions_total", kind="created",
                       cause=cause) for cause in ("event", "poll")) >= 1
    moved("daemon", "pytapdemon_daemon_events_received_total")
    moved("daemon", "pytapdemon_daemon_threshold_events_total")
    moved("daemon", "pytapdemon_daemon_decisions_total", by=2)
    moved("daemon", "pytapdemon_daemon_engine_polls_total", outcome="ok", by=3)
    moved("daemon", "pytapdemon_daemon_rpc_calls_total", method="install_mirror", outcome="ok")
    moved("daemon", "pytapdemon_daemon_rpc_duration_seconds_count", method="install_mirror")
    moved("daemon", "pytapdemon_daemon_policy_reloads_total", outcome="ok")
    assert value(d, "pytapdemon_daemon_last_transition_id") == api(session, "/api/v1/status")["last_transition_id"]
    assert value(d, "pytapdemon_daemon_store_writable") == 1
    moved("engine", "pytapdemon_engine_datagrams_total", by=10)
    moved("engine", "pytapdemon_engine_datagrams_decoded_total", by=10)
    moved("engine", "pytapdemon_engine_samples_total", kind="flow", by=10)
    moved("engine", "pytapdemon_engine_samples_total", kind="counter", by=10)
    moved("engine", "pytapdemon_engine_decode_errors_total")
    assert value(e, "pytapdemon_engine_lost_datagrams_total", agent=FAKE_AGENT) == 3
    moved("engine", "pytapdemon_engine_events_total")
    moved("engine", "pytapdemon_engine_http_requests_total", by=5)
    assert value(e, "pytapdemon_engine_agents") >= 2
    moved("controller", "pytapdemon_controller_flow_mods_total", command="add")
    reasons = {ev.get("reason") for ev in session.mirror_events if ev["tap_id"] == tap_id}
    for reason in reasons:
        moved("controller", "pytapdemon_controller_flow_removed_total", reason=str(reason))
    moved("controller", "pytapdemon_controller_rpc_requests_total", method="install_mirror")
    moved("controller", "pytapdemon_controller_rpc_errors_total", method="remove_mirror")
    # What this run gives no cause to move still exists (declared, with the right labels).
    names = {part: exported(text) for part, text in texts.items()}
    for part, name in (("daemon", "pytapdemon_daemon_errors_total"), ("engine", "pytapdemon_engine_evictions_total"),
                       ("capture", "pytapdemon_capture_frames_total"),
                       ("daemon", "pytapdemon_daemon_unsaved_transitions"),
                       ("engine", "pytapdemon_engine_lost_samples_total")):
        assert name in names[part], name
    assert {"core", "store", "engine", "rpc", "notification"} <= label_values(d, "pytapdemon_daemon_errors_total",
                                                                             "kind")
    assert {"ok", "rejected"} == label_values(d, "pytapdemon_daemon_policy_reloads_total", "outcome")
    # The Grafana dashboard's queries name only what the running parts export.
    missing = [(title, n) for title, expr, _ in queries() for n in names_in(expr)
               if n not in names[n.split("_")[1]]]
    assert not missing, missing
    unlabelled = []
    for title, expr, legend in queries():
        carried = set().union(*(names[n.split("_")[1]].get(n, set()) for n in names_in(expr)))
        if carried and not grouping_labels(expr, legend) <= carried:
            unlabelled.append(title)
    assert not unlabelled, unlabelled


# -- the page in chromium ---------------------------------------------------------------------


def operator_secret(session: LabSession) -> str:
    tokens = [t for t in read_api_tokens(session.paths["api_token"]) if t.can_write]
    assert tokens, session.paths["api_token"]
    return tokens[0].secret


def page_tap(browser: Browser, tap_id: str) -> dict[str, Any] | None:
    return browser.js("""
        const row = document.querySelector(`#taps tbody tr[data-tap-id="${arguments[0]}"]`);
        return row ? {state: row.dataset.state, shownAt: Number(row.dataset.shownAt) / 1000,
                      cells: [...row.cells].map(c => c.textContent)} : null;""", tap_id)


def page_chart(browser: Browser, flow_key: str) -> dict[str, Any] | None:
    return browser.js("""
        const svg = document.querySelector(`.chart[data-policy="${arguments[0]}"] svg`);
        if (!svg) return null;
        const line = svg.querySelector('line.threshold');
        const runs = [...svg.querySelectorAll('polyline.series')].filter(p => p.dataset.flowKey === arguments[1]);
        const ys = runs.flatMap(p => p.getAttribute('points').split(' ').map(xy => Number(xy.split(',')[1])));
        return {threshold_y: line ? Number(line.getAttribute('y1')) : null,
                threshold_bps: line ? Number(line.dataset.bps) : null,
                ys: ys, last_y: ys.length ? ys[ys.length - 1] : null,
                tapped: runs.some(p => p.classList.contains('tapped'))};""", POLICY, flow_key)


def shown_latencies(browser: Browser, records: list[dict[str, Any]]) -> dict[int, float]:
    """Transition id → seconds from its record to its line on the page's timeline."""
    shown = browser.js("""return Object.fromEntries([...document.querySelectorAll('#timeline li[data-shown-at]')]
        .map(li => [li.dataset.id, Number(li.dataset.shownAt) / 1000]));""")
    return {r["id"]: shown[str(r["id"])] - r["at"] for r in records if str(r["id"]) in shown}


def artefact(session: LabSession, name: str) -> Path:
    """Under the lab's output (pytest's tmp dir); also copied to $DEMON_LAB_ARTEFACTS when set."""
    return session.out / name


def keep_artefact(path: Path) -> None:
    where = os.environ.get("DEMON_LAB_ARTEFACTS")
    if where:
        Path(where).mkdir(parents=True, exist_ok=True)
        shutil.copy(path, Path(where) / path.name)


def test_the_page_shows_the_lab_elephant_and_a_release_clicked_there_ends_the_mirror(
        session: LabSession, browser: Browser) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select

    first = api(session, "/api/v1/status")["last_transition_id"]
    browser.open(f"{session.api_url}/")
    browser.wait(lambda: browser.js("return document.body.dataset.ready") == "yes", timeout=15, what="ready")
    browser.wait(lambda: browser.js("return document.getElementById('stream').dataset.state") == "live",
                 what="the transition stream")
    fabric = browser.js("return [...document.querySelectorAll('#fabric g.switch')].map(g => g.dataset.role)")
    assert sorted(fabric) == ["aggregation", "filter", "filter"]
    Select(browser.driver.find_element(By.ID, "window")).select_by_value("60")  # the last minute

    flow = TcpFlow(session, 3, 4, 41202, 5602, nbytes=200_000_000)  # ~8 s at 200 Mbit/s
    assert session.wait(lambda s: bool(taps_of(s, flow.key)), 15), "no tap"
    (tap,) = taps_of(session, flow.key)
    tap_id = tap["tap_id"]
    row = browser.wait(lambda: page_tap(browser, tap_id), timeout=5, what="the tap on the page")
    created = next(t for t in api(session, f"/api/v1/transitions?after={first}&limit=1000")["transitions"]
                   if t["tap_id"] == tap_id and t["kind"] == "created")
    assert row["shownAt"] - created["at"] < 2.0, (row, created)
    row = browser.wait(lambda: (r := page_tap(browser, tap_id)) and r["state"] == "active" and r, what="active")
    assert row["cells"][2] == flow.key and row["cells"][4].startswith("s1 port 3 → uplink ")
    copy_port = int(row["cells"][4].rsplit(" ", 1)[1])
    (mirror,) = browser.wait(lambda: browser.js(
        "return [...document.querySelectorAll('#fabric g.mirror')].map(g => ({...g.dataset}))"), what="mirror")
    assert (mirror["tapId"], mirror["dpid"], mirror["inPort"], mirror["copyPort"]) == (tap_id, "1", "3",
                                                                                      str(copy_port))
    # The chart: the elephant above the threshold line (SVG y grows downwards), drawn as tapped.
    chart = browser.wait(lambda: (g := page_chart(browser, flow.key)) and len(g["ys"]) >= 4
                         and g["last_y"] < g["threshold_y"] and g, timeout=8, what="the elephant above the line")
    assert chart["threshold_bps"] == THRESHOLD_BPS and chart["tapped"]
    assert len(switch_entries(session, "s1", 41202)) == 1  # the mirror is in the switch
    shot = browser.screenshot(artefact(session, "dashboard.png"))
    keep_artefact(shot)

    # Release from the page, with the operator's token pasted once.
    browser.driver.find_element(By.ID, "token-input").send_keys(operator_secret(session))
    browser.driver.find_element(By.ID, "token-use").click()
    button = f'#taps tr[data-tap-id="{tap_id}"] button[data-action="release"]'
    browser.wait(lambda: browser.driver.find_element(By.CSS_SELECTOR, button).is_enabled(), what="enabled")
    clicked = time.time()
    browser.driver.find_element(By.CSS_SELECTOR, button).click()
    assert session.wait(lambda s: not switch_entries(s, "s1", 41202), 5, every=0.1), \
        switch_entries(session, "s1", 41202)
    gone = time.time() - clicked
    browser.wait(lambda: page_tap(browser, tap_id) is None, what="the tap off the page")
    run_flows(session, [flow])
    sent, got = flow.results()
    assert sent["bytes_sent"] == got["bytes_received"] == flow.nbytes  # forwarding never stopped
    wait_released(session, [flow.key])
    story = api(session, f"/api/v1/taps/{tap_id}")
    assert any(t["detail"].get("operator") for t in story["transitions"] if t["kind"] == "expiring")
    assert [t["tap_id"] for t in session.taps.values() if t["flow_key"] == flow.key] == [tap_id]  # held down

    records = [t for t in api(session, f"/api/v1/transitions?after={first}&limit=1000")["transitions"]]
    latencies = shown_latencies(browser, records)
    assert set(latencies) == {r["id"] for r in records}  # every transition reached the page
    figures = sorted(latencies.values())
    report = {"transitions": len(figures), "p50_s": statistics.median(figures),
              "p95_s": figures[max(0, int(round(0.95 * len(figures))) - 1)], "max_s": figures[-1],
              "release_click_to_switch_s": round(gone, 3), "by_id": latencies}
    artefact(session, "dashboard-latency.json").write_text(json.dumps(report, indent=1) + "\n")
    keep_artefact(artefact(session, "dashboard-latency.json"))
    print(f"\ndashboard update latency: {report['transitions']} transitions, p50 {report['p50_s']*1000:.0f} ms, "
          f"p95 {report['p95_s']*1000:.0f} ms, max {report['max_s']*1000:.0f} ms; release click -> mirror gone "
          f"{gone*1000:.0f} ms")
    assert browser.errors() == []


def test_the_api_refuses_writes_without_the_token_and_metrics_take_none(session: LabSession) -> None:
    flow = TcpFlow(session, 5, 2, 41203, 5603, nbytes=100_000_000)
    assert session.wait(lambda s: any(t["state"] == "active" for t in taps_of(s, flow.key)), 15)
    (tap,) = taps_of(session, flow.key)
    url = session.api_url
    for headers in ({}, {"Authorization": "Bearer not-the-operator-token"}):
        for path in (f"/api/v1/taps/{tap['tap_id']}/release", f"/api/v1/policies/{POLICY}/pause"):
            resp = httpx.post(url + path, headers=headers, timeout=10)
            assert resp.status_code == 401, (path, resp.text)
    assert httpx.post(url + "/metrics", timeout=10).status_code == 405
    assert len(switch_entries(session, "s1", 41203)) == 1  # still mirrored
    assert POLICY not in api(session, "/api/v1/policies")["paused"]
    run_flows(session, [flow])
    flow.results()
    wait_released(session, [flow.key])
