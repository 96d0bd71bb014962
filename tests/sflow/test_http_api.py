"""The HTTP API over a real socket: paths, status codes, JSON shapes, long polls."""

from __future__ import annotations

import json
import re
import threading
import time
from pathlib import Path
from typing import Iterator

import pytest
import requests

from sflow.collector import replay_pcap, send_payloads
from sflow.embedded import EmbeddedEngine

TCP = {"keys": "ipsource,ipdestination,tcpsourceport,tcpdestinationport", "value": "bytes"}
ELEPHANT = "10.0.0.1,10.0.0.2,51792,5201"


@pytest.fixture
def service() -> Iterator[EmbeddedEngine]:
    engine = EmbeddedEngine(("127.0.0.1", 0), ("127.0.0.1", 0)).start()
    yield engine
    engine.stop()


@pytest.fixture
def readonly_service() -> Iterator[EmbeddedEngine]:
    engine = EmbeddedEngine(("127.0.0.1", 0), ("127.0.0.1", 0), readonly=True).start()
    yield engine
    engine.stop()


def put(url: str, body: object, **kwargs) -> requests.Response:
    return requests.put(url, data=json.dumps(body), timeout=5, **kwargs)


def test_version_is_text(service: EmbeddedEngine) -> None:
    resp = requests.get(service.url + "/version", timeout=5)
    assert resp.status_code == 200
    assert resp.headers["Content-Type"].startswith("text/plain")
    assert re.fullmatch(r"\d+\.\d+-[\w-]+", resp.text)


def test_flow_lifecycle(service: EmbeddedEngine) -> None:
    url = service.url + "/flow/demon_tcp/json"
    # no Content-Type header at all: still JSON
    resp = requests.put(url, data=json.dumps(TCP).encode(), timeout=5,
                        headers={"Content-Type": ""})
    assert resp.status_code == 204 and resp.content == b""
    stored = requests.get(url, timeout=5).json()
    assert stored["keys"] == TCP["keys"] and stored["value"] == "bytes"
    assert stored["fs"] == "," and stored["t"] == 2 and stored["n"] == 5
    assert requests.get(service.url + "/flow/json", timeout=5).json() == {"demon_tcp": stored}
    assert requests.delete(url, timeout=5).status_code == 204
    assert requests.get(url, timeout=5).status_code == 404
    assert requests.delete(url, timeout=5).status_code == 404
    assert requests.get(service.url + "/flow/json", timeout=5).json() == {}


def test_bad_definitions_are_400_naming_the_field(service: EmbeddedEngine) -> None:
    resp = put(service.url + "/flow/bad/json", {"keys": "ipsource", "filter": "ipsource=1)"})
    assert resp.status_code == 400
    assert resp.text.strip() == "filter: unexpected ')' at 10"
    resp = requests.put(service.url + "/flow/bad/json", data=b"{nope", timeout=5)
    assert resp.status_code == 400 and resp.text.startswith("body:")
    resp = put(service.url + "/threshold/bad/json", {"value": 1})
    assert resp.status_code == 400 and resp.text.startswith("metric:")
    assert requests.get(service.url + "/flow/bad/json", timeout=5).status_code == 404
    assert requests.get(service.url + "/threshold/bad/json", timeout=5).status_code == 404


def test_threshold_lifecycle(service: EmbeddedEngine) -> None:
    url = service.url + "/threshold/demon_big/json"
    spec = {"metric": "demon_tcp", "value": 125000, "byFlow": True, "timeout": 2}
    assert put(url, spec).status_code == 204
    assert requests.get(url, timeout=5).json() == spec
    assert requests.get(service.url + "/threshold/json", timeout=5).json() == {"demon_big": spec}
    assert requests.delete(url, timeout=5).status_code == 204
    assert requests.get(url, timeout=5).status_code == 404


