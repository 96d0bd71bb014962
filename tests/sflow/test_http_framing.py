"""HTTP framing and hostile input against the live API: chunked bodies, truncated bodies,
malformed requests (400, never 500), methods, timeouts, tokens, a busy engine lock."""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import threading
import time
from pathlib import Path
from typing import Iterator
from urllib.parse import urlsplit

import pytest
import requests

from sflow.auth import Tokens
from sflow.embedded import EmbeddedEngine
from sflow.engine import Engine
from sflow.httpapi import EngineAPI
from sflow.webserve import BackgroundServer

TCP = {"keys": "ipsource,ipdestination,tcpsourceport,tcpdestinationport", "value": "bytes",
       "filter": "direction=ingress", "t": 2}
TOPOLOGY = {"nodes": {"s1": {"agent": "127.0.0.1", "ports": {"s1-eth1": {"ifindex": "1478"}}}},
            "links": {}}


@pytest.fixture
def service() -> Iterator[EmbeddedEngine]:
    engine = EmbeddedEngine(("127.0.0.1", 0), ("127.0.0.1", 0)).start()
    yield engine
    engine.stop()


def _address(url: str) -> tuple[str, int]:
    parts = urlsplit(url)
    return parts.hostname or "127.0.0.1", int(parts.port or 80)


def raw_exchange(url: str, data: bytes, half_close: bool = False, timeout: float = 5) -> bytes:
    """Send raw bytes on one connection; everything the server answered until it closed
    or went quiet."""
    with socket.create_connection(_address(url), timeout=timeout) as sock:
        sock.sendall(data)
        if half_close:
            sock.shutdown(socket.SHUT_WR)
        chunks = []
        sock.settimeout(1.0)
        try:
            while True:
                chunk = sock.recv(65536)
                if not chunk:
                    break
                chunks.append(chunk)
        except socket.timeout:
            pass
    return b"".join(chunks)


def chunked(body: bytes, pieces: int = 3) -> bytes:
    step = max(1, len(body) // pieces)
    out = b""
    for i in range(0, len(body), step):
        part = body[i:i + step]
        out += f"{len(part):x}\r\n".encode() + part + b"\r\n"
    return out + b"0\r\n\r\n"


def test_chunked_and_content_length_puts_give_the_same_result(service: EmbeddedEngine) -> None:
    body = json.dumps(TCP).encode()
    host = "Host: x\r\n"
    answer = raw_exchange(service.url, b"PUT /flow/by_length/json HTTP/1.1\r\n" + host.encode()
                          + f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n".encode()
                          + body)
    assert answer.startswith(b"HTTP/1.1 204")
    # Node.js's http.request + req.write(JSON.stringify(x)): Transfer-Encoding: chunked,
    # here in three chunks, then a second request on the same connection
    second = b"GET /flow/by_chunks/json HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    answer = raw_exchange(service.url, b"PUT /flow/by_chunks/json HTTP/1.1\r\nHost: x\r\n"
                          b"Content-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n"
                          + chunked(body) + second)
    first, _, rest = answer.partition(b"\r\n\r\n")
    assert first.startswith(b"HTTP/1.1 204"), answer
    assert rest.startswith(b"HTTP/1.1 200"), answer  # the next request, not a leftover chunk
    flows = requests.get(service.url + "/flow/json", timeout=5).json()
    assert flows["by_length"] == flows["by_chunks"]
    assert flows["by_chunks"]["filter"] == "direction=ingress"


