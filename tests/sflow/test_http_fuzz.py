"""The embedded engine's HTTP API under generated requests (hypothesis, in the normal
test run; issue 14 asks that the HTTP parsers stay fuzzed in CI).

Generated methods, paths, query strings, headers and bodies (JSON and not) go to
the Starlette app in-process (``tests/httpfuzz.py``), an engine holding flows,
thresholds, a group, a map, a topology and (when ``../shared`` is there) the OVS
capture's samples. Whatever comes in: never a 5xx but the documented 503 (engine
busy), every error a ``text/plain`` one-liner (docs/engine-api.md), and a refused
write leaves the engine's definitions, groups, maps and topology as they were.
"""

from __future__ import annotations

from typing import Any, Iterator

import pytest
from hypothesis import HealthCheck, given, settings

from sflow.engine import Engine
from sflow.httpapi import EngineAPI
from sflow.pcap import read_udp
from tests import httpfuzz

from ..conftest import shared_path

CAPTURE = shared_path() / "captures" / "ovs-seed-elephant.pcap"
TOKEN = "fuzz-token-0123456789abcdef"
TCP = {"keys": "ipsource,ipdestination,tcpsourceport,tcpdestinationport", "value": "bytes"}
ROUTES = ["/version", "/flow/json", "/flow/{name}/json", "/threshold/json",
          "/threshold/{name}/json", "/events/json", "/activeflows/{agent}/{name}/json",
          "/metric/{agent}/{metrics}/json", "/metric/{agent}/json", "/metrics/json",
          "/dump/{agent}/{metrics}/json", "/table/{agent}/{metrics}/json",
          "/flowvalue/{agent}/{name}/json", "/flowlocations/{agent}/{name}/json", "/flows/json",
          "/prometheus/metrics/{agent}/{metrics}/txt", "/prometheus/analyzer/txt", "/metrics",
          "/agents/json", "/flowkeys/json", "/analyzer/json", "/demon/portmap/json",
          "/topology/json", "/group/json", "/group/{name}/json", "/map/json", "/map/{name}/json"]
#: the routes that take a body
BODY_ROUTES = ["/flow/{name}/json", "/threshold/{name}/json", "/topology/json",
               "/group/{name}/json", "/map/{name}/json"]
WORDS = ["tcp", "big", "g", "m", "ALL", "TOPOLOGY", "EDGE", "CORE", "127.0.0.1", "ifinoctets",
         "max:ifinutilization", "tcp,ifinoctets", "1478.tcp", "ALL;ALL", "ifname,ifindex"]
QUERY = ["eventID", "maxEvents", "thresholdID", "aggMode", "maxFlows", "minValue", "filter",
         "flowID", "name", "key", "agent", "ifspeed", "timeout"]
FIELDS = ["keys", "value", "filter", "t", "n", "fs", "log", "flowStart", "activeTimeout",
          "metric", "byFlow", "timeout", "external", "cidr", "nodes", "links", "ipsource"]
VALID = [TCP, {"metric": "tcp", "value": 100}, {"external": ["10.0.0.0/8"]},
         {"nodes": {}, "links": {}}, {"keys": "group:ipsource:g", "filter": "ipsource~10\\..*"}]
WRITES = {"PUT", "POST", "DELETE"}


def engine_state(api: EngineAPI) -> dict[str, Any]:
    """What a write can change: definitions, groups, maps, topology."""
    with api.engine.lock:
        flows = {k: v.to_json() for k, v in api.engine.flows().items()}
        thresholds = {k: v.to_json() for k, v in api.engine.thresholds().items()}
    return {"flows": flows, "thresholds": thresholds,
            "groups": {k: g.body for k, g in api.groups.items()},
            "maps": {k: m.body for k, m in api.maps.items()},
            "topology": api.topology.body if api.topology is not None else None}


@pytest.fixture(scope="module", params=["loopback", "token"])
def served(request: pytest.FixtureRequest) -> Iterator[tuple[EngineAPI, httpfuzz.InProcess]]:
    """The app as served on loopback (writes open) and beyond it (writes need TOKEN)."""
    from sflow.auth import Tokens

    engine = Engine()
    now = 0.0
    if CAPTURE.exists():
        for n, udp in enumerate(read_udp(CAPTURE)):
            engine.receive(udp.payload, udp.timestamp, "127.0.0.1")
            now = udp.timestamp
            if n >= 400:
                break
    tokens = Tokens({"fuzz": TOKEN}) if request.param == "token" else None
    api = EngineAPI(engine, clock=lambda: now, tokens=tokens)
    client = httpfuzz.InProcess(api.app)
    auth = {"Authorization": f"Bearer {TOKEN}"}
    for path, body in [("/flow/tcp/json", TCP), ("/threshold/big/json", VALID[1]),
                       ("/group/g/json", VALID[2]), ("/map/m/json", {"a": ["x", "y"]}),
                       ("/topology/json", {"nodes": {}, "links": {}})]:
        assert client.request("PUT", path, json=body, headers=auth).status_code == 204, path
    yield api, client
    client.close()


def check(served: tuple[EngineAPI, httpfuzz.InProcess], req: httpfuzz.Request) -> None:
    api, client = served
    before = engine_state(api)
    resp = client.send(req)
    httpfuzz.check_error_reply(resp, req, json_errors=False, server_errors={503})
    if req.method in WRITES and resp.status_code >= 400:
        assert engine_state(api) == before, (req, resp.status_code, resp.text)


FUZZ = settings(max_examples=250, deadline=None,
                suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])


@FUZZ
@given(req=httpfuzz.requests(ROUTES, WORDS, QUERY, FIELDS, VALID, tokens=[TOKEN]))
def test_engine_api_answers_every_request(served: tuple[EngineAPI, httpfuzz.InProcess],
                                          req: httpfuzz.Request) -> None:
    check(served, req)


@FUZZ
@given(req=httpfuzz.requests(BODY_ROUTES, WORDS, QUERY, FIELDS, VALID, tokens=[TOKEN],
                             methods=sorted(WRITES)))
def test_engine_api_writes_take_any_body(served: tuple[EngineAPI, httpfuzz.InProcess],
                                         req: httpfuzz.Request) -> None:
    check(served, req)


@pytest.mark.parametrize("method, path, body", [
    ("PUT", "/flow/tcp2/json", b'{"\\n": null}'),  # an unknown attribute named "\n" (fuzz)
    ("GET", "/nothing%0Ahere", b""),
    ("PATCH", "/flow/tcp/json%0A", b"")])
def test_an_error_echoing_a_control_character_stays_one_line(
        served: tuple[EngineAPI, httpfuzz.InProcess], method: str, path: str,
        body: bytes) -> None:
    api, client = served
    resp = client.request(method, path, content=body,
                          headers={"Authorization": f"Bearer {TOKEN}"})
    assert 400 <= resp.status_code < 500, resp.text
    assert resp.text.endswith("\n") and "\n" not in resp.text[:-1], resp.text
    if body:
        assert "\\x0a" in resp.text, resp.text  # the odd name shown, escaped
