"""The engine's HTTP API: sFlow-RT's REST paths, JSON shapes, status codes and units.

A Starlette app (:class:`EngineAPI`, ``.app``) served by uvicorn through
``sflow.webserve.BackgroundServer``. The engine's state is read and changed
under its lock in a worker thread (never on the event loop), and the lock is
taken with a deadline: a request that cannot get it within
:data:`LOCK_TIMEOUT` answers 503 instead of piling up. Long polls
(``/events/json``, ``/flows/json``) wait *without* the lock: they watch the
engine's last event / flow-log id (a plain read) and take the lock only to
collect what arrived. Stopping never takes the engine lock.

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
import json
import logging
import math
import os
import re
import threading
import time
from dataclasses import dataclass
from typing import Any, Callable, Iterable

from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response
from starlette.routing import Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from sflow.auth import Tokens
from sflow.counters import metric_rows, port_map_rows
from sflow.engine import AGG_MODES, VERSION, Engine
from sflow.flowdef import DefinitionError, parse_flow, parse_threshold
from sflow.flowlog import FlowLog
from sflow.groups import MAX_SETS, AddressGroup, AsnTable, GroupError, ValueMap, parse_json_bytes
from sflow import keyfuncs, metricquery, promexport
from sflow.metricquery import MetricError
from sflow.topology import Topology, TopologyError, TopologyIndex

__all__ = ["EngineAPI", "ApiError", "MAX_LONG_POLL", "MAX_BODY", "BODY_TIMEOUT", "LOCK_TIMEOUT",
           "AgentSelection"]

log = logging.getLogger(__name__)

#: Upper bound on one long poll, seconds (clients use 20-60).
MAX_LONG_POLL = 300.0
#: Largest request body accepted (a topology of a big fabric fits).
MAX_BODY = 8 << 20
#: Seconds a client has to send its whole body once the headers are in.
BODY_TIMEOUT = 10.0
#: Seconds a request waits for the engine's lock before answering 503.
LOCK_TIMEOUT = 5.0
#: How often a pending long poll looks for news (a plain read, no lock).
POLL_STEP = 0.05
_WRITES = {"PUT", "POST", "DELETE"}
_TOKENS = {"ALL", "TOPOLOGY", "EDGE", "CORE"}
_TEXT = "text/plain; charset=utf-8"


class ApiError(Exception):
    """An HTTP error answered as ``text/plain`` (the message starts with the field)."""

    def __init__(self, status: int, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.headers = headers or {}


# --- small helpers ----------------------------------------------------------------------

class _Query:
    """Typed access to query parameters with 400s that name the parameter."""

    def __init__(self, request: Request) -> None:
        self.params = request.query_params

    def text(self, name: str) -> str | None:
        values = self.params.getlist(name)
        return values[-1] if values else None

    def all(self, name: str) -> list[str]:
        return self.params.getlist(name)

    def number(self, name: str, default: float, low: float = -math.inf,
               high: float = math.inf) -> float:
        raw = self.text(name)
        if raw is None or raw == "":
            return default
        try:
            value = float(raw)
        except ValueError:
            raise ApiError(400, f"{name}: expected a number, got {raw!r}") from None
        if not math.isfinite(value) or value < low:
            raise ApiError(400, f"{name}: must be a finite number >= {low:g}, got {raw!r}")
        return min(value, high)

    def integer(self, name: str, default: int, low: int = -(2 ** 62),
                high: int = 2 ** 62) -> int:
        return int(self.number(name, default, low, high))


def json_response(obj: Any, status: int = 200) -> Response:
    return Response(json.dumps(obj).encode(), status_code=status, media_type="application/json")


def text_response(text: str, status: int = 200, headers: dict[str, str] | None = None,
                  media_type: str = _TEXT) -> Response:
    return Response(text.encode(), status_code=status, media_type=media_type, headers=headers)


def no_content() -> Response:
    return Response(b"", status_code=204)


@dataclass(frozen=True)
class AgentSelection:
    """The ``{agent}`` path parameter: ``ALL``, ``TOPOLOGY``, ``EDGE``, ``CORE`` or ``a;b;c``.

    ``agents`` is the set of addresses (None: any); ``where`` further restricts
    (agent, dataSource) pairs for the topology tokens. With no topology loaded,
    ``TOPOLOGY`` and ``EDGE`` mean every data source (no link is known, so every
    port is an edge port) and ``CORE`` none.
    """

    token: str
    agents: frozenset[str] | None
    index: TopologyIndex | None

    def accepts(self, agent: str, data_source: str) -> bool:
        if self.agents is not None and agent not in self.agents:
            return False
        if self.index is None:
            return self.token != "CORE"
        if self.token == "EDGE":
            return not self.index.is_core(agent, data_source)
        if self.token == "CORE":
            return self.index.is_core(agent, data_source)
        return True

    @property
    def narrows(self) -> bool:
        """True when :meth:`accepts` is more than an agent-set test."""
        return self.token in ("TOPOLOGY", "EDGE", "CORE")


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

class EngineAPI:
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
        _register_http_collector(engine, self)
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

    def _locked(self, fn: Callable[..., Any], *args: Any) -> Any:
        lock = self.engine.lock
        if not lock.acquire(timeout=self.lock_timeout):
            raise ApiError(503, f"engine busy: its lock was not free within {self.lock_timeout:g} s")
        try:
            return fn(*args)
        finally:
            lock.release()

    async def engine_call(self, fn: Callable[..., Any], *args: Any) -> Any:
        """``fn(*args)`` under the engine lock, in a worker thread."""
        return await run_in_threadpool(self._locked, fn, *args)

    async def engine_json(self, fn: Callable[..., Any], *args: Any) -> Response:
        """``fn(*args)`` under the lock, encoded outside it, both off the event loop."""
        def work() -> bytes:
            return json.dumps(self._locked(fn, *args)).encode()
        return Response(await run_in_threadpool(work), media_type="application/json")

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

    @staticmethod
    def parse_json(raw: bytes) -> Any:
        try:
            # JSON whatever the Content-Type says (InMon's scripts often send none)
            return json.loads(raw or b"null")
        except (ValueError, RecursionError) as exc:
            raise ApiError(400, f"body: not JSON: {exc}") from None

    # --- topology ------------------------------------------------------------------------

    def topology_index(self) -> TopologyIndex | None:
        """The topology resolved against the port names agents report (cached)."""
        with self._state_lock:
            topo = self.topology
            version = self._topology_version
        if topo is None:
            return None
        names = self.engine_learned_names()
        key = (version, hash(names))
        with self._state_lock:
            if self._index_key == key and self._index is not None:
                return self._index
        index = topo.index(names)
        with self._state_lock:
            current = self._topology_version == version
            if current:
                self._index, self._index_key = index, key
        if current and (self.keys.index is None or self.keys.index.ports != index.ports):
            self.keys.index = index  # link:/node: see it at once; memoised keys are redone
            self.sets_changed()
        return index

    def engine_learned_names(self) -> tuple[tuple[str, int, str | None], ...]:
        """(agent, ifIndex, ifName) the agents reported (0:1005): a snapshot taken under
        the lock, read outside it."""
        snapshot = self._locked(self.engine.counter_snapshot)
        rows = port_map_rows(snapshot, self.clock())
        return tuple((row["agent"], row["ifIndex"], row["name"]) for row in rows if row["name"])

    def select_agents(self, text: str) -> AgentSelection:
        if text in _TOKENS:
            index = self.topology_index() if text != "ALL" else None
            agents = None
            if text == "TOPOLOGY" and index is not None:
                agents = frozenset(index.agents)
            return AgentSelection(text, agents, index)
        agents = frozenset(a for a in text.split(";") if a)
        if not agents:
            raise ApiError(400, f"agent: expected ALL or addresses separated by ';', got {text!r}")
        return AgentSelection("set", agents, None)

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
        return text_response(exc.message + "\n", exc.status, exc.headers)

    async def _definition_error(self, request: Request, exc: Exception) -> Response:
        return text_response(f"{exc}\n", 400)

    async def _http_exception(self, request: Request, exc: Exception) -> Response:
        assert isinstance(exc, HTTPException)
        if exc.status_code == 404:
            return text_response(f"no such resource: {request.url.path}\n", 404)
        if exc.status_code == 405:
            return text_response(f"{request.method} not allowed on {request.url.path}\n", 405,
                                 dict(exc.headers or {}))
        return text_response(f"{exc.detail}\n", exc.status_code, dict(exc.headers or {}))

    async def _disconnect(self, request: Request, exc: Exception) -> Response:
        # the client went away mid-body: nothing was applied, and nobody reads this
        return text_response("body: incomplete (client disconnected)\n", 400)

    async def _internal_error(self, request: Request, exc: Exception) -> Response:
        log.error("error serving %s %s", request.method, request.url.path, exc_info=exc)
        return text_response("internal error\n", 500)

    # --- definitions ------------------------------------------------------------------------

    async def version(self, request: Request) -> Response:
        return text_response(VERSION)

    async def flows_all(self, request: Request) -> Response:
        defs = await self.engine_call(self.engine.flows)
        return json_response({k: v.to_json() for k, v in defs.items()})

    async def thresholds_all(self, request: Request) -> Response:
        defs = await self.engine_call(self.engine.thresholds)
        return json_response({k: v.to_json() for k, v in defs.items()})

    async def flow(self, request: Request) -> Response:
        return await self._definition(request, "flow")

    async def threshold(self, request: Request) -> Response:
        return await self._definition(request, "threshold")

    async def _definition(self, request: Request, kind: str) -> Response:
        name = request.path_params["name"]
        engine = self.engine
        flows = kind == "flow"
        method = request.method
        if method in ("GET", "HEAD"):
            found = await self.engine_call(engine.flow if flows else engine.threshold, name)
            if found is None:
                raise ApiError(404, f"no {kind} named {name!r}")
            return json_response(found.to_json())
        if method == "DELETE":
            existed = await self.engine_call(engine.delete_flow if flows
                                             else engine.delete_threshold, name)
            if not existed:
                raise ApiError(404, f"no {kind} named {name!r}")
            return no_content()
        body = self.parse_json(await self.read_body(request))
        try:
            with keyfuncs.bound(self.keys):
                parsed = parse_flow(name, body) if flows else parse_threshold(name, body)
        except RecursionError:
            raise ApiError(400, "body: nested too deeply") from None
        await self.engine_call(engine.set_flow if flows else engine.set_threshold, parsed)
        return no_content()

    # --- events ----------------------------------------------------------------------------

    async def long_poll(self, fetch: Callable[[], Any], newest: Callable[[], int], cursor: int,
                        timeout: float) -> Any:
        """``fetch()`` (under the lock) until it finds something or ``timeout`` passes.

        Between tries it waits, without the lock, for ``newest()`` (a plain read
        of the last id) to pass ``cursor``; a stopping server ends it at once.
        """
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            found = await self.engine_call(fetch)
            if found or loop.time() >= deadline or self.closing.is_set():
                return found
            seen = newest()
            while loop.time() < deadline and not self.closing.is_set():
                await asyncio.sleep(min(POLL_STEP, max(0.0, deadline - loop.time())))
                if newest() != seen:
                    break

    async def events(self, request: Request) -> Response:
        q = _Query(request)
        cursor = q.integer("eventID", -1)
        max_events = q.integer("maxEvents", 100, low=0, high=100_000)
        timeout = q.number("timeout", 0, low=0, high=MAX_LONG_POLL)
        threshold_id = q.text("thresholdID") or None
        engine = self.engine
        events = await self.long_poll(lambda: engine.events(cursor, max_events, threshold_id),
                                      lambda: engine.last_event_id, cursor, timeout)
        return json_response(events)

    # --- flows -----------------------------------------------------------------------------

    async def activeflows(self, request: Request) -> Response:
        q = _Query(request)
        agg = (q.text("aggMode") or "max").lower()
        if agg not in AGG_MODES:
            raise ApiError(400, f"aggMode: expected one of {', '.join(AGG_MODES)}, got {agg!r}")
        if q.text("filter"):
            raise ApiError(400, "filter: not supported by the embedded engine")
        max_flows = q.integer("maxFlows", 100, low=0, high=1_000_000)
        min_value = q.number("minValue", 0)
        name = request.path_params["name"]
        selection = await run_in_threadpool(self.select_agents, request.path_params["agent"])
        if agg in ("edge", "core") and selection.index is None:
            index = await run_in_threadpool(self.topology_index)
            selection = AgentSelection(selection.token, selection.agents, index)
        now = self.clock()
        engine = self.engine

        def query() -> list[dict[str, Any]] | None:
            agents = None if selection.agents is None else set(selection.agents)
            if not selection.narrows and agg in ("max", "sum", "avg"):
                return engine.active_flows(name, now, agents, max_flows, min_value, agg)
            return _topology_active_flows(engine, name, now, selection, max_flows, min_value, agg)

        flows = await self.engine_call(query)
        if flows is None:
            raise ApiError(404, f"no flow named {name!r}")
        return json_response(flows)

    async def metric(self, request: Request) -> Response:
        selection = await run_in_threadpool(self.select_agents, request.path_params["agent"])
        metrics = request.path_params["metrics"]
        now = self.clock()
        engine = self.engine

        def query() -> list[dict[str, Any]]:
            out = []
            agents = None if selection.agents is None else set(selection.agents)
            for metric in metrics.split(","):
                data_source = None
                name = metric.split(":", 1)[1] if metric.startswith("max:") else metric
                match = re.fullmatch(r"([0-9.]+)\.([^.].*)", name)
                if engine.flow(name) is None and match and engine.flow(match.group(2)):
                    data_source, name = match.group(1), match.group(2)
                stat = engine.flow_metric(name, now, agents, data_source)
                if stat is None:
                    stat = {"metricName": metric, "metricN": 0}
                else:
                    stat["metricName"] = metric
                out.append(stat)
            return out
        return await self.engine_json(query)

    # --- monitoring ------------------------------------------------------------------------

    async def agents(self, request: Request) -> Response:
        only = set(_Query(request).all("agent")) or None
        now = self.clock()
        return await self.engine_json(self.engine.agents, now, only)

    async def flowkeys(self, request: Request) -> Response:
        return await self.engine_json(self.engine.flow_keys, self.clock())

    async def portmap(self, request: Request) -> Response:
        # issue 14 #6: only the copy under the lock; decoding the records outside it
        snapshot = await self.engine_call(self.engine.counter_snapshot)
        now = self.clock()
        body = await run_in_threadpool(lambda: json.dumps(port_map_rows(snapshot, now)).encode())
        return Response(body, media_type="application/json")

    async def analyzer(self, request: Request) -> Response:
        return json_response(await self.analyzer_body())

    async def analyzer_body(self) -> dict[str, Any]:
        body = await self.engine_call(self.engine.analyzer)
        if self.extra_analyzer is not None:
            body.update(self.extra_analyzer())
        body.update(self._process_figures())
        body.update(httpConnectionsCurrent=self.requests_current,
                    httpConnectionsTotal=self.requests_total, updateAvailable=False,
                    flowLogRecords=self.flow_log.last_id, flowLogOpen=self.flow_log.open_flows)
        return body

    def _process_figures(self) -> dict[str, Any]:
        """What sFlow-RT's status page reads besides the sFlow counters: CPU (fractions of
        one core's time since the previous call) and memory (RSS, and the machine's)."""
        times = os.times()
        now = time.monotonic()
        process = times.user + times.system
        system = _system_busy()
        out: dict[str, Any] = {"cpuLoadProcess": 0.0, "cpuLoadSystem": 0.0}
        if self._cpu_last is not None:
            t0, p0, s0, n0 = self._cpu_last
            if now > t0:
                out["cpuLoadProcess"] = max(0.0, (process - p0) / (now - t0) / (os.cpu_count() or 1))
            if system is not None and system[1] > n0:
                out["cpuLoadSystem"] = max(0.0, (system[0] - s0) / (system[1] - n0))
        self._cpu_last = (now, process, system[0] if system else 0.0, system[1] if system else 0.0)
        rss, total = _memory()
        out.update(heapUsed=rss, heapMax=total)
        return out

    # --- counter and flow metrics ----------------------------------------------------

    def rows(self, selection: AgentSelection, now: float, request: Request | None = None,
             flows: bool = True) -> list[dict[str, Any]]:
        """Per (agent, dataSource): counter metrics and flow definitions' values (a flow's
        value at a data source is its largest flow there). Copies under the lock, the
        rest outside it; runs in a worker thread."""
        engine = self.engine
        agents = None if selection.agents is None else set(selection.agents)

        def take() -> tuple[Any, dict[str, Any]]:
            snapshot = engine.counter_snapshot(agents)
            snaps = {}
            if flows:
                for name in engine.flows():
                    snaps[name] = engine.flow_snapshot(name, now, agents)
            return snapshot, snaps
        snapshot, snaps = self._locked(take)
        rows = metric_rows(snapshot, now)
        by_where = {(row["agent"], row["dataSource"]): row for row in rows}
        for name, snap in snaps.items():
            if snap is None:
                continue
            for agent, ds, table, last in snap.rows:
                if not table:
                    continue
                row = by_where.get((agent, ds))
                age = max(0, int((now - last) * 1000))
                if row is None:
                    row = by_where[(agent, ds)] = {"agent": agent, "dataSource": ds,
                                                   "lastUpdate": age, "metrics": {}}
                    rows.append(row)
                else:
                    row["lastUpdate"] = min(row["lastUpdate"], age)
                row["metrics"][name] = max(table.values()) * snap.inverse_scale
        conditions = _conditions(request) if request is not None else {}
        return [row for row in rows if selection.accepts(row["agent"], row["dataSource"])
                and (not conditions or metricquery.row_matches(row, conditions))]

    async def _rows_json(self, request: Request, build: Callable[[list[dict[str, Any]]], Any],
                         flows: bool = True) -> Response:
        selection = await run_in_threadpool(self.select_agents, request.path_params["agent"])
        now = self.clock()

        def work() -> bytes:
            return json.dumps(build(self.rows(selection, now, request, flows))).encode()
        return Response(await run_in_threadpool(work), media_type="application/json")

    def _specs(self, text: str) -> list[metricquery.MetricSpec]:
        known = list(self.engine.flows())
        return [metricquery.parse_metric(m, known) for m in _split_metrics(text)]

    async def dump(self, request: Request) -> Response:
        text = request.path_params["metrics"]
        specs = None if text == "ALL" else self._specs(text)
        return await self._rows_json(request, lambda rows: metricquery.dump(specs, rows))

    async def table(self, request: Request) -> Response:
        columns = _split_metrics(request.path_params["metrics"])
        known = list(self.engine.flows())
        metricquery.table(columns, [], known)  # refuse a bad column list before any work
        return await self._rows_json(request, lambda rows: metricquery.table(columns, rows, known))

    async def agent_metrics(self, request: Request) -> Response:
        agent = request.path_params["agent"]
        selection = await run_in_threadpool(self.select_agents, agent)
        now = self.clock()
        rows = await run_in_threadpool(self.rows, selection, now, request)
        if not rows and selection.token == "set":
            raise ApiError(404, f"no metrics from agent {agent!r}")
        return json_response(metricquery.agent_metrics(rows))

    async def metric_names(self, request: Request) -> Response:
        selection = AgentSelection("ALL", None, None)
        rows = await run_in_threadpool(self.rows, selection, self.clock())
        return json_response(metricquery.metric_ages(rows))

    async def metric(self, request: Request) -> Response:
        selection = await run_in_threadpool(self.select_agents, request.path_params["agent"])
        specs = self._specs(request.path_params["metrics"])
        now = self.clock()
        engine = self.engine
        conditions = _conditions(request)

        def work() -> bytes:
            out: list[dict[str, Any]] = []
            rows = None
            for spec in specs:
                fd = engine.flow(spec.name)
                if fd is not None and spec.agg == "max" and not conditions and not selection.narrows:
                    # a flow definition: its largest flow's data source, with topKeys
                    agents = None if selection.agents is None else set(selection.agents)
                    snap = self._locked(engine.flow_snapshot, spec.name, now, agents)
                    from sflow.flowtable import flow_metric
                    stat = (flow_metric(snap, now, spec.datasource) if snap is not None
                            else None) or {"metricN": 0}
                    stat["metricName"] = spec.text
                    out.append(stat)
                    continue
                if rows is None:
                    rows = self.rows(selection, now, request)
                out.append(metricquery.statistic(spec, rows))
            return json.dumps(out).encode()
        return Response(await run_in_threadpool(work), media_type="application/json")

    # --- flow values, locations, log -----------------------------------------------

    async def flowvalue(self, request: Request) -> Response:
        """``/flowvalue/{agent}/{ds.name}/json?key=K``: one flow's value at one data source."""
        agent = request.path_params["agent"]
        spec = metricquery.parse_metric(request.path_params["name"], list(self.engine.flows()))
        key = _Query(request).text("key")
        if key is None:
            raise ApiError(400, "key: required, the flow key (values joined with the flow's fs)")
        if spec.datasource is None:
            raise ApiError(400, f"name: expected <dataSource>.<flow>, e.g. 22.tcp, got {spec.text!r}")
        now = self.clock()
        snap = await self.engine_call(self.engine.flow_snapshot, spec.name, now, {agent})
        if snap is None:
            raise ApiError(404, f"no flow named {spec.name!r}")
        for a, ds, flow, rate, last in snap.rates():
            if ds == spec.datasource and flow == key:
                return json_response({"agent": a, "dataSource": ds, "metricName": spec.name,
                                      "key": key, "value": rate,
                                      "lastUpdate": max(0, int((now - last) * 1000))})
        raise ApiError(404, f"no flow {key!r} of {spec.name!r} at {agent} {spec.datasource}")

    async def flowlocations(self, request: Request) -> Response:
        """``/flowlocations/{agent}/{name}/json?key=K``: the data sources that see a flow,
        largest value first (all flows' locations without ``key``)."""
        name = request.path_params["name"]
        key = _Query(request).text("key")
        selection = await run_in_threadpool(self.select_agents, request.path_params["agent"])
        now = self.clock()
        agents = None if selection.agents is None else set(selection.agents)
        snap = await self.engine_call(self.engine.flow_snapshot, name, now, agents)
        if snap is None:
            raise ApiError(404, f"no flow named {name!r}")
        out = [{"agent": a, "dataSource": ds, "key": k, "value": rate}
               for a, ds, k, rate, _ in snap.rates()
               if (key is None or k == key) and selection.accepts(a, ds)]
        out.sort(key=lambda rec: rec["value"], reverse=True)
        return json_response(out)

    async def flows_log(self, request: Request) -> Response:
        q = _Query(request)
        cursor = q.integer("flowID", -1)
        max_flows = q.integer("maxFlows", 100, low=0, high=100_000)
        timeout = q.number("timeout", 0, low=0, high=MAX_LONG_POLL)
        name = q.text("name") or None
        log_ = self.flow_log
        records = await self.long_poll(lambda: log_.select(cursor, max_flows, name),
                                       lambda: log_.last_id, cursor, timeout)
        return json_response(records)

    # --- Prometheus -------------------------------------------------------------------

    async def prometheus_metrics(self, request: Request) -> Response:
        text = request.path_params["metrics"]
        names = None if text == "ALL" else [s.name for s in self._specs(text)]
        selection = await run_in_threadpool(self.select_agents, request.path_params["agent"])
        now = self.clock()

        def work() -> bytes:
            rows = self.rows(selection, now, request)
            hosts = {row["agent"]: row["metrics"]["host_name"] for row in rows
                     if isinstance(row["metrics"].get("host_name"), str)}
            return promexport.metrics_text(names, rows, hosts)
        return Response(await run_in_threadpool(work), media_type=promexport.CONTENT_TYPE)

    async def prometheus_analyzer(self, request: Request) -> Response:
        body = await self.analyzer_body()
        return Response(promexport.analyzer_text(body), media_type=promexport.CONTENT_TYPE)

    async def own_metrics(self, request: Request) -> Response:
        """Our own metrics (``pytapdemon_engine_*``): the engine's collector and HTTP requests."""
        from prometheus_client import generate_latest
        registry = self.engine.metrics_registry
        return Response(await run_in_threadpool(generate_latest, registry),
                        media_type=promexport.CONTENT_TYPE)

    # --- topology, groups, maps --------------------------------------------------------

    async def topology_route(self, request: Request) -> Response:
        method = request.method
        if method in ("GET", "HEAD"):
            with self._state_lock:
                topo = self.topology
            return json_response(topo.body if topo is not None else {})
        if method == "DELETE":
            await run_in_threadpool(self._set_topology, None)
            return no_content()
        raw = await self.read_body(request)
        try:
            topo = await run_in_threadpool(Topology.parse_bytes, raw)
        except TopologyError as exc:
            raise ApiError(400, str(exc)) from None
        except RecursionError:
            raise ApiError(400, "body: nested too deeply") from None
        await run_in_threadpool(self._set_topology, topo if topo else None)
        return no_content()

    def _set_topology(self, topo: Topology | None) -> None:
        with self._state_lock:
            self.topology = topo
            self._topology_version += 1
            self._index = self._index_key = None
        self.keys.index = None
        if topo is not None:
            self.topology_index()
        else:
            self.sets_changed()

    async def groups_all(self, request: Request) -> Response:
        with self._state_lock:
            return json_response({name: g.body for name, g in self.groups.items()})

    async def maps_all(self, request: Request) -> Response:
        with self._state_lock:
            return json_response({name: m.body for name, m in self.maps.items()})

    async def group(self, request: Request) -> Response:
        return await self._named_set(request, self.groups, "group", AddressGroup.parse)

    async def map(self, request: Request) -> Response:
        return await self._named_set(request, self.maps, "map", ValueMap.parse)

    async def _named_set(self, request: Request, store: dict[str, Any], kind: str,
                         parse: Callable[[Any], Any]) -> Response:
        name = request.path_params["name"]
        if not re.fullmatch(r"[A-Za-z0-9_.-]{1,100}", name):
            raise ApiError(400, f"name: {kind} name {name!r} must be 1-100 of A-Z a-z 0-9 _ . -")
        method = request.method
        if method in ("GET", "HEAD"):
            with self._state_lock:
                found = store.get(name)
            if found is None:
                raise ApiError(404, f"no {kind} named {name!r}")
            return json_response(found.body)
        if method == "DELETE":
            with self._state_lock:
                found = store.pop(name, None)
            if found is None:
                raise ApiError(404, f"no {kind} named {name!r}")
            await run_in_threadpool(self.sets_changed)
            return no_content()
        raw = await self.read_body(request)

        def build() -> Any:
            return parse(parse_json_bytes(raw))
        try:
            parsed = await run_in_threadpool(build)
        except GroupError as exc:
            raise ApiError(400, str(exc)) from None
        except RecursionError:
            raise ApiError(400, "body: nested too deeply") from None
        with self._state_lock:
            if name not in store and len(store) >= MAX_SETS:
                raise ApiError(400, f"name: at most {MAX_SETS} {kind}s; delete one first")
            store[name] = parsed
        await run_in_threadpool(self.sets_changed)
        return no_content()

    def sets_changed(self) -> None:
        """Groups, maps or the topology changed: memoised flow keys are computed anew."""
        self._locked(self.engine.key_functions_changed)