def test_readonly_refuses_writes(readonly_service: EmbeddedEngine) -> None:
    url = readonly_service.url
    assert put(url + "/flow/x/json", TCP).status_code == 403
    assert requests.delete(url + "/threshold/x/json", timeout=5).status_code == 403
    assert requests.get(url + "/flow/json", timeout=5).json() == {}
    assert requests.get(url + "/version", timeout=5).status_code == 200


def test_unknown_things_are_404_and_bad_parameters_400(service: EmbeddedEngine) -> None:
    url = service.url
    assert requests.get(url + "/activeflows/ALL/nope/json", timeout=5).status_code == 404
    assert requests.get(url + "/no/such/thing/json", timeout=5).status_code == 404
    assert requests.get(url + "/flow", timeout=5).status_code == 404
    assert put(url + "/flow/f/json", TCP).status_code == 204
    resp = requests.get(url + "/activeflows/ALL/f/json?aggMode=median", timeout=5)
    assert resp.status_code == 400 and resp.text.startswith("aggMode:")
    resp = requests.get(url + "/activeflows/ALL/f/json?maxFlows=many", timeout=5)
    assert resp.status_code == 400 and resp.text.startswith("maxFlows:")
    resp = requests.get(url + "/events/json?timeout=-1", timeout=5)
    assert resp.status_code == 400 and resp.text.startswith("timeout:")


def test_events_long_poll_times_out_with_empty_array(service: EmbeddedEngine) -> None:
    start = time.monotonic()
    resp = requests.get(service.url + "/events/json?eventID=-1&timeout=1", timeout=10)
    elapsed = time.monotonic() - start
    assert resp.status_code == 200 and resp.json() == []
    assert 0.9 < elapsed < 3


def test_long_poll_returns_as_soon_as_an_event_arrives(service: EmbeddedEngine,
                                                       captures_dir: Path) -> None:
    url = service.url
    assert put(url + "/flow/tcp/json", {**TCP, "t": 0.5}).status_code == 204
    assert put(url + "/threshold/big/json",
               {"metric": "tcp", "value": 12_500_000, "byFlow": True}).status_code == 204
    result: dict = {}

    def poll() -> None:
        resp = requests.get(url + "/events/json",
                            params={"eventID": -1, "timeout": 30, "maxEvents": 10,
                                    "thresholdID": "big"}, timeout=40)
        result["returned"] = time.time()
        result["events"] = resp.json()

    poller = threading.Thread(target=poll)
    poller.start()
    time.sleep(0.3)
    stop = threading.Event()
    replayer = threading.Thread(target=replay_pcap,
                                args=(captures_dir / "ovs-seed-elephant.pcap", service.sflow_address),
                                kwargs={"speed": 2.0, "stop": stop})
    replayer.start()
    poller.join(timeout=35)
    stop.set()
    replayer.join()
    events = result["events"]
    assert [e["flowKey"] for e in events] == [ELEPHANT]
    event = events[0]
    assert set(event) == {"eventID", "timestamp", "thresholdID", "metric", "agent",
                          "dataSource", "value", "threshold", "flowKey"}
    assert isinstance(event["dataSource"], str) and event["agent"] == "127.0.0.1"
    # the poll came back right after the event, long before its 30 s timeout
    assert result["returned"] - event["timestamp"] / 1000 < 1.0
    # the cursor: nothing newer than this event yet
    resp = requests.get(url + "/events/json", params={"eventID": event["eventID"]}, timeout=5)
    assert resp.json() == []


