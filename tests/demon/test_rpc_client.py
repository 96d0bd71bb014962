"""RpcClient against a real in-process server: errors, timeouts, reconnects, events."""

from __future__ import annotations

import socket
import threading
import time
from typing import Any, Iterator

import pytest

from demon.rpc import protocol as p
from demon.rpc.client import ControllerUnreachable, RpcClient, RpcTimeout
from demon.rpc.server import RpcServer

TOKEN = "tok"


class Mirrors:
    """A tiny idempotent handler: install by tap id, like a component does."""

    def __init__(self) -> None:
        self.taps: dict[str, dict] = {}
        self.installs = 0

    def methods(self) -> set[str]:
        return {"hello", "install_mirror", "remove_mirror", "list_mirrors", "sleep"}

    def call(self, method: str, params: dict[str, Any]) -> Any:
        if method == "hello":
            return {"protocol": p.PROTOCOL_VERSION, "component": "test"}
        if method == "sleep":
            time.sleep(params["s"])
            return "woke"
        if method == "install_mirror":
            self.installs += 1
            replaced = params["tap_id"] in self.taps
            self.taps[params["tap_id"]] = params
            return {"tap_id": params["tap_id"], "replaced": replaced}
        if method == "remove_mirror":
            return {"tap_id": params["tap_id"], "removed": self.taps.pop(params["tap_id"], None) is not None}
        if method == "list_mirrors":
            return [t for t in self.taps.values() if params.get("dpid") in (None, t["dpid"])]
        raise AssertionError(method)


@pytest.fixture
def handler() -> Mirrors:
    return Mirrors()


@pytest.fixture
def server(handler: Mirrors) -> Iterator[RpcServer]:
    with RpcServer("tcp:127.0.0.1:0", TOKEN, handler) as srv:
        yield srv


def test_typed_helpers(server: RpcServer, handler: Mirrors) -> None:
    with RpcClient(server.address, TOKEN) as client:
        assert client.hello()["protocol"] == 1
        result = client.install_mirror("t1", 1, {"tcp_dst": 80}, 6, vlan_tag=10, hard_timeout=60)
        assert result == {"tap_id": "t1", "replaced": False}
        assert handler.taps["t1"] == {"tap_id": "t1", "dpid": 1, "match": {"tcp_dst": 80}, "copy_port": 6,
                                      "bidirectional": False, "vlan_tag": 10, "hard_timeout": 60}
        assert [t["tap_id"] for t in client.list_mirrors(dpid=1)] == ["t1"]
        assert client.list_mirrors(dpid=2) == []
        assert client.remove_mirror("t1") == {"tap_id": "t1", "removed": True}


def test_error_reply_raises_with_code(server: RpcServer) -> None:
    with RpcClient(server.address, TOKEN) as client:
        with pytest.raises(p.RpcError) as info:
            client.call("no_such_method")
        assert info.value.code == p.METHOD_NOT_FOUND
        assert client.hello()["protocol"] == 1  # same connection still fine


def test_wrong_token(server: RpcServer) -> None:
    with RpcClient(server.address, "bad") as client:
        with pytest.raises(p.RpcError) as info:
            client.hello()
        assert info.value.code == p.UNAUTHORIZED


def test_timeout_then_recovers(server: RpcServer) -> None:
    with RpcClient(server.address, TOKEN, timeout=0.3) as client:
        started = time.monotonic()
        with pytest.raises(RpcTimeout):
            client.call("sleep", s=1.0)
        assert time.monotonic() - started < 0.9
        assert client.hello()["protocol"] == 1  # never handed the late "woke" reply


def test_unreachable(unused_tcp_address: str) -> None:
    with RpcClient(unused_tcp_address, TOKEN, timeout=1) as client:
        with pytest.raises(ControllerUnreachable) as info:
            client.hello()
        assert info.value.code == p.CONTROLLER_UNREACHABLE


@pytest.fixture
def unused_tcp_address() -> str:
    probe = socket.socket()
    probe.bind(("127.0.0.1", 0))
    port = probe.getsockname()[1]
    probe.close()
    return f"tcp:127.0.0.1:{port}"


def test_reconnects_after_controller_restart(handler: Mirrors) -> None:
    first = RpcServer("tcp:127.0.0.1:0", TOKEN, handler).start()
    address = first.address
    client = RpcClient(address, TOKEN)
    client.install_mirror("t1", 1, {"tcp_dst": 80}, 6)
    first.close()  # the controller goes away; the client's connection is now dead
    with pytest.raises(ControllerUnreachable):
        client.hello()
    second = RpcServer(address, TOKEN, handler).start()
    try:
        # a retried install is safe: same tap id, so it replaces, never doubles
        assert client.install_mirror("t1", 1, {"tcp_dst": 80}, 6)["replaced"] is True
        assert len(handler.taps) == 1
    finally:
        client.close()
        second.close()


def test_broken_connection_retried_once_transparently(server: RpcServer, handler: Mirrors) -> None:
    with RpcClient(server.address, TOKEN) as client:
        client.hello()
        assert client._conn is not None
        client._conn.sock.shutdown(socket.SHUT_RDWR)  # as if the server side had reset it
        assert client.install_mirror("t2", 2, {"udp_dst": 53}, 7)["tap_id"] == "t2"
        assert handler.installs == 1


def test_concurrent_callers_get_their_own_replies(server: RpcServer) -> None:
    client = RpcClient(server.address, TOKEN)
    results: dict[int, Any] = {}

    def work(n: int) -> None:
        results[n] = client.install_mirror(f"t{n}", n, {"tcp_dst": n}, 6)["tap_id"]

    threads = [threading.Thread(target=work, args=(n,)) for n in range(20)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    client.close()
    assert results == {n: f"t{n}" for n in range(20)}


def test_subscription_survives_restart(handler: Mirrors) -> None:
    first = RpcServer("tcp:127.0.0.1:0", TOKEN, handler).start()
    address = first.address
    states: list[bool] = []
    client = RpcClient(address, TOKEN)
    sub = client.subscribe(on_connection=states.append)
    try:
        assert sub.wait_connected(5)
        first.publish("switch_up", {"dpid": 1})
        assert sub.get(timeout=5) == p.Event("switch_up", {"dpid": 1})
        first.close()
        deadline = time.monotonic() + 5
        while sub.connected and time.monotonic() < deadline:
            time.sleep(0.02)
        assert not sub.connected
        second = RpcServer(address, TOKEN, handler).start()
        try:
            assert sub.wait_connected(5)
            deadline = time.monotonic() + 5
            while second.subscribers == 0 and time.monotonic() < deadline:
                time.sleep(0.02)
            second.publish("mirror_removed", {"tap_id": "t1", "reason": "hard_timeout"})
            assert sub.get(timeout=5).params["reason"] == "hard_timeout"
        finally:
            second.close()
    finally:
        sub.close()
    assert states[:3] == [True, False, True]


def test_subscription_callback_and_bad_token(server: RpcServer) -> None:
    seen: list[p.Event] = []
    got = threading.Event()

    def on_event(event: p.Event) -> None:
        seen.append(event)
        got.set()

    with RpcClient(server.address, TOKEN).subscribe(on_event) as sub:
        assert sub.wait_connected(5)
        server.publish("switch_down", {"dpid": 3})
        assert got.wait(5)
    assert seen == [p.Event("switch_down", {"dpid": 3})]
    with RpcClient(server.address, "wrong").subscribe() as refused:
        assert not refused.wait_connected(0.5)
