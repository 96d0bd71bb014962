"""The RPC server under floods and hostile lines (issue 14, #9 and #14): connections cost no
thread, unauthenticated and idle ones are closed, a connection limit and running out of file
descriptors never lock a well-behaved client out, and what used to kill a reader is answered."""

from __future__ import annotations

import logging
import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any, Iterator

import pytest

from demon.rpc import protocol as p
from demon.rpc.client import RpcClient
from demon.rpc.server import RpcServer
from tests.conftest import REPO
from tests.demon.test_rpc_server_robustness import TOKEN, Handler, Raw, assert_serving


def wait_for(pred: Any, timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while not pred():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return True


def idle_sockets(address: str, n: int) -> list[socket.socket]:
    _, (host, port) = p.parse_address(address)
    out = []
    for _ in range(n):
        sock = socket.socket()
        sock.setblocking(False)
        sock.connect_ex((host, port))
        out.append(sock)
    return out


@pytest.fixture
def handler() -> Handler:
    return Handler()


def test_idle_connections_cost_no_thread(handler: Handler) -> None:
    with RpcServer("tcp:127.0.0.1:0", TOKEN, handler) as server:
        assert_serving(server)
        before = threading.active_count()
        flood = idle_sockets(server.address, 200)
        try:
            assert wait_for(lambda: len(server._connections) >= 200), len(server._connections)
            assert threading.active_count() - before <= 1
            assert_serving(server)
        finally:
            for sock in flood:
                sock.close()


def test_no_token_in_time_closes_the_connection(handler: Handler) -> None:
    with RpcServer("tcp:127.0.0.1:0", TOKEN, handler, auth_timeout=0.5) as server:
        silent, refused, good = Raw(server.address), Raw(server.address), Raw(server.address)
        refused.request(1, "echo", {}, token="wrong")
        assert refused.read()["error"]["code"] == p.UNAUTHORIZED
        good.request(2, "echo", {"x": 1})
        assert good.read() == {"id": 2, "result": {"x": 1}}
        assert silent.closed() and refused.closed()  # each waits out its auth timeout, then sees EOF
        good.request(3, "echo", {"x": 2})
        assert good.read() == {"id": 3, "result": {"x": 2}}


def test_idle_callers_are_closed_subscribers_are_not(handler: Handler) -> None:
    with RpcServer("tcp:127.0.0.1:0", TOKEN, handler, idle_timeout=0.5) as server:
        caller, subscriber = Raw(server.address), Raw(server.address)
        caller.request(1, "echo", {})
        caller.read()
        subscriber.request(1, "subscribe")
        assert subscriber.read()["result"] == {"subscribed": True}
        assert caller.closed()
        assert server.publish("switch_up", {"dpid": 1}) == 1
        assert subscriber.read() == {"event": "switch_up", "params": {"dpid": 1}}
        with RpcClient(server.address, TOKEN, timeout=5) as client:  # reconnects by itself
            assert client.call("echo", y=1) == {"y": 1}
            time.sleep(1.0)
            assert client.call("echo", y=2) == {"y": 2}


def test_the_connection_limit_evicts_those_without_a_token_first(handler: Handler) -> None:
    with RpcServer("tcp:127.0.0.1:0", TOKEN, handler, max_connections=20) as server:
        flood = idle_sockets(server.address, 40)
        try:
            assert wait_for(lambda: len(server._connections) == 20)
            with RpcClient(server.address, TOKEN, timeout=5) as client:
                assert client.call("echo", z=1) == {"z": 1}
                members = [Raw(server.address) for _ in range(25)]
                for i, raw in enumerate(members):
                    raw.request(i, "echo", {})
                replies = 0
                for raw in members:
                    try:
                        replies += "result" in raw.read()
                    except (AssertionError, OSError):
                        pass
                assert replies == 19  # the limit less the client: the rest were refused
                assert client.call("echo", z=2) == {"z": 2}  # an authenticated one is never evicted
        finally:
            for sock in flood:
                sock.close()


SERVER = r"""
import resource, sys
resource.setrlimit(resource.RLIMIT_NOFILE, (int(sys.argv[1]), resource.getrlimit(resource.RLIMIT_NOFILE)[1]))
from demon.rpc.server import RpcServer
class H:
    def methods(self): return {"echo"}
    def call(self, method, params): return params
server = RpcServer("tcp:127.0.0.1:0", sys.argv[2], H()).start()
print(server.address, flush=True)
sys.stdin.read()
"""


@pytest.fixture
def fd_starved_server() -> Iterator[tuple[str, int]]:
    proc = subprocess.Popen([sys.executable, "-c", SERVER, "48", TOKEN], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, env=dict(os.environ, PYTHONPATH=str(REPO)), cwd=REPO)
    try:
        address = proc.stdout.readline().decode().strip()  # type: ignore[union-attr]
        assert address.startswith("tcp:"), address
        yield address, proc.pid
    finally:
        proc.stdin.close()  # type: ignore[union-attr]
        proc.wait(timeout=10)


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def test_a_flood_at_the_descriptor_limit_leaves_a_good_client_served(fd_starved_server: tuple[str, int]) -> None:
    address, pid = fd_starved_server
    flood = idle_sockets(address, 150)  # three times what the server's 48 descriptors hold
    try:
        time.sleep(0.5)
        with RpcClient(address, TOKEN, timeout=5) as client:
            assert client.call("echo", ok=True) == {"ok": True}
            start = cpu_seconds(pid)
            time.sleep(1.0)
            assert cpu_seconds(pid) - start < 0.5  # not spinning on accept errors
            assert client.call("echo", ok=2) == {"ok": 2}
    finally:
        for sock in flood:
            sock.close()


def test_deeply_nested_json_is_answered_and_the_connection_kept(handler: Handler) -> None:
    with RpcServer("tcp:127.0.0.1:0", TOKEN, handler) as server:
        raw = Raw(server.address)
        raw.send(b'{"id": 1, "method": "echo", "params": {"x": ' + b"[" * 50_000 + b"]" * 50_000 + b"}}\n")
        reply = raw.read()
        assert reply["error"]["code"] == p.PARSE_ERROR and "deeper" in reply["error"]["message"]
        raw.request(2, "echo", {"after": True})
        assert raw.read() == {"id": 2, "result": {"after": True}}


def test_a_lone_surrogate_token_is_refused_and_the_connection_kept(handler: Handler) -> None:
    with RpcServer("tcp:127.0.0.1:0", TOKEN, handler) as server:
        raw = Raw(server.address)
        raw.send(b'{"id": 1, "method": "echo", "token": "\\ud800", "params": {}}\n')
        assert raw.read() == {"id": 1, "error": {"code": p.UNAUTHORIZED,
                                                 "message": "token: not valid Unicode (a lone surrogate)"}}
        raw.send(b'{"id": 2, "method": "echo", "token": "s3cret", "params": {"k\\udfff": 1}}\n')
        assert raw.read()["error"]["code"] == p.INVALID_REQUEST
        raw.request(3, "echo", {"after": True})
        assert raw.read() == {"id": 3, "result": {"after": True}}
        assert handler.calls == [("echo", {"after": True})]


def test_a_wrong_token_flood_is_logged_a_few_times_only(handler: Handler, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="demon.rpc.server")
    with RpcServer("tcp:127.0.0.1:0", TOKEN, handler) as server:
        raw = Raw(server.address)
        raw.send(b"".join(p.encode_request(i, "echo", {}, "wrong") for i in range(500)))
        for _ in range(500):
            assert raw.read()["error"]["code"] == p.UNAUTHORIZED
    refused = [r for r in caplog.records if "token from" in r.getMessage()]
    assert 1 <= len(refused) <= 2, len(refused)
    assert handler.calls == []


def test_pipelined_requests_beyond_the_in_flight_limit_are_all_answered(handler: Handler) -> None:
    with RpcServer("tcp:127.0.0.1:0", TOKEN, handler, max_in_flight=4) as server:
        raw = Raw(server.address)
        raw.send(b"".join(p.encode_request(i, "slow", {"s": 0.01}, TOKEN) for i in range(40)))
        assert sorted(raw.read()["id"] for _ in range(40)) == list(range(40))
