"""SFlowRTClient and EventStream behaviour against scripted answers (no engine)."""

from __future__ import annotations

import http.server
import json
import threading
import time
from typing import Any, Iterator

import pytest
import requests
import responses
from responses import matchers

from sflow.client import (
    BadResponse,
    EngineUnreachable,
    EventStream,
    NotFound,
    ReadOnly,
    Rejected,
    ServerError,
    SFlowRTClient,
    Unsupported,
)

URL = "http://engine.test:8008"


def event(event_id: int, key: str = "10.0.0.1,10.0.0.2,51792,5201", ts: int = 1_764_000_000_000,
          threshold: str = "demon_elephant") -> dict[str, Any]:
    return {"eventID": event_id, "timestamp": ts + event_id, "thresholdID": threshold,
            "metric": "demon_tcp", "agent": "127.0.0.1", "dataSource": "1478",
            "value": 2.5e7, "threshold": 1.25e6, "flowKey": key}


def events_query(event_id: int, max_events: int = 100, timeout: str = "0",
                 threshold: str | None = "demon_elephant") -> Any:
    query = {"eventID": str(event_id), "maxEvents": str(max_events), "timeout": timeout}
    if threshold:
        query["thresholdID"] = threshold
    return [matchers.query_param_matcher(query)]


@pytest.fixture
def sleeps() -> list[float]:
    return []


@pytest.fixture
def client(sleeps: list[float]) -> SFlowRTClient:
    return SFlowRTClient(URL, retries=2, backoff=0.2, sleep=sleeps.append)


@responses.activate
def test_connection_errors_are_retried_with_exponential_backoff(client: SFlowRTClient,
                                                                 sleeps: list[float]) -> None:
    responses.add("GET", URL + "/version", body=requests.ConnectionError("refused"))
    responses.add("GET", URL + "/version", body=requests.ConnectionError("refused"))
    responses.add("GET", URL + "/version", body="3.0-1702", content_type="text/plain")
    assert client.version() == "3.0-1702"
    assert sleeps == [pytest.approx(0.2), pytest.approx(0.4)]


@responses.activate
def test_unreachable_after_all_retries(client: SFlowRTClient, sleeps: list[float]) -> None:
    responses.add("GET", URL + "/agents/json", body=requests.ConnectionError("refused"))
    with pytest.raises(EngineUnreachable, match="after 3 attempt"):
        client.agents()
    assert len(responses.calls) == 3


@responses.activate
def test_5xx_retried_then_server_error(client: SFlowRTClient) -> None:
    responses.add("GET", URL + "/flow/json", status=503, body="busy")
    with pytest.raises(ServerError) as info:
        client.flows()
    assert info.value.status == 503
    assert len(responses.calls) == 3


@responses.activate
def test_5xx_then_success(client: SFlowRTClient) -> None:
    responses.add("PUT", URL + "/flow/demon_tcp/json", status=500)
    responses.add("PUT", URL + "/flow/demon_tcp/json", status=204)
    client.define_flow("demon_tcp", {"keys": "ipsource", "value": "bytes"})
    assert len(responses.calls) == 2


@responses.activate
def test_400_rejected_with_server_message_not_retried(client: SFlowRTClient) -> None:
    responses.add("PUT", URL + "/flow/bad/json", status=400, body="unknown key: ipsourze",
                  content_type="text/plain")
    with pytest.raises(Rejected) as info:
        client.define_flow("bad", {"keys": "ipsourze", "value": "bytes"})
    assert info.value.message == "unknown key: ipsourze"
    assert len(responses.calls) == 1


@responses.activate
def test_400_json_error_message(client: SFlowRTClient) -> None:
    responses.add("PUT", URL + "/threshold/t/json", status=400, json={"error": "metric required"})
    with pytest.raises(Rejected, match="metric required"):
        client.define_threshold("t", {"value": 1})


@responses.activate
def test_403_read_only(client: SFlowRTClient) -> None:
    responses.add("PUT", URL + "/flow/f/json", status=403)
    responses.add("DELETE", URL + "/threshold/t/json", status=403)
    with pytest.raises(ReadOnly):
        client.define_flow("f", {"value": "bytes"})
    with pytest.raises(ReadOnly):
        client.delete_threshold("t")