def test_monitoring_endpoints_after_replay(service: EmbeddedEngine, captures_dir: Path) -> None:
    url = service.url
    assert put(url + "/flow/tcp/json", TCP).status_code == 204
    sent = replay_pcap(captures_dir / "ovs-seed-elephant.pcap", service.sflow_address)
    send_payloads([b"not sflow at all"], service.sflow_address)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        analyzer = requests.get(url + "/analyzer/json", timeout=5).json()
        if analyzer["sFlowDatagramsReceived"] >= sent + 1:
            break
        time.sleep(0.05)
    assert analyzer["sFlowDatagramsReceived"] == sent + 1
    assert analyzer["sFlowDatagramsDropped"] == 1
    assert analyzer["sFlowDatagramsDroppedReasons"] == {"not-sflow-v5": 1}
    assert analyzer["sFlowAgents"] == 1 and analyzer["udpKernelDrops"] == 0
    assert analyzer["udpReceiveBuffer"] > 0
    agents = requests.get(url + "/agents/json", timeout=5).json()
    assert agents["127.0.0.1"]["sFlowDatagramsReceived"] == sent
    assert agents["127.0.0.1"]["sFlowDatagramsLost"] == 0
    flows = requests.get(url + "/activeflows/ALL/tcp/json?maxFlows=2", timeout=5).json()
    assert len(flows) == 2 and flows[0]["key"] == ELEPHANT
    assert set(flows[0]) == {"key", "value", "agent", "dataSource"}
    assert requests.get(url + "/activeflows/10.1.1.1/tcp/json", timeout=5).json() == []
    keys = requests.get(url + "/flowkeys/json", timeout=5).json()
    assert {"ipsource", "tcpsourceport", "inputifindex"} <= set(keys)
    portmap = requests.get(url + "/demon/portmap/json", timeout=5).json()
    s1eth1 = next(p for p in portmap if p["name"] == "s1-eth1")
    assert s1eth1["dpid"] == 1 and s1eth1["ofPort"] == 1 and s1eth1["dpidHex"] == "0000000000000001"
    assert set(s1eth1) == {"agent", "ifIndex", "dpid", "dpidHex", "ofPort", "name", "lastSeen"}
    metric = requests.get(url + "/metric/ALL/tcp/json", timeout=5).json()
    assert metric[0]["metricName"] == "tcp" and metric[0]["topKeys"][0]["key"] == ELEPHANT
    scoped = requests.get(url + "/metric/ALL/1478.tcp/json", timeout=5).json()
    assert scoped[0]["dataSource"] == "1478"


def test_stop_ends_open_connections_and_a_restart_reuses_the_ports() -> None:
    first = EmbeddedEngine(("127.0.0.1", 0), ("127.0.0.1", 0)).start()
    session = requests.Session()  # keep-alive: the connection outlives one request
    assert session.put(first.url + "/flow/f/json", data=json.dumps(TCP), timeout=5).status_code == 204
    outcome: dict = {}

    def long_poll() -> None:
        start = time.monotonic()
        try:
            outcome["body"] = requests.get(first.url + "/events/json?timeout=30", timeout=40).json()
        except requests.RequestException as exc:
            outcome["error"] = exc
        outcome["elapsed"] = time.monotonic() - start

    poller = threading.Thread(target=long_poll)
    poller.start()
    time.sleep(0.3)
    url, sflow_addr = first.url, first.sflow_address
    first.stop()
    poller.join(timeout=10)
    assert outcome["elapsed"] < 5  # the pending long poll ended with the engine
    with pytest.raises(requests.ConnectionError):
        session.get(url + "/flow/json", timeout=5)
    port = int(url.rsplit(":", 1)[1])
    second = EmbeddedEngine(sflow_addr, ("127.0.0.1", port)).start()
    try:
        assert second.url == url and second.sflow_address == sflow_addr
        assert requests.get(url + "/flow/json", timeout=5).json() == {}  # a fresh engine
    finally:
        second.stop()


def test_suspended_api_refuses_connections_and_resumes_with_its_state() -> None:
    service = EmbeddedEngine(("127.0.0.1", 0), ("127.0.0.1", 0)).start()
    try:
        url = service.url
        assert put(url + "/flow/f/json", TCP).status_code == 204
        service.suspend_http()
        with pytest.raises(requests.ConnectionError):
            requests.get(url + "/flow/json", timeout=5)
        service.resume_http()
        assert service.url == url
        assert list(requests.get(url + "/flow/json", timeout=5).json()) == ["f"]
    finally:
        service.stop()