def test_node_js_client_put_is_read(service: EmbeddedEngine) -> None:
    """A real Node.js client (its http module, as InMon's node.js examples use it)."""
    node = shutil.which("node") or shutil.which("nodejs")
    if node is None:
        pytest.skip("node is not installed")
    host, port = _address(service.url)
    script = f"""
const http = require('http');
function req(method, path, body, done) {{
  const r = http.request({{host: '{host}', port: {port}, path: path, method: method,
                          headers: {{'Content-Type': 'application/json'}}}}, (res) => {{
    let data = ''; res.on('data', (c) => data += c);
    res.on('end', () => done(res.statusCode, res.headers, data));
  }});
  if (body !== null) r.write(JSON.stringify(body));   // no Content-Length: chunked
  r.end();
}}
req('PUT', '/flow/node_tcp/json', {json.dumps(TCP)}, (status, headers) => {{
  req('PUT', '/topology/json', {json.dumps(TOPOLOGY)}, (status2) => {{
    req('GET', '/flow/node_tcp/json', null, (status3, h3, data) => {{
      console.log(JSON.stringify({{put: status, topo: status2, get: status3, body: JSON.parse(data)}}));
    }});
  }});
}});
"""
    result = subprocess.run([node, "-e", script], capture_output=True, text=True, timeout=30)
    assert result.returncode == 0, result.stderr
    out = json.loads(result.stdout)
    assert out["put"] == 204 and out["topo"] == 204 and out["get"] == 200
    assert out["body"]["keys"] == TCP["keys"]
    assert requests.get(service.url + "/topology/json", timeout=5).json() == TOPOLOGY