def _topology_active_flows(engine: Engine, name: str, now: float, selection: AgentSelection,
                           max_flows: int, min_value: float,
                           agg: str) -> list[dict[str, Any]] | None:
    """``/activeflows`` for the topology tokens and the ``edge``/``core`` modes.

    ``edge``: only records from edge ports (no topology link end), summed over
    them (a flow entering the fabric is counted once, where it enters);
    ``core``: only inter-switch ports, the largest. Without a topology every
    port is an edge port.
    """
    rates = _flow_rates(engine, name, now)
    if rates is None:
        return None
    index = selection.index
    merged: dict[str, list[Any]] = {}  # key -> [best, agent, ds, sum, count]
    for agent, ds, key, rate in rates:
        if not selection.accepts(agent, ds):
            continue
        if agg in ("edge", "core"):
            core = index.is_core(agent, ds) if index is not None else False
            if core != (agg == "core"):
                continue
        rec = merged.get(key)
        if rec is None:
            merged[key] = [rate, agent, ds, rate, 1]
        else:
            if rate > rec[0]:
                rec[0], rec[1], rec[2] = rate, agent, ds
            rec[3] += rate
            rec[4] += 1
    out = []
    for key, (best, agent, ds, total, count) in merged.items():
        value = (total if agg in ("sum", "edge") else total / count if agg == "avg" else best)
        if value >= min_value:
            out.append({"key": key, "value": value, "agent": agent, "dataSource": ds})
    out.sort(key=lambda rec: rec["value"], reverse=True)
    return out[:max_flows]


