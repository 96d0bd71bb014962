"""The recorder: JSON-lines timeline, numbered-file form, replay with ``responses``."""

from __future__ import annotations

import http.server
import json
import socket
import threading
from pathlib import Path
from typing import Any, Iterator
from urllib.parse import parse_qs, urlsplit

import pytest
import responses

from sflow.client import EngineUnreachable, EventStream, SFlowRTClient
from sflow.recorder import (
    Exchange,
    Recorder,
    load_recording,
    main,
    record,
    register_recording,
    write_split,
)

FLOW = {"keys": "ipsource,ipdestination", "value": "bytes", "fs": "_SEP_", "t": 2}
ACTIVE = [{"key": "10.0.0.1_SEP_10.0.0.2", "value": 2.5e7, "agent": "127.0.0.1",
           "dataSource": "1478"}]
PORTS = [{"agent": "127.0.0.1", "ifIndex": 1478, "dpid": 1, "dpidHex": "0000000000000001",
          "ofPort": 1, "name": "s1-eth1", "lastSeen": 500}]


def _event(event_id: int) -> dict[str, Any]:
    return {"eventID": event_id, "timestamp": 1_764_000_000_000 + event_id,
            "thresholdID": "elephant", "metric": "pairs", "agent": "127.0.0.1",
            "dataSource": "1478", "value": 2.5e7, "threshold": 125000,
            "flowKey": "10.0.0.1_SEP_10.0.0.2"}


class _Engine(http.server.BaseHTTPRequestHandler):
    """A scripted engine: events 1..3 exist; newer ones never come."""

    def do_GET(self) -> None:  # noqa: N802 (http.server API)
        url = urlsplit(self.path)
        query = {k: v[0] for k, v in parse_qs(url.query).items()}
        if url.path == "/flow/pairs/json":
            self._json(FLOW)
        elif url.path == "/activeflows/ALL/pairs/json":
            self._json(ACTIVE)
        elif url.path == "/demon/portmap/json":
            self._json(PORTS)
        elif url.path == "/events/json":
            after = int(query.get("eventID", "-1"))
            self._json([_event(i) for i in (3, 2, 1) if i > after])
        elif url.path == "/version":
            body = b"3.0-1702"
            self.send_response(200)
            self.send_header("Content-Type", "text/plain")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
        else:
            self._json({"error": "no such page"}, 404)

    def _json(self, obj: Any, status: int = 200) -> None:
        body = json.dumps(obj).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def engine_url() -> Iterator[str]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Engine)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_record_writes_a_timeline(engine_url: str, tmp_path: Path) -> None:
    out = tmp_path / "run.jsonl"
    count = record(engine_url, "pairs", "elephant", duration=1.2, out=out, interval=0.5)
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(lines) == count
    assert all({"t", "method", "path", "query", "status", "body"} <= set(obj) for obj in lines)
    assert [obj["t"] for obj in lines] == sorted(obj["t"] for obj in lines)
    paths = [obj["path"] for obj in lines]
    assert paths[0] == "/demon/portmap/json" and paths[-1] == "/demon/portmap/json"
    assert paths.count("/activeflows/ALL/pairs/json") >= 2
    first_events = next(obj for obj in lines if obj["path"] == "/events/json")
    assert first_events["query"]["eventID"] == "-1"
    assert first_events["query"]["thresholdID"] == "elephant"
    assert [e["eventID"] for e in first_events["body"]] == [3, 2, 1]  # as the engine said
    assert next(obj for obj in lines if obj["path"].startswith("/activeflows"))["body"] == ACTIVE


