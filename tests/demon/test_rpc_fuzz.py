"""The RPC parser and server under generated input (hypothesis, in the normal test run):
whatever a line holds, the parser answers a request or a ``BadRequest`` with a
documented code, and the server answers it with one line and keeps the connection."""

from __future__ import annotations

import json
from typing import Any, Iterator

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from demon.rpc import protocol as p
from demon.rpc.server import RpcServer
from tests.demon.test_rpc_server_robustness import TOKEN, Handler, Raw

CODES = {p.PARSE_ERROR, p.INVALID_REQUEST, p.INVALID_PARAMS, p.UNAUTHORIZED}

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=12)
requests = st.fixed_dictionaries({}, optional={
    "id": st.one_of(st.integers(), st.text(max_size=8), st.none(), st.booleans(), st.floats()),
    "method": st.one_of(st.sampled_from(["echo", "subscribe", "strict", ""]), st.text(max_size=12), json_values),
    "params": st.one_of(st.dictionaries(st.text(max_size=6), json_values, max_size=3), json_values),
    "token": st.one_of(st.just(TOKEN), st.text(max_size=8), json_values),
})
surrogates = st.builds(lambda a, b: a + "\\ud" + b, st.text(max_size=6), st.sampled_from(["800", "bff", "c00", "fff"]))


def lines() -> st.SearchStrategy[bytes]:
    """Raw bytes, JSON of any shape, request-shaped objects, and strings with lone surrogates."""
    return st.one_of(
        st.binary(max_size=200).map(lambda b: b.replace(b"\n", b" ")),
        json_values.map(lambda v: json.dumps(v).encode()),
        requests.map(lambda r: json.dumps(r).encode()),
        surrogates.map(lambda s: ('{"id": 1, "method": "echo", "token": "%s"}' % s).encode()),
        st.integers(min_value=1, max_value=3000).map(lambda n: b'{"id": 1, "params": ' + b"[" * n + b"]" * n + b"}"),
    )


@settings(max_examples=400, deadline=None)
@given(lines())
def test_the_parser_answers_every_line(line: bytes) -> None:
    try:
        request = p.decode_request(line + b"\n")
    except p.BadRequest as exc:
        assert exc.code in CODES
        json.loads(p.encode_error(exc.request_id, exc.code, exc.message))  # the reply is valid JSON
        return
    assert isinstance(request.method, str) and request.method
    assert isinstance(request.params, dict)
    assert request.token is None or isinstance(request.token, str)
    if request.token is not None:
        request.token.encode("utf-8")  # comparable: no lone surrogate got through


@pytest.fixture(scope="module")
def server() -> Iterator[RpcServer]:
    with RpcServer("tcp:127.0.0.1:0", TOKEN, Handler()) as srv:
        yield srv


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(lines(), min_size=1, max_size=5))
def test_the_server_answers_each_line_and_keeps_the_connection(server: RpcServer, batch: list[bytes]) -> None:
    raw = Raw(server.address)
    try:
        wanted = [line for line in batch if line.strip()]
        raw.send(b"".join(line + b"\n" for line in batch))
        replies: list[dict[str, Any]] = []
        for _ in wanted:
            reply = raw.read()
            if "event" not in reply:
                replies.append(reply)
        assert len(replies) == len(wanted)
        assert all(("result" in r) != ("error" in r) for r in replies)
        raw.request("last", "echo", {"still": "here"})
        while True:
            reply = raw.read()
            if reply.get("id") == "last":
                break
        assert reply == {"id": "last", "result": {"still": "here"}}
    finally:
        raw.close()
