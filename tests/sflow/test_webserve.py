"""The shared HTTP listener: listen options, a real uvicorn server on a thread."""

from __future__ import annotations

import http.client
import re
import socket

import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from sflow.webserve import BackgroundServer, ListenError, format_listen, is_loopback, parse_listen


@pytest.mark.parametrize("text, expected", [
    ("127.0.0.1:8734", ("127.0.0.1", 8734)),
    ("0.0.0.0:6343", ("0.0.0.0", 6343)),
    ("[::1]:8008", ("::1", 8008)),
    ("[::]:0", ("::", 0)),
    (":9000", ("127.0.0.1", 9000)),
    ("9000", ("127.0.0.1", 9000)),
    ("10.0.0.5", ("10.0.0.5", 8734)),
    ("[fe80::1]", ("fe80::1", 8734)),
    ("capture-host.example:80", ("capture-host.example", 80)),
])
def test_parse_listen_accepts_the_usual_forms(text: str, expected: tuple[str, int]) -> None:
    assert parse_listen(text, default_port=8734) == expected
    host, port = expected
    assert parse_listen(format_listen(host, port)) == expected


@pytest.mark.parametrize("text, words", [
    ("", "empty"),
    ("::1:80", "brackets"),
    ("[::1", "']'"),
    ("[::1]x", "':PORT'"),
    ("host:http", "not a number"),
    ("host:70000", "out of range"),
    ("host", "missing port"),
])
def test_parse_listen_says_what_is_wrong(text: str, words: str) -> None:
    with pytest.raises(ListenError, match=re.escape(words)) as info:
        parse_listen(text)
    assert "\n" not in str(info.value)


def test_is_loopback() -> None:
    assert is_loopback("127.0.0.1") and is_loopback("127.9.9.9") and is_loopback("::1")
    assert is_loopback("localhost")
    assert not is_loopback("0.0.0.0") and not is_loopback("::") and not is_loopback("10.0.0.1")
    assert not is_loopback("collector.example")


async def _echo(request: Request) -> JSONResponse:
    body = await request.body()
    return JSONResponse({"method": request.method, "length": len(body), "body": body.decode()})


def _app() -> Starlette:
    return Starlette(routes=[Route("/echo", _echo, methods=["GET", "PUT", "POST"])])


def _request(port: int, method: str, body: bytes | None = None, chunked: bool = False) -> bytes:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    try:
        if chunked:
            conn.putrequest(method, "/echo")
            conn.putheader("Transfer-Encoding", "chunked")
            conn.endheaders()
            assert body is not None
            for i in range(0, len(body), 7):
                piece = body[i:i + 7]
                conn.send(b"%x\r\n%s\r\n" % (len(piece), piece))
            conn.send(b"0\r\n\r\n")
        else:
            conn.request(method, "/echo", body=body)
        resp = conn.getresponse()
        assert resp.status == 200
        return resp.read()
    finally:
        conn.close()


def test_serves_on_an_ephemeral_port_and_reads_chunked_bodies() -> None:
    body = b'{"keys":"ipsource,ipdestination","value":"bytes"}'
    with BackgroundServer(_app(), "127.0.0.1", 0, name="test") as server:
        port = server.address[1]
        assert port != 0 and server.url == f"http://127.0.0.1:{port}"
        plain = _request(port, "PUT", body)
        chunked = _request(port, "PUT", body, chunked=True)
        assert plain == chunked
        assert b'"length":%d' % len(body) in plain
    # stopped: nothing listens any more
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", port), timeout=1).close()


def test_a_busy_address_is_an_oserror_in_the_caller() -> None:
    with BackgroundServer(_app(), "127.0.0.1", 0, name="first") as first:
        with pytest.raises(OSError):
            BackgroundServer(_app(), "127.0.0.1", first.address[1], name="second").start()
        # the first one still serves
        assert b'"method":"GET"' in _request(first.address[1], "GET")


def test_stop_is_idempotent() -> None:
    server = BackgroundServer(_app(), "127.0.0.1", 0).start()
    server.stop()
    server.stop()
    assert not server.running


def _served(port: int) -> bool:
    try:
        return b'"method":"GET"' in _request(port, "GET")
    except (OSError, AssertionError):
        return False


def test_silent_and_slowloris_connections_are_closed_and_others_served() -> None:
    """Idle connections and request heads sent a byte at a time are dropped after the
    head deadline, so they cannot hold the connection limit for ever."""
    with BackgroundServer(_app(), "127.0.0.1", 0, head_timeout=0.5,
                          limit_concurrency=20) as server:
        port = server.address[1]
        flood = [socket.create_connection(("127.0.0.1", port), timeout=5) for _ in range(30)]
        slow = socket.create_connection(("127.0.0.1", port), timeout=5)
        slow.sendall(b"GET /echo HTTP/1.1\r\n")
        closed = 0
        for sock in flood + [slow]:
            sock.settimeout(3)
            try:
                if sock.recv(1) == b"":  # the server closed it
                    closed += 1
            except socket.timeout:  # still open: not closed
                pass
            except ConnectionResetError:
                closed += 1
            finally:
                sock.close()
        assert closed == len(flood) + 1
        assert _served(port)


def test_a_request_slower_than_the_head_deadline_is_not_cut() -> None:
    """The deadline is for the head only: a handler that takes longer still answers."""
    import asyncio

    async def slow(request: Request) -> JSONResponse:
        await asyncio.sleep(1.0)
        return JSONResponse({"slow": True})

    app = Starlette(routes=[Route("/slow", slow)])
    with BackgroundServer(app, "127.0.0.1", 0, head_timeout=0.3) as server:
        conn = http.client.HTTPConnection("127.0.0.1", server.address[1], timeout=5)
        conn.request("GET", "/slow")
        assert conn.getresponse().read() == b'{"slow":true}'
        conn.close()


def test_no_access_log_lines_even_with_the_root_logger_at_debug(
        caplog: pytest.LogCaptureFixture) -> None:
    """Listeners log no line per request (a command at --log-level debug included):
    uvicorn's access logger stays silent; its start and stop lines are allowed."""
    import logging

    with caplog.at_level(logging.DEBUG):
        with BackgroundServer(_app(), "127.0.0.1", 0, name="test") as server:
            for _ in range(3):
                _request(server.address[1], "GET")
    assert caplog.records  # the capture works: uvicorn's own start/stop lines are there
    assert not [r for r in caplog.records if r.name == "uvicorn.access" or "GET /echo" in r.getMessage()]