def test_replayed_recording_answers_like_the_engine(engine_url: str, tmp_path: Path) -> None:
    recorder = Recorder(tmp_path / "session.jsonl")
    live = SFlowRTClient(engine_url, session=recorder.session(engine_url))
    expected = (live.version(), live.activeflows("pairs"), live.events(), live.port_map(),
                live.get_flow("nope"))
    recorder.close()
    entries = load_recording(tmp_path / "session.jsonl")
    assert [(e.method, e.path, e.status) for e in entries] == [
        ("GET", "/version", 200), ("GET", "/flow/pairs/json", 200),
        ("GET", "/activeflows/ALL/pairs/json", 200), ("GET", "/events/json", 200),
        ("GET", "/demon/portmap/json", 200), ("GET", "/flow/nope/json", 404)]
    with responses.RequestsMock() as mock:
        register_recording(mock, entries, "http://replayed:8008")
        replayed = SFlowRTClient("http://replayed:8008")
        assert (replayed.version(), replayed.activeflows("pairs"), replayed.events(),
                replayed.port_map(), replayed.get_flow("nope")) == expected


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_failures_are_recorded_and_replayed(tmp_path: Path) -> None:
    url = f"http://127.0.0.1:{_closed_port()}"
    recorder = Recorder()
    client = SFlowRTClient(url, retries=1, backoff=0, session=recorder.session(url))
    with pytest.raises(EngineUnreachable):
        client.events()
    assert [(e.path, e.error) for e in recorder.entries] == [("/events/json", "ConnectionError")] * 2
    write_split(recorder.entries, tmp_path / "scenario")
    assert sorted(p.name for p in (tmp_path / "scenario").iterdir()) == [
        "001-GET-events.json", "002-GET-events.json"]
    with responses.RequestsMock() as mock:
        register_recording(mock, load_recording(tmp_path / "scenario"), url)
        with pytest.raises(EngineUnreachable):
            SFlowRTClient(url, retries=1, backoff=0).events()


def test_successive_polls_are_served_in_order() -> None:
    base = "http://replayed:8008"
    query = {"eventID": "-1", "maxEvents": "100", "timeout": "0"}
    entries = [Exchange(t=1.0, path="/events/json", query=query, status=200,
                        body=[_event(1)], content_type="application/json"),
               Exchange(t=2.0, path="/events/json", query=query, error="ConnectionError",
                        message="refused"),
               Exchange(t=3.0, path="/events/json", query=query, status=200,
                        body=[_event(2), _event(1)], content_type="application/json")]
    with responses.RequestsMock() as mock:
        register_recording(mock, entries, base)
        client = SFlowRTClient(base, retries=0)
        assert [e.event_id for e in client.events()] == [1]
        with pytest.raises(EngineUnreachable):
            client.events()
        assert [e.event_id for e in client.events()] == [1, 2]


def test_put_bodies_must_match_the_recording() -> None:
    base = "http://replayed:8008"
    entries = [Exchange(t=1.0, method="PUT", path="/flow/pairs/json", request=FLOW, status=204)]
    with responses.RequestsMock(assert_all_requests_are_fired=False) as mock:
        register_recording(mock, entries, base)
        client = SFlowRTClient(base, retries=0)
        client.define_flow("pairs", FLOW)
        with pytest.raises(EngineUnreachable):  # responses: no match for another body
            client.define_flow("pairs", {**FLOW, "t": 10})


def test_stream_over_a_recording(engine_url: str) -> None:
    recorder = Recorder()
    live = EventStream(SFlowRTClient(engine_url, session=recorder.session(engine_url)),
                       poll_timeout=0)
    assert [e.event_id for e in live.poll()] == [1, 2, 3]
    assert live.poll() == []
    with responses.RequestsMock() as mock:
        register_recording(mock, recorder.entries, "http://replayed:8008")
        replay = EventStream(SFlowRTClient("http://replayed:8008"), poll_timeout=0)
        assert [e.event_id for e in replay.poll()] == [1, 2, 3]
        assert replay.poll() == []


def test_bad_recordings_name_the_line_and_field(tmp_path: Path) -> None:
    path = tmp_path / "bad.jsonl"
    path.write_text('{"t": 1, "path": "/version", "status": 200, "body": "3.0-1"}\n'
                    '{"t": 2, "path": "/events/json"}\n')
    with pytest.raises(ValueError, match=r"bad.jsonl:2: field 'status'"):
        load_recording(path)
    path.write_text('{"t": 1, "path": "version", "status": 200}\n')
    with pytest.raises(ValueError, match=r"bad.jsonl:1: field 'path'"):
        load_recording(path)
    path.write_text('{"t": 1, "path": "/x", "error": "Boom"}\n')
    with pytest.raises(ValueError, match="field 'error'"):
        load_recording(path)


def test_cli_records(engine_url: str, tmp_path: Path) -> None:
    out = tmp_path / "cli.jsonl"
    assert main(["--url", engine_url, "--flow", "pairs", "--threshold", "elephant",
                 "--duration", "0.5", "--interval", "0.5", "--out", str(out),
                 "--split", str(tmp_path / "split")]) == 0
    entries = load_recording(out)
    assert entries and [e.to_json() for e in load_recording(tmp_path / "split")] == \
        [e.to_json() for e in entries]
    with pytest.raises(SystemExit):
        main(["--url", engine_url, "--flow", "pairs", "--duration", "-1", "--out", str(out)])