@responses.activate
def test_404_absent_is_none_and_delete_is_quiet(client: SFlowRTClient) -> None:
    responses.add("GET", URL + "/flow/nope/json", status=404)
    responses.add("GET", URL + "/threshold/nope/json", status=404)
    responses.add("DELETE", URL + "/flow/nope/json", status=404)
    assert client.get_flow("nope") is None
    assert client.get_threshold("nope") is None
    client.delete_flow("nope")


@responses.activate
def test_activeflows_of_undefined_flow_is_not_found(client: SFlowRTClient) -> None:
    responses.add("GET", URL + "/flow/nope/json", status=404)
    with pytest.raises(NotFound, match="nope"):
        client.activeflows("nope")


@responses.activate
def test_bad_bodies(client: SFlowRTClient) -> None:
    responses.add("GET", URL + "/agents/json", body="<html>oops</html>")
    responses.add("GET", URL + "/flow/json", json=[1, 2])
    responses.add("GET", URL + "/events/json", json=[{"eventID": "x"}])
    with pytest.raises(BadResponse, match="not JSON"):
        client.agents()
    with pytest.raises(BadResponse, match="expected an object"):
        client.flows()
    with pytest.raises(BadResponse, match="eventID"):
        client.events()


def test_bad_arguments_name_the_field() -> None:
    with pytest.raises(ValueError, match="base_url"):
        SFlowRTClient("engine:8008")
    client = SFlowRTClient(URL)
    with pytest.raises(ValueError, match="flow name"):
        client.define_flow("a/b", {})
    with pytest.raises(ValueError, match="threshold spec"):
        client.define_threshold("t", "metric=tcp")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="max_events"):
        EventStream(client, max_events=0)


@responses.activate
def test_activeflows_split_keys_on_flow_separator(client: SFlowRTClient) -> None:
    responses.add("GET", URL + "/flow/pairs/json",
                  json={"keys": "ipsource,ipdestination", "value": "bytes", "fs": "_SEP_"})
    responses.add("GET", URL + "/activeflows/ALL/pairs/json",
                  match=[matchers.query_param_matcher({"maxFlows": "5", "minValue": "1.0",
                                                       "aggMode": "edge"})],
                  json=[{"key": "10.0.0.1_SEP_10.0.0.2", "value": 25e6, "agent": "127.0.0.1",
                         "dataSource": "1478"},
                        {"key": "10.0.0.6_SEP_10.0.0.7", "value": 2.5e6, "agent": "127.0.0.1",
                         "dataSource": 1483}])
    flows = client.activeflows("pairs", max_flows=5, min_value=1.0, agg_mode="edge")
    assert [f.keys for f in flows] == [["10.0.0.1", "10.0.0.2"], ["10.0.0.6", "10.0.0.7"]]
    assert flows[1].data_source == "1483"
    # the separator is now known: a second call does not fetch the definition again
    client.activeflows("pairs", max_flows=5, min_value=1.0, agg_mode="edge")
    assert [c.request.url.split("?")[0] for c in responses.calls].count(URL + "/flow/pairs/json") == 1


@responses.activate
def test_events_are_returned_oldest_first(client: SFlowRTClient) -> None:
    responses.add("GET", URL + "/events/json", match=events_query(-1),
                  json=[event(3), event(2), event(1)])
    got = client.events(threshold_id="demon_elephant")
    assert [e.event_id for e in got] == [1, 2, 3]
    assert got[0].flow_key == "10.0.0.1,10.0.0.2,51792,5201"
    assert got[0].data_source == "1478" and got[0].threshold == 1.25e6


class _SlowEvents(http.server.BaseHTTPRequestHandler):
    delay = 1.0

    def do_GET(self) -> None:  # noqa: N802 (http.server API)
        time.sleep(self.delay)
        body = json.dumps([event(1)]).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        try:
            self.wfile.write(body)
        except BrokenPipeError:  # the client gave up first: that is the point
            pass

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def slow_server() -> Iterator[str]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _SlowEvents)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_long_poll_read_timeout_covers_the_server_wait(slow_server: str) -> None:
    client = SFlowRTClient(slow_server, timeout=0.3, retries=0)
    # the server holds the poll 1 s, longer than the ordinary timeout: still answered
    assert [e.event_id for e in client.events(timeout=1)] == [1]
    # an ordinary call with the same delay times out and says the engine is unreachable
    with pytest.raises(EngineUnreachable, match="Timeout"):
        client.agents()


