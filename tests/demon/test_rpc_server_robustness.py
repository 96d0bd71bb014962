"""The RPC server answers every bad line with an error and keeps serving."""

from __future__ import annotations

import json
import socket
import threading
import time
from pathlib import Path
from typing import Any, Iterator

import pytest

from demon.rpc import protocol as p
from demon.rpc.server import RpcServer

TOKEN = "s3cret"


class Handler:
    def __init__(self) -> None:
        self.calls: list[tuple[str, dict]] = []
        self.release = threading.Event()

    def methods(self) -> set[str]:
        return {"echo", "slow", "boom", "strict", "block", "big"}

    def call(self, method: str, params: dict[str, Any]) -> Any:
        self.calls.append((method, params))
        if method == "slow":
            time.sleep(params["s"])
            return {"slept": params["s"]}
        if method == "boom":
            raise RuntimeError("kaput")
        if method == "strict":
            if not isinstance(params.get("x"), int):
                raise p.InvalidParams("params.x", "must be an integer")
            return params["x"]
        if method == "big":
            return "q" * 500_000
        if method == "block":
            self.release.wait(10)
            return "released"
        return params


@pytest.fixture
def handler() -> Handler:
    return Handler()


@pytest.fixture
def server(handler: Handler) -> Iterator[RpcServer]:
    with RpcServer("tcp:127.0.0.1:0", TOKEN, handler) as srv:
        yield srv
    handler.release.set()


class Raw:
    """A hand-driven client: exact bytes out, parsed lines in."""

    def __init__(self, address: str) -> None:
        kind, where = p.parse_address(address)
        family = socket.AF_UNIX if kind == "unix" else socket.AF_INET
        self.sock = socket.socket(family, socket.SOCK_STREAM)
        self.sock.settimeout(5)
        self.sock.connect(where)
        self.reader = self.sock.makefile("rb")

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def request(self, rid: Any, method: str, params: dict | None = None, token: str | None = TOKEN) -> None:
        self.send(p.encode_request(rid, method, params or {}, token))

    def read(self) -> dict:
        line = self.reader.readline()
        assert line, "connection closed"
        return json.loads(line)

    def closed(self) -> bool:
        try:
            return self.reader.readline() == b""
        except (ConnectionResetError, socket.timeout):
            return True

    def close(self) -> None:
        self.sock.close()


def assert_serving(server: RpcServer) -> None:
    other = Raw(server.address)
    other.request(99, "echo", {"still": "here"})
    assert other.read() == {"id": 99, "result": {"still": "here"}}
    other.close()


def test_echo_and_bound_port(server: RpcServer) -> None:
    assert server.address.startswith("tcp:127.0.0.1:") and not server.address.endswith(":0")
    raw = Raw(server.address)
    raw.request(1, "echo", {"a": [1, 2]})
    assert raw.read() == {"id": 1, "result": {"a": [1, 2]}}


@pytest.mark.parametrize("line, code", [
    (b"this is not json\n", p.PARSE_ERROR),
    (b"\x00\x01\xff\xfe garbage\n", p.PARSE_ERROR),
    (b"[1,2,3]\n", p.INVALID_REQUEST),
    (b'{"id": 5, "token": "s3cret"}\n', p.INVALID_REQUEST),
    (b'{"id": 5, "token": "s3cret", "method": "nope"}\n', p.METHOD_NOT_FOUND),
    (b'{"id": 5, "token": "s3cret", "method": "echo", "params": 3}\n', p.INVALID_PARAMS),
    (b'{"id": 5, "token": "s3cret", "method": "strict", "params": {"x": "1"}}\n', p.INVALID_PARAMS),
    (b'{"id": 5, "token": "s3cret", "method": "boom"}\n', p.INTERNAL_ERROR),
])
def test_bad_line_answered_connection_kept(server: RpcServer, line: bytes, code: int) -> None:
    raw = Raw(server.address)
    raw.send(line)
    reply = raw.read()
    assert reply["error"]["code"] == code and "result" not in reply
    raw.request(6, "echo", {"after": True})
    assert raw.read() == {"id": 6, "result": {"after": True}}
    assert_serving(server)


