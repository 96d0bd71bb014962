"""The dashboard in headless Debian chromium against a daemon without the lab
(real runtime and API, scripted engine, fake controller): what the page shows,
how fast, and what its buttons do. The lab's own browser test is
``tests/topo/test_see_it_lab.py``."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest

from tests.browser import Browser
from tests.dashboard.harness import FLOW, MOUSE, OPERATOR, Daemon, transitions
from tests.demon.fakes import wait_for

pytestmark = [pytest.mark.replay, pytest.mark.slow]


def open_page(browser: Browser, daemon: Daemon) -> None:
    browser.open(daemon.url + "/")
    browser.wait(lambda: browser.js("return document.body.dataset.ready") == "yes", what="the page ready")
    browser.wait(lambda: browser.js("return document.getElementById('stream').dataset.state") == "live",
                 what="the transition stream")


def tap_row(browser: Browser, tap_id: str) -> dict[str, Any] | None:
    return browser.js("""
        const row = document.querySelector(`#taps tbody tr[data-tap-id="${arguments[0]}"]`);
        return row ? {state: row.dataset.state, shownAt: Number(row.dataset.shownAt) / 1000,
                      cells: [...row.cells].map(c => c.textContent)} : null;""", tap_id)


def chart_geometry(browser: Browser, policy: str, flow_key: str) -> dict[str, Any] | None:
    """The threshold line's y and the flow's points' ys in the policy's chart (SVG: y grows down)."""
    return browser.js("""
        const svg = document.querySelector(`.chart[data-policy="${arguments[0]}"] svg`);
        if (!svg) return null;
        const line = svg.querySelector('line.threshold');
        const ys = [...svg.querySelectorAll('polyline.series')]
            .filter(p => p.dataset.flowKey === arguments[1])
            .flatMap(p => p.getAttribute('points').split(' ').map(xy => Number(xy.split(',')[1])));
        return {threshold_y: line ? Number(line.getAttribute('y1')) : null,
                threshold_bps: line ? Number(line.dataset.bps) : null, ys: ys,
                tapped: [...svg.querySelectorAll('polyline.series.tapped')].map(p => p.dataset.flowKey)};""",
                      policy, flow_key)


def mirrors(browser: Browser) -> list[dict[str, str]]:
    return browser.js("""return [...document.querySelectorAll('#fabric g.mirror')].map(g => ({...g.dataset}));""")


def test_the_page_shows_a_tap_within_2s_with_its_chart_mirror_and_story(daemon: Daemon, browser: Browser,
                                                                         tmp_path: Path) -> None:
    daemon.flows([(MOUSE, 2e5)])
    open_page(browser, daemon)
    assert browser.js("return document.getElementById('no-taps').hidden") is False
    health = browser.js("return [...document.querySelectorAll('#health .card')].map(c => [c.dataset.card, c.dataset.ok])")
    assert ["engine", "yes"] in health and ["controller", "yes"] in health and ["switches", "yes"] in health
    last = transitions(daemon)[-1]["id"]
    tap_id = daemon.elephant(FLOW, 4e6)
    row = browser.wait(lambda: tap_row(browser, tap_id), timeout=5, what="the tap's row")
    created = next(t for t in transitions(daemon, last) if t["tap_id"] == tap_id and t["kind"] == "created")
    assert row["shownAt"] - created["at"] < 2.0, (row, created)
    row = browser.wait(lambda: (r := tap_row(browser, tap_id)) and r["state"] == "active" and r, what="active")
    tap = daemon.runtime.state.taps[tap_id]
    assert row["cells"][:5] == [tap_id, "elephant", FLOW, "active", f"s1 port 1 → uplink {tap.copy_port}"]
    assert row["cells"][6] == "4.0 Mbit/s"
    # The chart: the elephant's line above the dashed threshold line, drawn as tapped.
    geo = browser.wait(lambda: (g := chart_geometry(browser, "elephant", FLOW)) and len(g["ys"]) >= 2 and g,
                       timeout=6, what="the elephant in the chart")
    assert geo["threshold_bps"] == 1e6 and FLOW in geo["tapped"]
    assert max(geo["ys"]) < geo["threshold_y"]  # every point above the line
    # The fabric: the mirror at s1 port 1, copied up the tap's uplink.
    (m,) = browser.wait(lambda: mirrors(browser), what="the mirror in the fabric")
    assert (m["tapId"], m["dpid"], m["inPort"], m["copyPort"]) == (tap_id, "1", "1", str(tap.copy_port))
    kinds = browser.js("return [...document.querySelectorAll('#timeline li')].map(li => [li.dataset.kind, li.dataset.tapId, li.textContent])")
    assert ["created", tap_id] in [k[:2] for k in kinds]
    assert any("demon_elephant 4Mbps > 1Mbps" in k[2] for k in kinds if k[0] == "created")
    browser.screenshot(tmp_path / "dashboard.png")
    assert (tmp_path / "dashboard.png").stat().st_size > 10_000
    assert browser.errors() == []


def test_release_pause_and_resume_from_the_page_with_the_operators_token(daemon: Daemon,
                                                                         browser: Browser) -> None:
    from selenium.webdriver.common.by import By

    tap_id = daemon.elephant()
    open_page(browser, daemon)
    button = f'#taps tr[data-tap-id="{tap_id}"] button[data-action="release"]'
    browser.wait(lambda: browser.driver.find_elements(By.CSS_SELECTOR, button), what="the release button")
    assert not browser.driver.find_element(By.CSS_SELECTOR, button).is_enabled()  # no token yet
    browser.driver.find_element(By.ID, "token-input").send_keys(OPERATOR.secret)
    browser.driver.find_element(By.ID, "token-use").click()
    assert browser.js("return sessionStorage.getItem('pytapdemon.token')") == OPERATOR.secret
    assert browser.js("return document.getElementById('token-input').value") == ""
    browser.wait(lambda: browser.driver.find_element(By.CSS_SELECTOR, button).is_enabled(), what="enabled")
    browser.driver.find_element(By.CSS_SELECTOR, button).click()
    wait_for(lambda: ("remove_mirror", tap_id) in daemon.controller.writes(), what="the remove sent")
    browser.wait(lambda: tap_row(browser, tap_id) is None, what="the row gone")
    released = [t for t in transitions(daemon) if t["tap_id"] == tap_id and t["kind"] == "expiring"]
    assert released and released[0]["detail"]["operator"] == "alice"
    browser.wait(lambda: "release elephant.1: releasing" in browser.js(
        "return document.getElementById('messages').textContent"), what="the outcome")
    pause = '#policies tr[data-policy="elephant"] button[data-action="pause"]'
    browser.driver.find_element(By.CSS_SELECTOR, pause).click()
    wait_for(lambda: "elephant" in daemon.runtime.state.paused, what="paused")
    resume = '#policies tr[data-policy="elephant"] button[data-action="resume"]'
    browser.wait(lambda: browser.driver.find_elements(By.CSS_SELECTOR, resume), what="the resume button")
    browser.driver.find_element(By.CSS_SELECTOR, resume).click()
    wait_for(lambda: "elephant" not in daemon.runtime.state.paused, what="resumed")
    whos = [t["detail"].get("operator") for t in transitions(daemon) if t["kind"] in ("paused", "resumed")]
    assert whos == ["alice", "alice"]
    assert browser.errors() == []


def test_the_page_sends_no_write_without_a_token_and_a_bad_token_is_refused(daemon: Daemon,
                                                                            browser: Browser) -> None:
    from selenium.webdriver.common.by import By

    tap_id = daemon.elephant()
    open_page(browser, daemon)
    buttons = 'button[data-write]'
    browser.wait(lambda: len(browser.driver.find_elements(By.CSS_SELECTOR, buttons)) >= 2, what="buttons")
    assert not any(b.is_enabled() for b in browser.driver.find_elements(By.CSS_SELECTOR, buttons))
    # Even forced, the page's own client sends nothing without a token.
    refused = browser.driver.execute_async_script("""
        const done = arguments[arguments.length - 1];
        import('/dashboard/api.js').then(api => api.post(`/api/v1/taps/${arguments[0]}/release`))
            .then(() => done('sent'), err => done(err.message));""", tap_id)
    assert refused.startswith("paste the API token first")
    browser.driver.find_element(By.ID, "token-input").send_keys("not-the-token-0123456789")
    browser.driver.find_element(By.ID, "token-use").click()
    button = f'#taps tr[data-tap-id="{tap_id}"] button[data-action="release"]'
    browser.wait(lambda: browser.driver.find_element(By.CSS_SELECTOR, button).is_enabled(), what="enabled")
    browser.driver.find_element(By.CSS_SELECTOR, button).click()
    browser.wait(lambda: "refused: unknown token" in browser.js(
        "return document.getElementById('messages').textContent"), what="the refusal shown")
    time.sleep(0.5)
    assert daemon.runtime.state.taps[tap_id].state == "active"
    assert ("remove_mirror", tap_id) not in daemon.controller.writes()
    # The only console errors: the API's 401 answers to the bad token.
    errors = browser.errors()
    assert errors and all("401" in e["message"] for e in errors), errors


def test_on_an_exposed_api_the_page_shows_nothing_until_given_a_token(daemon: Daemon, browser: Browser) -> None:
    """Reads need a token there: the page asks for one, and a read-only token is
    enough to see (not to act)."""
    from selenium.webdriver.common.by import By

    from demon.api.app import create_app
    from demon.api.auth import Auth
    from sflow.webserve import BackgroundServer
    from tests.dashboard.harness import READER

    tap_id = daemon.elephant()
    app = create_app(daemon.runtime, Auth([OPERATOR, READER], reads_need_token=True))
    server = BackgroundServer(app, "127.0.0.1", 0, name="exposed").start()
    try:
        browser.open(server.url + "/")
        browser.wait(lambda: "reads refused" in browser.js(
            "return document.getElementById('messages').textContent"), what="the page asking for a token")
        browser.wait(lambda: browser.js("return document.getElementById('stream').dataset.state") == "unauthorized",
                     what="the stream refused")
        assert tap_row(browser, tap_id) is None
        browser.driver.find_element(By.ID, "token-input").send_keys(READER.secret)
        browser.driver.find_element(By.ID, "token-use").click()
        browser.wait(lambda: tap_row(browser, tap_id), what="the tap once the token is given")
        browser.wait(lambda: browser.js("return document.getElementById('stream').dataset.state") == "live",
                     what="the stream with the token")
        button = browser.driver.find_element(By.CSS_SELECTOR, f'#taps tr[data-tap-id="{tap_id}"] button')
        browser.wait(button.is_enabled, what="the button enabled (a token is set)")
        button.click()  # a read-only token: the API says no
        browser.wait(lambda: "is read-only" in browser.js(
            "return document.getElementById('messages').textContent"), what="the refusal")
        assert daemon.runtime.state.taps[tap_id].state == "active"
        errors = browser.errors()
        assert all(" 401 " in e["message"] or " 403 " in e["message"] or "(Unauthorized)" in e["message"]
                   or "(Forbidden)" in e["message"] for e in errors), errors
    finally:
        browser.open("about:blank")  # closes the page's stream before the server stops
        server.stop()
        app.state.dashboard_detach()