@responses.activate
def test_stream_resumes_after_errors_without_loss_or_duplicates(client: SFlowRTClient) -> None:
    stream = EventStream(client, threshold_id="demon_elephant", poll_timeout=0)
    responses.add("GET", URL + "/events/json", match=events_query(-1), json=[event(2), event(1)])
    for _attempt in range(3):  # the first poll and both retries are refused
        responses.add("GET", URL + "/events/json", match=events_query(2),
                      body=requests.ConnectionError("refused"))
    # after the outage: verify the cursor (event 2 is still event 2), then resume from it
    responses.add("GET", URL + "/events/json", match=events_query(1),
                  json=[event(4), event(3), event(2)])
    responses.add("GET", URL + "/events/json", match=events_query(2), json=[event(4), event(3)])
    assert [e.event_id for e in stream.poll()] == [1, 2]
    with pytest.raises(EngineUnreachable):
        stream.poll()
    assert stream.last_event_id == 2
    assert [e.event_id for e in stream.poll()] == [3, 4]
    assert stream.last_event_id == 4 and stream.restarts == 0


@responses.activate
def test_stream_drops_events_at_or_below_cursor(client: SFlowRTClient) -> None:
    stream = EventStream(client, threshold_id=None, poll_timeout=0)
    responses.add("GET", URL + "/events/json", match=events_query(-1, threshold=None),
                  json=[event(5), event(4)])
    responses.add("GET", URL + "/events/json", match=events_query(5, threshold=None),
                  json=[event(6), event(5), event(4)])  # a sloppy engine repeats old ones
    assert [e.event_id for e in stream.poll()] == [4, 5]
    assert [e.event_id for e in stream.poll()] == [6]


@responses.activate
def test_stream_detects_restart_behind_a_persisted_cursor(client: SFlowRTClient) -> None:
    restarted: list[int] = []
    stream = EventStream(client, threshold_id="demon_elephant", poll_timeout=0,
                         on_restart=lambda: restarted.append(stream.last_event_id))
    stream.last_event_id = 40  # persisted by the daemon; the engine restarted meanwhile
    responses.add("GET", URL + "/events/json", match=events_query(39), json=[])
    responses.add("GET", URL + "/events/json", match=events_query(-1), json=[event(2), event(1)])
    assert [e.event_id for e in stream.poll()] == [1, 2]
    assert stream.restarts == 1 and stream.last_event_id == 2
    assert restarted == [-1]


@responses.activate
def test_stream_detects_restart_that_reused_the_cursor_id(client: SFlowRTClient) -> None:
    stream = EventStream(client, threshold_id="demon_elephant", poll_timeout=0)
    other = event(2, key="10.0.0.6,10.0.0.7,59816,5202", ts=1_764_000_100_000)
    responses.add("GET", URL + "/events/json", match=events_query(-1), json=[event(2), event(1)])
    for _attempt in range(3):
        responses.add("GET", URL + "/events/json", match=events_query(2),
                      body=requests.ConnectionError("refused"))
    # the new engine has its own events 1..3: its event 2 is another event
    new_engine = [event(3, ts=1_764_000_100_000), other, event(1, ts=1_764_000_100_000)]
    responses.add("GET", URL + "/events/json", match=events_query(1), json=new_engine[:2])
    responses.add("GET", URL + "/events/json", match=events_query(-1), json=new_engine)
    assert [e.event_id for e in stream.poll()] == [1, 2]
    with pytest.raises(EngineUnreachable):
        stream.poll()
    again = stream.poll()
    assert [e.event_id for e in again] == [1, 2, 3]
    assert again[1].flow_key == "10.0.0.6,10.0.0.7,59816,5202"
    assert stream.restarts == 1


