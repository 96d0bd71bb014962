"""The engine's HTTP API: sFlow-RT's REST paths, JSON shapes, status codes and units.

A Starlette app (:class:`EngineAPI`, ``.app``) served by uvicorn through
``sflow.webserve.BackgroundServer``. The engine's state is read and changed
under its lock in a worker thread (never on the event loop), and the lock is
taken with a deadline: a request that cannot get it within
:data:`LOCK_TIMEOUT` answers 503 instead of piling up. Long polls
(``/events/json``, ``/flows/json``) wait *without* the lock: they watch the
engine's last event / flow-log id (a plain read) and take the lock only to
collect what arrived. Stopping never takes the engine lock.

The routes live in mixins named for what they serve: ``sflow.httpflows``
(definitions, events, flows, flow log), ``sflow.httpmetrics`` (counter metrics,
Prometheus), ``sflow.httptopology`` (topology, groups, maps),
``sflow.httpstatus`` (agents, analyzer, our own metrics); ``sflow.httpbase``
holds what they share. This module puts them together: the app and its
routing, the guard on writes, and the framing of request bodies.

Framing (uvicorn/h11): ``Content-Length`` and chunked bodies alike; a body
that is cut short (the client goes away) is never applied; a body larger
than :data:`MAX_BODY` is 413; one that does not arrive within
:data:`BODY_TIMEOUT` is 408. Errors are ``text/plain`` one-liners that start
with the field or parameter at fault, as before: 400 malformed, 401 no or
bad token, 403 read-only, 404 unknown, 405 method not allowed (with
``Allow``), 503 engine busy. See ``docs/engine-api.md``.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from typing import Any, Callable

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response
from starlette.routing import Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from sflow import keyfuncs
from sflow.auth import Tokens
from sflow.engine import Engine
from sflow.flowdef import DefinitionError
from sflow.flowlog import FlowLog
from sflow.groups import AddressGroup, AsnTable, ValueMap
from sflow.httpbase import ApiError, error_line, text_response
from sflow.httpflows import MAX_LONG_POLL, FlowRoutes
from sflow.httpmetrics import MetricRoutes
from sflow.httpstatus import StatusRoutes, register_http_collector
from sflow.httptopology import AgentSelection
from sflow.metricquery import MetricError
from sflow.topology import Topology, TopologyIndex

__all__ = ["EngineAPI", "ApiError", "MAX_LONG_POLL", "MAX_BODY", "BODY_TIMEOUT", "LOCK_TIMEOUT",
           "AgentSelection"]

log = logging.getLogger(__name__)


#: Largest request body accepted (a topology of a big fabric fits).
MAX_BODY = 8 << 20
#: Seconds a client has to send its whole body once the headers are in.
BODY_TIMEOUT = 10.0
#: Seconds a request waits for the engine's lock before answering 503.
LOCK_TIMEOUT = 5.0
_WRITES = {"PUT", "POST", "DELETE"}


# --- ASGI middleware --------------------------------------------------------------------

class _Guard:
    """Counts requests and guards writes (read-only engine, bearer token)."""

    def __init__(self, app: ASGIApp, api: "EngineAPI") -> None:
        self.app = app
        self.api = api

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        api = self.api
        method = scope["method"]
        status_seen = [0]

        async def counting_send(message: Message) -> None:
            if message["type"] == "http.response.start":
                status_seen[0] = message["status"]
            await send(message)

        api.requests_current += 1
        try:
            refusal = api.refuse_write(method, scope) if method in _WRITES else None
            if refusal is not None:
                await refusal(scope, receive, counting_send)
            else:
                await self.app(scope, receive, counting_send)
        finally:
            api.requests_current -= 1
            api.count_request(method, status_seen[0])


# --- the API ----------------------------------------------------------------------------

class EngineAPI(FlowRoutes, MetricRoutes, StatusRoutes):
    """sFlow-RT's REST API over one :class:`Engine` (plus topology, groups and maps).

    ``readonly`` refuses every write with 403. ``tokens``: when given, a write
    needs ``Authorization: Bearer <token>`` (401 otherwise); ``require_token``
    without ``tokens`` refuses every write (an exposed listener with no token
    file). ``extra_analyzer`` adds figures to ``/analyzer/json`` (the
    collector's socket counters).
    """

    def __init__(self, engine: Engine, *, readonly: bool = False,
                 clock: Callable[[], float] = time.time,
                 extra_analyzer: Callable[[], dict[str, Any]] | None = None,
                 tokens: Tokens | None = None, require_token: bool = False,
                 asn_table: AsnTable | None = None, lock_timeout: float = LOCK_TIMEOUT) -> None:
        self.engine = engine
        self.readonly = readonly
        self.clock = clock
        self.extra_analyzer = extra_analyzer
        self.tokens = tokens
        self.require_token = require_token or tokens is not None
        self.asn_table = asn_table
        self.lock_timeout = lock_timeout
        self.closing = threading.Event()
        # topology, groups and maps: small, changed rarely; their own lock
        self._state_lock = threading.Lock()
        self.topology: Topology | None = None
        self.groups: dict[str, AddressGroup] = {}
        self.maps: dict[str, ValueMap] = {}
        self._index: TopologyIndex | None = None
        self._index_key: tuple[int, int] | None = None
        self._topology_version = 0
        # HTTP figures (/analyzer/json, /metrics): touched on the event loop only
        self.requests_current = 0
        self.requests_total = 0
        self.requests_by: dict[tuple[str, str], int] = {}
        self._cpu_last: tuple[float, float, float, float] | None = None
        # what group:/map:/link:/node:/country:/asn: consult (sflow.keyfuncs)
        keyfuncs.register()
        self.keys = keyfuncs.KeyContext(self.groups, self.maps, None, asn_table)
        # the flow log of definitions with log: true (the engine feeds it)
        self.flow_log: FlowLog = getattr(engine, "flow_log", None) or FlowLog()
        register_http_collector(engine, self)
        self.app = self._build()

    # --- plumbing ----------------------------------------------------------------------

    def count_request(self, method: str, status: int) -> None:
        self.requests_total += 1
        key = (method, str(status))
        self.requests_by[key] = self.requests_by.get(key, 0) + 1

    def refuse_write(self, method: str, scope: Scope) -> Response | None:
        if self.readonly:
            return text_response("read-only engine: PUT and DELETE are disabled\n", 403)
        if not self.require_token:
            return None
        headers = dict(scope.get("headers") or [])
        raw = headers.get(b"authorization")
        authorization = raw.decode("latin-1") if raw is not None else None
        if self.tokens is None:
            return text_response("Authorization: this engine listens beyond loopback without "
                                 "a token file: writes are refused\n", 401,
                                 headers={"WWW-Authenticate": "Bearer"})
        who = self.tokens.who(authorization)
        if who is None:
            return text_response("Authorization: a valid 'Bearer <token>' is required to change "
                                 "this engine\n", 401, headers={"WWW-Authenticate": "Bearer"})
        scope.setdefault("state", {})["who"] = who
        return None

    async def read_body(self, request: Request) -> bytes:
        """The whole body (chunked or not), bounded in size and time; never partial."""
        declared = request.headers.get("content-length")
        if declared is not None:
            if not declared.strip().isdigit():
                raise ApiError(400, f"Content-Length: not a number: {declared!r}")
            if int(declared) > MAX_BODY:
                raise ApiError(413, f"body: larger than {MAX_BODY} bytes")
        chunks: list[bytes] = []
        size = 0

        async def collect() -> None:
            nonlocal size
            async for chunk in request.stream():
                size += len(chunk)
                if size > MAX_BODY:
                    raise ApiError(413, f"body: larger than {MAX_BODY} bytes")
                chunks.append(chunk)
        try:
            await asyncio.wait_for(collect(), BODY_TIMEOUT)
        except asyncio.TimeoutError:
            raise ApiError(408, f"body: not received within {BODY_TIMEOUT:g} s") from None
        return b"".join(chunks)

    # --- app ------------------------------------------------------------------------------

    def _build(self) -> ASGIApp:
        routes = [
            Route("/version", self.version, methods=["GET"]),
            Route("/flow/json", self.flows_all, methods=["GET"]),
            Route("/flow/{name}/json", self.flow, methods=["GET", "PUT", "POST", "DELETE"]),
            Route("/threshold/json", self.thresholds_all, methods=["GET"]),
            Route("/threshold/{name}/json", self.threshold,
                  methods=["GET", "PUT", "POST", "DELETE"]),
            Route("/events/json", self.events, methods=["GET"]),
            Route("/activeflows/{agent}/{name}/json", self.activeflows, methods=["GET"]),
            Route("/metric/{agent}/{metrics}/json", self.metric, methods=["GET"]),
            Route("/metric/{agent}/json", self.agent_metrics, methods=["GET"]),
            Route("/metrics/json", self.metric_names, methods=["GET"]),
            Route("/dump/{agent}/{metrics}/json", self.dump, methods=["GET"]),
            Route("/table/{agent}/{metrics}/json", self.table, methods=["GET"]),
            Route("/flowvalue/{agent}/{name}/json", self.flowvalue, methods=["GET"]),
            Route("/flowlocations/{agent}/{name}/json", self.flowlocations, methods=["GET"]),
            Route("/flows/json", self.flows_log, methods=["GET"]),
            Route("/prometheus/metrics/{agent}/{metrics}/txt", self.prometheus_metrics,
                  methods=["GET"]),
            Route("/prometheus/analyzer/txt", self.prometheus_analyzer, methods=["GET"]),
            Route("/metrics", self.own_metrics, methods=["GET"]),
            Route("/agents/json", self.agents, methods=["GET"]),
            Route("/flowkeys/json", self.flowkeys, methods=["GET"]),
            Route("/analyzer/json", self.analyzer, methods=["GET"]),
            Route("/demon/portmap/json", self.portmap, methods=["GET"]),
            Route("/topology/json", self.topology_route, methods=["GET", "PUT", "POST", "DELETE"]),
            Route("/group/json", self.groups_all, methods=["GET"]),
            Route("/group/{name}/json", self.group, methods=["GET", "PUT", "POST", "DELETE"]),
            Route("/map/json", self.maps_all, methods=["GET"]),
            Route("/map/{name}/json", self.map, methods=["GET", "PUT", "POST", "DELETE"]),
        ]
        app = Starlette(routes=routes, exception_handlers={
            ApiError: self._api_error,
            MetricError: self._definition_error,
            DefinitionError: self._definition_error,
            HTTPException: self._http_exception,
            ClientDisconnect: self._disconnect,
            Exception: self._internal_error,
        })
        return _Guard(app, self)

    async def _api_error(self, request: Request, exc: Exception) -> Response:
        assert isinstance(exc, ApiError)
        return text_response(error_line(exc.message), exc.status, exc.headers)

    async def _definition_error(self, request: Request, exc: Exception) -> Response:
        return text_response(error_line(str(exc)), 400)

    async def _http_exception(self, request: Request, exc: Exception) -> Response:
        assert isinstance(exc, HTTPException)
        if exc.status_code == 404:
            return text_response(error_line(f"no such resource: {request.url.path}"), 404)
        if exc.status_code == 405:
            return text_response(error_line(f"{request.method} not allowed on "
                                            f"{request.url.path}"), 405, dict(exc.headers or {}))
        return text_response(error_line(str(exc.detail)), exc.status_code,
                             dict(exc.headers or {}))

    async def _disconnect(self, request: Request, exc: Exception) -> Response:
        # the client went away mid-body: nothing was applied, and nobody reads this
        return text_response("body: incomplete (client disconnected)\n", 400)

    async def _internal_error(self, request: Request, exc: Exception) -> Response:
        log.error("error serving %s %s", request.method, request.url.path, exc_info=exc)
        return text_response("internal error\n", 500)
