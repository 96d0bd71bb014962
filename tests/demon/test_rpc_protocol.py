"""Wire format: what goes on the line and what each bad line is answered with."""

from __future__ import annotations

import json

import pytest

from demon.rpc import protocol as p


def test_request_round_trip() -> None:
    line = p.encode_request(7, "install_mirror", {"tap_id": "t1", "dpid": 1}, token="abc")
    assert line.endswith(b"\n") and line.count(b"\n") == 1
    assert json.loads(line) == {"id": 7, "method": "install_mirror", "params": {"tap_id": "t1", "dpid": 1},
                                "token": "abc"}
    request = p.decode_request(line)
    assert request == p.Request(7, "install_mirror", {"tap_id": "t1", "dpid": 1}, "abc")


def test_reply_and_event_decoding() -> None:
    assert p.decode_message(p.encode_result("a", [1, 2])) == p.Reply("a", result=[1, 2])
    reply = p.decode_message(p.encode_error(3, p.UNKNOWN_TAP, "tap_id: no tap 'x'"))
    assert isinstance(reply, p.Reply) and reply.error is not None
    assert (reply.id, reply.error.code, reply.error.message) == (3, -32003, "tap_id: no tap 'x'")
    event = p.decode_message(p.encode_event("switch_up", {"dpid": 1}))
    assert event == p.Event("switch_up", {"dpid": 1})


def test_result_null_is_a_result() -> None:
    reply = p.decode_message(b'{"id": 1, "result": null}\n')
    assert isinstance(reply, p.Reply) and reply.error is None and reply.result is None


@pytest.mark.parametrize("line, code", [
    (b"{not json\n", p.PARSE_ERROR),
    (b"\xff\xfe\n", p.PARSE_ERROR),
    (b"[1, 2]\n", p.INVALID_REQUEST),
    (b'"hello"\n', p.INVALID_REQUEST),
    (b'{"id": 1}\n', p.INVALID_REQUEST),
    (b'{"id": 1, "method": ""}\n', p.INVALID_REQUEST),
    (b'{"id": 1.5, "method": "hello"}\n', p.INVALID_REQUEST),
    (b'{"id": true, "method": "hello"}\n', p.INVALID_REQUEST),
    (b'{"id": 1, "method": "hello", "params": [1]}\n', p.INVALID_PARAMS),
    (b'{"id": 1, "method": "hello", "token": 5}\n', p.UNAUTHORIZED),
])
def test_bad_lines_get_their_code(line: bytes, code: int) -> None:
    with pytest.raises(p.BadRequest) as info:
        p.decode_request(line)
    assert info.value.code == code


def test_bad_request_keeps_the_id_when_readable() -> None:
    with pytest.raises(p.BadRequest) as info:
        p.decode_request(b'{"id": 42, "method": "x", "params": "nope"}')
    assert info.value.request_id == 42


def test_oversized_line_refused() -> None:
    line = b'{"id":1,"method":"hello","params":{"x":"' + b"a" * p.MAX_LINE + b'"}}\n'
    with pytest.raises(p.BadRequest) as info:
        p.decode_request(line)
    assert info.value.code == p.INVALID_REQUEST


def test_nan_never_encoded() -> None:
    with pytest.raises(ValueError):
        p.encode_result(1, float("nan"))


@pytest.mark.parametrize("text, parsed", [
    ("tcp:127.0.0.1:7733", ("tcp", ("127.0.0.1", 7733))),
    ("tcp:7733", ("tcp", ("127.0.0.1", 7733))),
    ("tcp:[::1]:0", ("tcp", ("::1", 0))),
    ("unix:/run/x.sock", ("unix", "/run/x.sock")),
])
def test_addresses(text: str, parsed: tuple) -> None:
    assert p.parse_address(text) == parsed


@pytest.mark.parametrize("text", ["127.0.0.1:7733", "tcp:", "tcp:host:port", "tcp:1:70000", "udp:1:2"])
def test_bad_addresses(text: str) -> None:
    with pytest.raises(ValueError, match="address"):
        p.parse_address(text)


def test_format_address_round_trip() -> None:
    for text in ("tcp:127.0.0.1:7733", "tcp:[::1]:80", "unix:/tmp/s"):
        assert p.format_address(*p.parse_address(text)) == text
