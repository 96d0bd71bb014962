"""The daemon's HTTP API under generated requests (hypothesis, in the normal test run;
issue 14 asks that the HTTP parsers stay fuzzed in CI).

Generated methods, paths, query strings, headers and bodies (JSON and not,
``tests/httpfuzz.py``) go to the FastAPI app in-process, built over the real
runtime (scripted engine, fake controller: ``tests.demon.fakes.Harness``), on
loopback and as when exposed (reads need a token). Whatever comes in: never a
5xx but the documented 503 (starting) and 504 (no decision in time), every 4xx
a JSON ``{"error": "one line"}`` (docs/api.md), and a refused write changes no
tap and no paused policy (the core may record the refused tap request as a
failed tap); refused before it reaches the decision core (400, 401, 403,
405...), it records no transition either.

Not generated: ``GET /api/v1/transitions/stream`` (an endless stream; its
errors are tested in test_api.py) and flows the policies could tap (a tap
would then run its course while later examples compare states).
"""

from __future__ import annotations

import ipaddress
import json
from typing import Any, Callable, Iterator
from urllib.parse import unquote

import pytest
import responses
from fastapi.responses import PlainTextResponse
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from demon.api.app import create_app
from demon.api.auth import Auth
from demon.rpc.token import ApiToken
from tests import httpfuzz
from tests.demon.fakes import ELEPHANT, TOP, Harness, wait_for

pytestmark = pytest.mark.replay

ALICE = ApiToken("alice", "alice-secret-0123456789")
VIEWER = ApiToken("viewer", "viewer-secret-0123456789", can_write=False)
ROUTES = ["/api/v1", "/api/v1/status", "/api/v1/taps", "/api/v1/taps/{id}", "/api/v1/policies",
          "/api/v1/transitions", "/api/v1/taps/{id}/release", "/api/v1/policies/{name}/pause",
          "/api/v1/policies/{name}/resume", "/api/v1/policies/{name}/flows", "/api/v1/fabric",
          "/metrics", "/", "/dashboard/{name}"]
WRITE_ROUTES = ["/api/v1/taps", "/api/v1/taps/{id}/release", "/api/v1/policies/{name}/pause",
                "/api/v1/policies/{name}/resume"]
WORDS = ["elephant", "top", "nope", "elephant.1", "top.7", "api", "v1", "taps", "policies",
         "transitions", "index.html", "main.js", "release", "pause"]
QUERY = ["state", "policy", "since", "until", "limit", "after", "window", "top", "timeout"]
#: a long poll's timeout: refused, or a wait of at most 10 ms
SHORT_WAITS = ["", "0", "-1", "0.01", "nan", "inf", "-inf", "1e999", "61", "abc", "1e-300"]
FIELDS = ["policy", "flow", "hold", "at", "who"]
VALID = [{"policy": "elephant", "flow": "not,a,flow"}, {"policy": "nope", "flow": "x"},
         {"policy": "top", "flow": "1,2,3,4,5", "hold": "1h", "at": "1/1"},
         {"policy": "elephant", "flow": "10.9.9.9,10.9.9.8,6,1,2", "at": [0, 1]}]
DOCUMENTED_5XX = {503, 504}
#: refused before the decision core sees the request: nothing may be recorded
BEFORE_CORE = {400, 401, 403, 405, 413, 415, 422}


def never_streams(req: httpfuzz.Request) -> bool:
    return not unquote(req.path).rstrip("/").endswith("/transitions/stream")


def daemon_state(h: Harness) -> tuple[dict[str, str], tuple[str, ...]]:
    snap = h.runtime.view.snapshot()
    return {t.tap_id: t.state for t in snap.taps()}, tuple(sorted(snap.state.paused))


def unchanged_but_failed_records(before: tuple[dict[str, str], tuple[str, ...]],
                                 after: tuple[dict[str, str], tuple[str, ...]]) -> bool:
    """No tap changed state, none but failed ones appeared, no pause changed. A tap
    request the core refuses (flow without a match, no such switch) is recorded as a
    failed tap by design (``demon.core._fail_unplaced``): that record is allowed."""
    (taps, paused), (now_taps, now_paused) = before, after
    return paused == now_paused and all(now_taps.get(tap_id) == state
                                        for tap_id, state in taps.items()) and all(
        state == "failed" for tap_id, state in now_taps.items() if tap_id not in taps)


@pytest.fixture(params=["loopback", "exposed"])
def served(request: pytest.FixtureRequest, make: Callable[..., Harness],
           mock: responses.RequestsMock) -> Iterator[tuple[Harness, httpfuzz.InProcess]]:
    h = make({"elephant": ELEPHANT.format(max_taps=4), "top": TOP})
    app = create_app(h.runtime, Auth([ALICE, VIEWER], reads_need_token=request.param == "exposed"),
                     answer_timeout=5.0)
    client = httpfuzz.InProcess(app)
    # settled: started, and its own first transition (the controller is up) recorded
    wait_for(lambda: h.runtime.view.ready and any(
        t.kind == "controller_up" for t in h.runtime.view.transitions_after(0)),
        what="the daemon's start")
    yield h, client
    client.close()
    app.state.wakeup.detach()
    app.state.dashboard_detach()