def test_truncated_body_is_never_applied(service: EmbeddedEngine) -> None:
    body = json.dumps(TCP).encode()
    for cut in (len(body) // 2, len(body) - 1):
        raw_exchange(service.url, b"PUT /flow/cut/json HTTP/1.1\r\nHost: x\r\n"
                     + f"Content-Length: {len(body)}\r\n\r\n".encode() + body[:cut],
                     half_close=True)
        # a chunked body whose terminating chunk never comes
        raw_exchange(service.url, b"PUT /flow/cut2/json HTTP/1.1\r\nHost: x\r\n"
                     b"Transfer-Encoding: chunked\r\n\r\n" + chunked(body)[:cut], half_close=True)
    flows = requests.get(service.url + "/flow/json", timeout=5).json()
    assert "cut" not in flows and "cut2" not in flows


MALFORMED = [
    ("PUT", "/flow/x/json", b"{nope", "body:"),
    ("PUT", "/flow/x/json", b"[" * 100_000 + b"]" * 100_000, "body:"),
    ("PUT", "/flow/x/json", b'{"keys": "' + b"[" * 5000 + b'"}', "keys:"),
    # 400 either way; which line names it is the filter parser's business
    ("PUT", "/flow/x/json", b'{"filter": "' + b"(" * 5000 + b'a=1"}', ""),
    ("PUT", "/flow/x/json", b'"a string"', "body:"),
    ("PUT", "/flow/x/json", b'{"t": "NaN"}', "t:"),
    ("PUT", "/flow/x/json", b'{"t": 1e999}', "t:"),
    ("PUT", "/flow/x/json", b'{"value": ["bytes"]}', "value:"),
    ("PUT", "/flow/" + "n" * 200 + "/json", b"{}", "name:"),
    ("PUT", "/threshold/x/json", b'{"metric": "m", "value": "lots"}', "value:"),
    ("PUT", "/threshold/x/json", b'{"metric": "m", "value": 1, "filter": [1]}', "filter:"),
    ("PUT", "/threshold/x/json", b'\xff\xfe', "body:"),
    ("PUT", "/topology/json", b'{"nodes": {"s1": {"ports": {"p": {"ifindex": []}}}}}',
     "nodes.s1.ports.p.ifindex:"),
    ("PUT", "/topology/json", b"[1]", "body:"),
    ("PUT", "/group/g/json", b'{"a": ["300.1.1.1/8"]}', "a:"),
    ("PUT", "/map/m/json", b'{"a": {"b": 1}}', "a:"),
    ("GET", "/events/json?eventID=abc", b"", "eventID:"),
    ("GET", "/events/json?timeout=inf", b"", "timeout:"),
    ("GET", "/events/json?maxEvents=-1", b"", "maxEvents:"),
    ("GET", "/activeflows/ALL/f/json?minValue=nan", b"", "minValue:"),
    ("GET", "/activeflows/;/f/json", b"", "agent:"),
]


@pytest.mark.parametrize("method, path, body, start", MALFORMED,
                         ids=[f"{m} {p[:40]} {b[:20]!r}" for m, p, b, _ in MALFORMED])
def test_malformed_input_is_400_and_the_server_keeps_serving(service: EmbeddedEngine, method: str,
                                                             path: str, body: bytes,
                                                             start: str) -> None:
    requests.put(service.url + "/flow/f/json", data=json.dumps(TCP), timeout=5)
    resp = requests.request(method, service.url + path, data=body or None, timeout=10)
    assert resp.status_code == 400, resp.text
    assert resp.text.startswith(start), resp.text
    assert "\n" not in resp.text.strip()
    assert requests.get(service.url + "/version", timeout=5).status_code == 200


def test_methods_known_paths_and_unknown_ones(service: EmbeddedEngine) -> None:
    url = service.url
    resp = requests.delete(url + "/events/json", timeout=5)
    assert resp.status_code == 405 and "GET" in resp.headers["Allow"]
    resp = requests.put(url + "/activeflows/ALL/f/json", data="{}", timeout=5)
    assert resp.status_code == 405
    resp = requests.patch(url + "/flow/f/json", data="{}", timeout=5)
    assert resp.status_code == 405 and "PUT" in resp.headers["Allow"]
    # POST is PUT (sFlow-RT's http.readonly speaks of "POST/PUT operations")
    assert requests.post(url + "/flow/p/json", data=json.dumps(TCP), timeout=5).status_code == 204
    assert requests.head(url + "/flow/p/json", timeout=5).status_code == 200
    assert requests.get(url + "/nothing/here/json", timeout=5).status_code == 404
    assert requests.get(url + "/nothing/here/json", timeout=5).text.startswith("no such resource")


def test_oversized_and_slow_bodies(service: EmbeddedEngine, monkeypatch: pytest.MonkeyPatch) -> None:
    from sflow import httpapi

    resp = requests.put(service.url + "/topology/json", data=b" " * (httpapi.MAX_BODY + 1),
                        timeout=10)
    assert resp.status_code == 413
    monkeypatch.setattr(httpapi, "BODY_TIMEOUT", 0.5)
    start = time.monotonic()
    answer = raw_exchange(service.url, b"PUT /flow/slow/json HTTP/1.1\r\nHost: x\r\n"
                          b"Content-Length: 100\r\n\r\n{\"keys\"", timeout=10)
    assert answer.startswith(b"HTTP/1.1 408"), answer
    assert time.monotonic() - start < 5
    assert "slow" not in requests.get(service.url + "/flow/json", timeout=5).json()


def _served(api: EngineAPI) -> BackgroundServer:
    return BackgroundServer(api.app, "127.0.0.1", 0, name="test").start()


def test_exposed_listener_needs_a_token_for_writes_only() -> None:
    secret = "x" * 24
    api = EngineAPI(Engine(), tokens=Tokens({"alice": secret}))
    server = _served(api)
    try:
        url = server.url
        resp = requests.put(url + "/flow/f/json", data=json.dumps(TCP), timeout=5)
        assert resp.status_code == 401 and resp.headers["WWW-Authenticate"] == "Bearer"
        resp = requests.put(url + "/flow/f/json", data=json.dumps(TCP), timeout=5,
                            headers={"Authorization": "Bearer wrong-wrong-wrong"})
        assert resp.status_code == 401
        assert requests.get(url + "/flow/json", timeout=5).json() == {}  # nothing changed
        assert requests.delete(url + "/topology/json", timeout=5).status_code == 401
        resp = requests.put(url + "/flow/f/json", data=json.dumps(TCP), timeout=5,
                            headers={"Authorization": f"Bearer {secret}"})
        assert resp.status_code == 204
        assert list(requests.get(url + "/flow/json", timeout=5).json()) == ["f"]  # reads: open
    finally:
        server.stop()
    # exposed without any token file: every write refused, reads served
    api = EngineAPI(Engine(), require_token=True)
    server = _served(api)
    try:
        assert requests.put(server.url + "/flow/f/json", data="{}", timeout=5).status_code == 401
        assert requests.get(server.url + "/version", timeout=5).status_code == 200
    finally:
        server.stop()


def test_a_held_engine_lock_gives_503_and_never_blocks_stop() -> None:
    service = EmbeddedEngine(("127.0.0.1", 0), ("127.0.0.1", 0)).start()
    service.api.lock_timeout = 0.3
    held = threading.Event()
    release = threading.Event()

    def hog() -> None:  # what a pathological ingest would do
        with service.engine.lock:
            held.set()
            release.wait(30)

    thread = threading.Thread(target=hog, daemon=True)
    thread.start()
    held.wait(5)
    try:
        resp = requests.get(service.url + "/flow/json", timeout=5)
        assert resp.status_code == 503 and resp.text.startswith("engine busy")
        assert requests.get(service.url + "/version", timeout=5).status_code == 200
        poll = {}

        def long_poll() -> None:
            try:
                poll["resp"] = requests.get(service.url + "/events/json?timeout=20", timeout=30)
            except requests.RequestException as exc:
                poll["error"] = exc
        poller = threading.Thread(target=long_poll)
        poller.start()
        time.sleep(0.5)
        start = time.monotonic()
        service.stop()  # SIGTERM's path: must not wait for the lock
        assert time.monotonic() - start < 8
        poller.join(10)
        assert not poller.is_alive()
    finally:
        release.set()
        thread.join(5)


def test_topology_and_groups_endpoints(service: EmbeddedEngine) -> None:
    url = service.url
    assert requests.get(url + "/topology/json", timeout=5).json() == {}
    assert requests.put(url + "/topology/json", data=json.dumps(TOPOLOGY),
                        timeout=5).status_code == 204
    assert requests.get(url + "/topology/json", timeout=5).json() == TOPOLOGY
    assert requests.delete(url + "/topology/json", timeout=5).status_code == 204
    assert requests.get(url + "/topology/json", timeout=5).json() == {}
    group = {"external": ["0.0.0.0/0"], "internal": ["10.0.0.0/8"]}
    assert requests.put(url + "/group/lf/json", data=json.dumps(group), timeout=5).status_code == 204
    assert requests.get(url + "/group/lf/json", timeout=5).json() == group
    assert requests.get(url + "/group/json", timeout=5).json() == {"lf": group}
    assert requests.delete(url + "/group/lf/json", timeout=5).status_code == 204
    assert requests.get(url + "/group/lf/json", timeout=5).status_code == 404
    assert requests.delete(url + "/group/lf/json", timeout=5).status_code == 404
    ports = {"web": ["80", "443"]}
    assert requests.put(url + "/map/svc/json", data=json.dumps(ports), timeout=5).status_code == 204
    assert requests.get(url + "/map/json", timeout=5).json() == {"svc": ports}


def test_readonly_refuses_topology_and_groups() -> None:
    service = EmbeddedEngine(("127.0.0.1", 0), ("127.0.0.1", 0), readonly=True).start()
    try:
        assert requests.put(service.url + "/topology/json", data="{}", timeout=5).status_code == 403
        assert requests.put(service.url + "/group/g/json", data="{}", timeout=5).status_code == 403
    finally:
        service.stop()




def test_client_sends_its_token_on_writes() -> None:
    from sflow.client import ReadOnly, SFlowRTClient

    secret = "y" * 32
    server = _served(EngineAPI(Engine(), tokens=Tokens({"demon": secret})))
    try:
        with pytest.raises(ReadOnly, match="401"):
            SFlowRTClient(server.url, retries=0).define_flow("f", TCP)
        client = SFlowRTClient(server.url, retries=0, token=secret)
        client.define_flow("f", TCP)
        assert client.get_flow("f")["keys"] == TCP["keys"]
        client.delete_flow("f")
    finally:
        server.stop()
