"""Generated HTTP requests for fuzzing our two HTTP APIs in-process (hypothesis):
the embedded engine's (``tests/sflow/test_http_fuzz.py``) and the daemon's
(``tests/demon/test_api_fuzz.py``).

A request is a method, a path (a known route with its parameters replaced by
generated segments, or generated segments only), a query string, headers and a
body (JSON of any shape, JSON nested deeper than any parser likes, raw bytes,
or a mapping of the route's own field names to generated values). Query
parameters that make a long poll wait (``timeout``) only ever get values that
wait at most a few milliseconds or are refused, so that an example stays short.
"""

from __future__ import annotations

import asyncio
import json
import re
from dataclasses import dataclass, field
from typing import Any, Iterable, Sequence
from urllib.parse import quote, urlencode

import httpx
from hypothesis import strategies as st

_METHODS = ["GET"] * 6 + ["PUT"] * 4 + ["POST"] * 2 + ["DELETE"] * 2 + ["HEAD", "PATCH", "OPTIONS"]


@st.composite
def _method(draw: Any) -> str:
    """Mostly the methods the APIs serve; now and then any other token."""
    if draw(st.integers(0, 9)) == 0:
        return draw(st.from_regex(r"\A[A-Z]{1,8}\Z"))
    return draw(st.sampled_from(_METHODS))


METHODS = _method()
_ODD_SEGMENTS = ["", "..", ".", "%00", "%ff", "%2F", "%25", "json", "txt", "ALL", "a;b;c",
                 "x" * 300, "%E2%80%AE", "-1", "0", "1e999"]
_ODD_VALUES = ["", "0", "-1", "1", "1e309", "-1e309", "nan", "inf", "0x10", "1_000", "ALL",
               "true", "10.0.0.1", "a;b", "%", "9" * 40, "\u00e9", " 1 "]
#: values of a long-poll parameter: none waits longer than 10 ms
_SHORT_WAITS = ["", "0", "-0", "0.01", "-1", "nan", "inf", "-inf", "1e999", "abc", "0x1", "1e-300"]
PRINTABLE = st.characters(min_codepoint=32, max_codepoint=126)

JSON = st.recursive(
    st.none() | st.booleans() | st.integers(min_value=-2**70, max_value=2**70)
    | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner,
                                                                max_size=4),
    max_leaves=10)


@dataclass(frozen=True)
class Request:
    method: str
    path: str
    query: str
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes = b""

    @property
    def url(self) -> str:
        return self.path + ("?" + self.query if self.query else "")


def _segment(words: Sequence[str]) -> st.SearchStrategy[str]:
    known = st.sampled_from(list(words))
    return st.one_of(known, known, known, st.sampled_from(_ODD_SEGMENTS),
                     st.text(max_size=12).map(lambda s: quote(s, safe="")))


def paths(templates: Sequence[str], words: Sequence[str]) -> st.SearchStrategy[str]:
    """A route of ``templates`` with each ``{param}`` a generated segment (sometimes
    one more segment on the end), or a path of generated segments."""
    segment = _segment(words)

    def fill(template: str, draw: Any) -> str:
        return re.sub(r"\{[^}]+\}", lambda _: draw(segment), template)

    @st.composite
    def known(draw: Any) -> str:
        path = fill(draw(st.sampled_from(list(templates))), draw)
        if draw(st.integers(0, 9)) == 0:
            path += "/" + draw(segment)
        return path

    made_up = st.lists(segment, min_size=0, max_size=5).map(lambda parts: "/" + "/".join(parts))
    return st.one_of(known(), known(), made_up)


def queries(names: Iterable[str], waits: Iterable[str] = ("timeout",),
            short_waits: Sequence[str] = _SHORT_WAITS) -> st.SearchStrategy[str]:
    """A query string: known and made-up names with generated values (``waits``
    get only short waits), or a raw string of odd separators."""
    waits = set(waits)
    value = st.one_of(st.sampled_from(_ODD_VALUES), st.text(max_size=16))
    other = st.one_of(st.sampled_from(sorted(set(names) - waits)), st.text(max_size=8)).filter(
        lambda name: name not in waits)
    pair = st.one_of(st.tuples(other, value), st.tuples(st.sampled_from(sorted(waits)),
                                                        st.sampled_from(list(short_waits))))
    encoded = st.lists(pair, max_size=5).map(urlencode)
    raw = st.lists(st.sampled_from(["%", "%zz", "&", "=", "a=1=2", ";", "a[]=1", "+", "%20",
                                    "\u00e9=1", "x"]), max_size=6).map("".join)
    return st.one_of(encoded, encoded, raw)