def check(served: tuple[Harness, httpfuzz.InProcess], req: httpfuzz.Request) -> None:
    h, client = served
    state, last_id = daemon_state(h), h.runtime.view.last_id
    resp = client.send(req)
    httpfuzz.check_error_reply(resp, req, json_errors=True, server_errors=DOCUMENTED_5XX)
    if req.method != "GET" and resp.status_code >= 400:
        assert unchanged_but_failed_records(state, daemon_state(h)), (
            req, resp.status_code, resp.text, state, daemon_state(h))
        # the core's own answers carry its outcome (a 400 "flow: ..." among them)
        if resp.status_code in BEFORE_CORE and b'"outcome"' not in resp.content:
            assert h.runtime.view.last_id == last_id, (req, resp.status_code, resp.text)


FUZZ = settings(max_examples=150, deadline=None,
                suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
TOKENS = [ALICE.secret, VIEWER.secret]


@FUZZ
@given(req=httpfuzz.requests(ROUTES, WORDS, QUERY, FIELDS, VALID, tokens=TOKENS,
                             short_waits=SHORT_WAITS).filter(never_streams))
def test_daemon_api_answers_every_request(served: tuple[Harness, httpfuzz.InProcess],
                                          req: httpfuzz.Request) -> None:
    check(served, req)


def _not_an_ip(text: str) -> bool:
    try:
        ipaddress.ip_address(text.strip())
    except ValueError:
        return True
    return False


_ODD = st.sampled_from(["", "0", "-1", "1", "2/5", "0x1/3", "1/0", "1/", "/1", "1//1", "5m",
                        "1e999", "nan", "true", "1d", "86401", "1_0/1", " 1 / 2 "])
#: a tap request's fields one by one: the flow never one the policies could tap (its
#: source is no IP address), so that no example leaves a tap behind for the next
TAP_BODIES = st.fixed_dictionaries(
    {"policy": st.sampled_from(["elephant", "top", "nope", ""])},
    optional={"flow": st.lists(st.one_of(_ODD, st.text(max_size=10)), min_size=1,
                               max_size=6).filter(lambda parts: _not_an_ip(parts[0]))
              .map(",".join),
              "hold": st.one_of(httpfuzz.JSON, _ODD),
              "at": st.one_of(httpfuzz.JSON, _ODD, st.lists(st.one_of(
                  st.integers(-1, 2**65), st.booleans(), st.floats()), max_size=3))})


@st.composite
def writes(draw: Any) -> httpfuzz.Request:
    """Write requests, mostly with a JSON Content-Type (FastAPI reads no body without
    one) and now and then a tap request whose fields are each generated."""
    req = draw(httpfuzz.requests(WRITE_ROUTES, WORDS, QUERY, FIELDS, VALID, tokens=TOKENS,
                                 short_waits=SHORT_WAITS, methods=["POST"]))
    headers = dict(req.headers)
    if draw(st.integers(0, 3)):
        headers["Content-Type"] = "application/json"
    body, path = req.body, req.path
    if draw(st.integers(0, 2)) == 0:
        path = "/api/v1/taps"
        body = json.dumps(draw(TAP_BODIES), allow_nan=True).encode()
    return httpfuzz.Request(req.method, path, req.query, headers, body)


@FUZZ
@given(req=writes().filter(never_streams))
def test_daemon_api_writes_take_any_body(served: tuple[Harness, httpfuzz.InProcess],
                                         req: httpfuzz.Request) -> None:
    check(served, req)


@pytest.mark.parametrize("status, reply", [
    (500, None),  # an exception in a handler: the app's own 500 (JSON)
    (404, PlainTextResponse("nothing here", status_code=404)),
    (400, PlainTextResponse("", status_code=400, media_type="application/json")),
    (400, PlainTextResponse('{"error": "two\\nlines"}', status_code=400,
                            media_type="application/json"))])
def test_the_fuzz_fails_on_a_5xx_or_an_error_that_is_not_one_json_line(
        served: tuple[Harness, httpfuzz.InProcess], status: int, reply: Any) -> None:
    """The oracle above, against a route that breaks the contract: the check fails."""
    h, client = served

    def broken() -> Any:
        if reply is None:
            raise RuntimeError("a bug")
        return reply

    client.app.add_api_route("/api/v1/broken", broken, methods=["GET"])
    req = httpfuzz.Request("GET", "/api/v1/broken", "", {"Authorization": "Bearer " + ALICE.secret})
    assert client.send(req).status_code == status
    with pytest.raises(AssertionError):
        check(served, req)