def _flow_rates(engine: Engine, name: str,
                now: float) -> Iterable[tuple[str, str, str, float]] | None:
    """(agent, dataSource, key, rate) of every flow of definition ``name``."""
    snap = engine.flow_snapshot(name, now)
    if snap is None:
        return None
    return [(agent, ds, key, rate) for agent, ds, key, rate, _ in snap.rates()]


def _split_metrics(text: str) -> list[str]:
    """A metric list: comma-separated (the REST form) or ';' (the JS API's dump form)."""
    parts = [m for m in re.split(r"[,;]", text) if m]
    if not parts:
        raise ApiError(400, f"metric: expected metric names separated by ',', got {text!r}")
    return parts


def _conditions(request: Request) -> dict[str, list[str]]:
    """Query parameters of metric URLs: data-source attribute filters (``?ifspeed=1e9``)."""
    params = request.query_params
    if "filter" in params:
        raise ApiError(400, "filter: not supported by the embedded engine; give attributes "
                            "as query parameters (?ifspeed=1000000000)")
    return {name: params.getlist(name) for name in params.keys()}


def _register_http_collector(engine: Engine, api: "EngineAPI") -> None:
    """Count HTTP requests in the engine's registry (read when scraped)."""
    from prometheus_client.core import CounterMetricFamily

    class _Http:
        def describe(self) -> list[Any]:
            return []

        def collect(self) -> Any:
            family = CounterMetricFamily("pytapdemon_engine_http_requests",
                                         "HTTP requests answered by the engine's API",
                                         labels=["method", "code"])
            for (method, code), count in sorted(dict(api.requests_by).items()):
                family.add_metric([method, code], count)
            yield family
    registry = engine.metrics_registry
    previous = getattr(engine, "_http_collector", None)
    if previous is not None:
        registry.unregister(previous)
    collector = _Http()
    registry.register(collector)
    engine._http_collector = collector  # type: ignore[attr-defined]


def _system_busy() -> tuple[float, float] | None:
    """(busy jiffies, total jiffies) of the whole machine from /proc/stat."""
    try:
        with open("/proc/stat", encoding="ascii") as fh:
            fields = fh.readline().split()[1:]
    except OSError:
        return None
    values = [float(v) for v in fields]
    idle = values[3] + (values[4] if len(values) > 4 else 0.0)
    return sum(values) - idle, sum(values)


def _memory() -> tuple[int, int]:
    """(this process's RSS, the machine's memory) in bytes (0 when unknown)."""
    rss = total = 0
    try:
        with open("/proc/self/statm", encoding="ascii") as fh:
            rss = int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
        total = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        pass
    return rss, total