def test_invalid_params_names_the_field(server: RpcServer) -> None:
    raw = Raw(server.address)
    raw.request(1, "strict", {"x": None})
    assert raw.read()["error"] == {"code": p.INVALID_PARAMS, "message": "params.x: must be an integer"}


@pytest.mark.parametrize("token", [None, "wrong", "s3cre", ""])
def test_bad_token_refused_not_executed(server: RpcServer, handler: Handler, token: str | None,
                                        caplog: pytest.LogCaptureFixture) -> None:
    raw = Raw(server.address)
    raw.request(1, "echo", {"x": 1}, token=token)
    assert raw.read() == {"id": 1, "error": {"code": p.UNAUTHORIZED, "message": "missing or wrong token"}}
    assert handler.calls == []
    assert "token from tcp:127.0.0.1:" in caplog.text
    raw.request(2, "subscribe", token="nope")
    assert raw.read()["error"]["code"] == p.UNAUTHORIZED
    assert server.publish("switch_up", {"dpid": 1}) == 0
    assert_serving(server)


def test_oversized_line_closes_only_that_connection(server: RpcServer) -> None:
    raw = Raw(server.address)
    raw.send(b'{"id": 1, "method": "echo", "params": {"x": "' + b"x" * (p.MAX_LINE + 10))
    reply = raw.read()
    assert reply["error"]["code"] == p.INVALID_REQUEST and "longer" in reply["error"]["message"]
    assert raw.closed()
    assert_serving(server)


def test_line_of_exactly_max_length_accepted(server: RpcServer) -> None:
    prefix = b'{"id":1,"token":"s3cret","method":"echo","params":{"x":"'
    suffix = b'"}}'
    line = prefix + b"y" * (p.MAX_LINE - len(prefix) - len(suffix)) + suffix
    assert len(line) == p.MAX_LINE
    raw = Raw(server.address)
    raw.send(line + b"\n")
    assert len(raw.read()["result"]["x"]) == p.MAX_LINE - len(prefix) - len(suffix)


def test_pipelined_replies_in_any_order(server: RpcServer) -> None:
    raw = Raw(server.address)
    raw.send(p.encode_request(1, "slow", {"s": 0.5}, TOKEN) + p.encode_request(2, "echo", {"n": 2}, TOKEN))
    first, second = raw.read(), raw.read()
    assert first == {"id": 2, "result": {"n": 2}}
    assert second == {"id": 1, "result": {"slept": 0.5}}


def test_disconnect_mid_request_and_mid_line(server: RpcServer, handler: Handler) -> None:
    raw = Raw(server.address)
    raw.request(1, "slow", {"s": 0.3})
    raw.close()  # reply has nowhere to go
    half = Raw(server.address)
    half.send(b'{"id": 2, "token": "s3cret", "meth')
    half.close()
    time.sleep(0.5)
    assert ("slow", {"s": 0.3}) in handler.calls
    assert_serving(server)


def test_half_closed_client_still_gets_replies(server: RpcServer) -> None:
    raw = Raw(server.address)
    raw.request(1, "slow", {"s": 0.2})
    raw.sock.shutdown(socket.SHUT_WR)
    assert raw.read() == {"id": 1, "result": {"slept": 0.2}}
    assert raw.closed()


def test_blocked_call_does_not_block_other_clients(server: RpcServer, handler: Handler) -> None:
    raw = Raw(server.address)
    raw.request(1, "block")
    assert_serving(server)
    raw.request(2, "echo", {"same": "connection"})
    assert raw.read() == {"id": 2, "result": {"same": "connection"}}
    handler.release.set()
    assert raw.read() == {"id": 1, "result": "released"}