@st.composite
def _headers(draw: Any, tokens: Sequence[str]) -> dict[str, str]:
    text = st.text(PRINTABLE, max_size=40)
    kind = st.one_of(st.sampled_from(["application/json", "text/plain", "application/x-www-form"
                                      "-urlencoded", "multipart/form-data; boundary=x", "",
                                      "application/json; charset=latin-1"]), text)
    out = draw(st.fixed_dictionaries({}, optional={
        "Content-Type": kind, "Accept": text, "Last-Event-ID": text, "X-Forwarded-For": text,
        "Expect": st.sampled_from(["100-continue", "nothing"])}))
    auth = draw(st.integers(0, 4))
    if tokens and auth <= 2:
        out["Authorization"] = "Bearer " + draw(st.sampled_from(list(tokens)))
    elif auth == 3:
        out["Authorization"] = draw(st.one_of(st.sampled_from([
            "Bearer", "Bearer ", "Bearer wrong-token", "bearer x y", "Basic dXNlcjpwYXNz", ""]),
            text))
    return out


def headers(tokens: Sequence[str] = ()) -> st.SearchStrategy[dict[str, str]]:
    """Content-Type and others, and Authorization: mostly a real token (when given),
    sometimes a wrong or malformed one, sometimes none."""
    return _headers(tokens)


def bodies(fields: Sequence[str] = (), valid: Sequence[Any] = ()) -> st.SearchStrategy[bytes]:
    """JSON of any shape, nested too deeply, the route's fields with generated
    values, valid bodies, raw bytes."""
    as_json = st.one_of(
        JSON,
        st.dictionaries(st.sampled_from(list(fields) or ["x"]), JSON, max_size=len(fields) + 1),
        st.sampled_from(list(valid) or [{}])).map(lambda v: json.dumps(v).encode())
    deep = st.sampled_from([100, 999, 1000, 3000, 100_000]).flatmap(
        lambda n: st.sampled_from([b"[" * n + b"]" * n, b'{"a":' * n + b"1" + b"}" * n,
                                   b'{"keys": ' + b"[" * n + b"]" * n + b"}"]))
    return st.one_of(as_json, as_json, deep, st.binary(max_size=200), st.just(b""))


def requests(templates: Sequence[str], words: Sequence[str], query_names: Iterable[str],
             fields: Sequence[str] = (), valid: Sequence[Any] = (), tokens: Sequence[str] = (),
             short_waits: Sequence[str] = _SHORT_WAITS,
             methods: Sequence[str] = ()) -> st.SearchStrategy[Request]:
    """Requests to ``templates``' routes (and made-up ones); ``methods``: only these
    (e.g. the writes, so that most bodies meet a parser), else any."""
    return st.builds(Request, st.sampled_from(list(methods)) if methods else METHODS,
                     paths(templates, words),
                     queries(query_names, short_waits=short_waits), headers(tokens),
                     bodies(fields, valid))


class InProcess:
    """An ASGI app called in this process (httpx's ASGI transport, on an event loop of
    its own): an app error comes back as the app's 500, not as an exception."""

    def __init__(self, app: Any) -> None:
        self.app = app
        self.loop = asyncio.new_event_loop()
        self.client = httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app, raise_app_exceptions=False),
            base_url="http://testserver", timeout=30)

    def send(self, req: Request) -> httpx.Response:
        # an absolute URL: httpx refuses a relative one whose path starts with '//'
        return self.request(req.method, "http://testserver" + req.url, headers=req.headers,
                            content=req.body)

    def request(self, method: str, url: str, **kw: Any) -> httpx.Response:
        return self.loop.run_until_complete(self.client.request(method, url, **kw))

    def close(self) -> None:
        self.loop.run_until_complete(self.client.aclose())
        self.loop.close()


def check_error_reply(resp: Any, req: Request, *, json_errors: bool,
                      server_errors: Iterable[int] = ()) -> None:
    """Never a 5xx but the documented ones; a 4xx/5xx says what in one line, as JSON
    ``{"error": ...}`` (``json_errors``) or as ``text/plain``."""
    status = resp.status_code
    assert status < 500 or status in set(server_errors), (req, status, resp.text[:300])
    if status < 400 or req.method == "HEAD":
        return
    if json_errors:
        assert resp.headers.get("content-type", "").startswith("application/json"), (req, resp)
        try:
            body = resp.json()
        except ValueError:
            raise AssertionError(("not JSON", req, status, resp.text[:300])) from None
        assert isinstance(body, dict) and isinstance(body.get("error"), str), (req, body)
        assert body["error"] and "\n" not in body["error"], (req, body)
    else:
        assert resp.headers.get("content-type", "").startswith("text/plain"), (req, resp.headers)
        text = resp.text
        assert text.strip() and "\n" not in text.rstrip("\n"), (req, text[:300])