@responses.activate
def test_stream_verifies_after_empty_poll_and_keeps_cursor(client: SFlowRTClient) -> None:
    stream = EventStream(client, threshold_id="demon_elephant", poll_timeout=0)
    responses.add("GET", URL + "/events/json", match=events_query(-1), json=[event(1)])
    responses.add("GET", URL + "/events/json", match=events_query(1), json=[])
    responses.add("GET", URL + "/events/json", match=events_query(1), json=[event(2)])
    responses.add("GET", URL + "/events/json", match=events_query(0), json=[event(1)])
    assert len(stream.poll()) == 1
    assert stream.poll() == []
    assert [e.event_id for e in stream.poll()] == [2]
    assert stream.restarts == 0 and stream.last_event_id == 2


@responses.activate
def test_stream_sees_restart_between_polls_at_next_empty_poll(client: SFlowRTClient) -> None:
    stream = EventStream(client, threshold_id="demon_elephant", poll_timeout=0)
    responses.add("GET", URL + "/events/json", match=events_query(-1), json=[event(3), event(2)])
    responses.add("GET", URL + "/events/json", match=events_query(3), json=[])
    responses.add("GET", URL + "/events/json", match=events_query(2), json=[])  # 3 is gone
    responses.add("GET", URL + "/events/json", match=events_query(-1), json=[event(1)])
    assert len(stream.poll()) == 2
    assert stream.poll() == []
    assert [e.event_id for e in stream.poll()] == [1]
    assert stream.restarts == 1
@responses.activate
def test_port_map_from_engine(client: SFlowRTClient) -> None:
    responses.add("GET", URL + "/demon/portmap/json", json=[
        {"agent": "127.0.0.1", "ifIndex": 1478, "dpid": 1, "dpidHex": "0000000000000001",
         "ofPort": 1, "name": "s1-eth1", "lastSeen": 120}])
    (entry,) = client.port_map()
    assert (entry.agent, entry.if_index, entry.dpid, entry.of_port, entry.name) == \
        ("127.0.0.1", 1478, 1, 1, "s1-eth1")
    assert entry.dpid_hex == "0000000000000001" and entry.last_seen_ms == 120


@responses.activate
def test_port_map_falls_back_to_topology(client: SFlowRTClient) -> None:
    responses.add("GET", URL + "/demon/portmap/json", status=404)
    responses.add("GET", URL + "/topology/json", json={"nodes": {
        "s1": {"agent": "10.0.2.15", "dpid": "0000000000000001",
               "ports": {"s1-eth1": {"ifindex": "417", "ofport": "1"},
                         "s1-eth2": {"ifindex": "419"}, "s1-eth9": {}}}}})
    entries = sorted(client.port_map(), key=lambda e: e.if_index)
    assert [(e.if_index, e.dpid, e.of_port, e.name) for e in entries] == \
        [(417, 1, 1, "s1-eth1"), (419, 1, None, "s1-eth2")]


@responses.activate
def test_port_map_unsupported_without_ifindexes(client: SFlowRTClient) -> None:
    responses.add("GET", URL + "/demon/portmap/json", status=404)
    responses.add("GET", URL + "/topology/json", json={"links": {}, "nodes": {"s1": {"agent": "a"}}})
    with pytest.raises(Unsupported, match="ifindex"):
        client.port_map()


def test_port_map_entries_compare_by_location_not_age() -> None:
    from sflow.client import parse_port_map_entry

    base = {"agent": "127.0.0.1", "ifIndex": 1478, "dpid": 1, "ofPort": 1, "name": "s1-eth1"}
    assert parse_port_map_entry({**base, "lastSeen": 10}) == \
        parse_port_map_entry({**base, "lastSeen": 2000})
    assert parse_port_map_entry(base) != parse_port_map_entry({**base, "ofPort": 2})


@responses.activate
def test_activeflows_of_a_flow_the_engine_forgot_is_not_found(client: SFlowRTClient) -> None:
    # defined earlier (separator cached), then the engine restarted and lost it
    responses.add("PUT", URL + "/flow/demon_tcp/json", status=204)
    responses.add("GET", URL + "/activeflows/ALL/demon_tcp/json", status=404)
    client.define_flow("demon_tcp", {"keys": "ipsource", "value": "bytes"})
    with pytest.raises(NotFound, match="demon_tcp"):
        client.activeflows("demon_tcp")