def test_subscribe_and_publish(server: RpcServer) -> None:
    sub, plain = Raw(server.address), Raw(server.address)
    sub.request(1, "subscribe")
    assert sub.read() == {"id": 1, "result": {"subscribed": True}}
    assert server.publish("mirror_removed", {"tap_id": "t1", "reason": "idle_timeout"}) == 1
    assert sub.read() == {"event": "mirror_removed", "params": {"tap_id": "t1", "reason": "idle_timeout"}}
    plain.request(2, "echo", {})
    assert plain.read() == {"id": 2, "result": {}}  # no event queued ahead of it


def test_slow_subscriber_dropped_others_unaffected(handler: Handler) -> None:
    with RpcServer("tcp:127.0.0.1:0", TOKEN, handler, max_queue=50) as server:
        stuck, live = Raw(server.address), Raw(server.address)
        stuck.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        for raw in (stuck, live):
            raw.request(1, "subscribe")
            assert raw.read()["result"] == {"subscribed": True}
        payload = {"blob": "z" * 100_000}  # 300 of them exceed any socket buffering
        got: list[dict] = []
        reader = threading.Thread(target=lambda: got.extend(live.read() for _ in range(300)))
        reader.start()
        started = time.monotonic()
        for n in range(300):  # the stuck one never reads: its queue overflows
            server.publish("noise", payload)
            if n % 20 == 19:
                time.sleep(0.02)  # let the live reader keep within its 50-line queue
        assert time.monotonic() - started < 5
        reader.join(10)
        assert len(got) == 300 and all(m["event"] == "noise" for m in got)
        deadline = time.monotonic() + 5
        while server.subscribers != 1 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert server.subscribers == 1


def test_client_that_never_reads_replies_is_dropped(handler: Handler) -> None:
    with RpcServer("tcp:127.0.0.1:0", TOKEN, handler, send_timeout=1) as server:
        greedy = Raw(server.address)
        greedy.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        for n in range(60):  # 30 MB of replies it never reads
            greedy.request(n, "big")
        deadline = time.monotonic() + 10
        while server._connections and time.monotonic() < deadline:
            assert_serving(server)
            time.sleep(0.2)
        assert len(server._connections) == 0
        assert_serving(server)


def test_unix_socket_0600_and_stale_file_replaced(tmp_path: Path, handler: Handler) -> None:
    path = tmp_path / "rpc.sock"
    stale = socket.socket(socket.AF_UNIX)
    stale.bind(str(path))
    stale.close()  # a socket file nobody listens on, as after a crash
    with RpcServer(f"unix:{path}", TOKEN, handler) as server:
        assert (path.stat().st_mode & 0o777) == 0o600
        raw = Raw(server.address)
        raw.request("a", "echo", {"via": "unix"})
        assert raw.read() == {"id": "a", "result": {"via": "unix"}}
        with pytest.raises(OSError, match="already listens"):
            RpcServer(f"unix:{path}", TOKEN, handler).start()
    assert not path.exists()


def test_executor_runs_every_call(handler: Handler) -> None:
    ran_on: list[str] = []
    loop_thread_name = "fake-loop"

    def executor(fn):  # what POX does: hand fn to its loop, wait for the result
        box: list = []
        thread = threading.Thread(target=lambda: box.append(fn()), name=loop_thread_name)
        thread.start()
        thread.join()
        ran_on.append(thread.name)
        return box[0]

    with RpcServer("tcp:127.0.0.1:0", TOKEN, handler, executor=executor) as server:
        raw = Raw(server.address)
        raw.request(1, "echo", {"x": 1})
        assert raw.read() == {"id": 1, "result": {"x": 1}}
    assert ran_on == [loop_thread_name]


def test_close_is_prompt_and_drops_connections(handler: Handler) -> None:
    server = RpcServer("tcp:127.0.0.1:0", TOKEN, handler).start()
    raw = Raw(server.address)
    raw.request(1, "echo", {})
    raw.read()
    started = time.monotonic()
    server.close()
    assert time.monotonic() - started < 3
    assert raw.closed()
    with pytest.raises(OSError):
        Raw(server.address)


def test_empty_token_refused_at_construction(handler: Handler) -> None:
    with pytest.raises(ValueError, match="token"):
        RpcServer("tcp:127.0.0.1:0", "", handler)
