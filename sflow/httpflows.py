"""The engine's HTTP API: flow and threshold definitions, events, active flows,
flow values and locations, and the flow log.

Long polls (``/events/json``, ``/flows/json``) wait *without* the engine lock:
they watch the engine's last event / flow-log id (a plain read) and take the
lock only to collect what arrived.
"""

from __future__ import annotations

import asyncio
from typing import Any, Callable, Iterable, Iterator

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response

from sflow import keyfuncs, metricquery
from sflow.engine import AGG_MODES, VERSION, Engine
from sflow.flowdef import parse_flow, parse_threshold
from sflow.flowtable import merge_flow_rates
from sflow.httpbase import ApiError, Query, json_response, no_content, text_response
from sflow.httptopology import AgentSelection, TopologyRoutes

__all__ = ["FlowRoutes", "MAX_LONG_POLL", "POLL_STEP"]

#: Upper bound on one long poll, seconds (clients use 20-60).
MAX_LONG_POLL = 300.0
#: How often a pending long poll looks for news (a plain read, no lock).
POLL_STEP = 0.05


class FlowRoutes(TopologyRoutes):
    """Definitions, events, flows and the flow log."""

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
        q = Query(request)
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
        q = Query(request)
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

    # --- flow values, locations, log -----------------------------------------------

    async def flowvalue(self, request: Request) -> Response:
        """``/flowvalue/{agent}/{ds.name}/json?key=K``: one flow's value at one data source."""
        agent = request.path_params["agent"]
        spec = metricquery.parse_metric(request.path_params["name"], list(self.engine.flows()))
        key = Query(request).text("key")
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
        key = Query(request).text("key")
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
        q = Query(request)
        cursor = q.integer("flowID", -1)
        max_flows = q.integer("maxFlows", 100, low=0, high=100_000)
        timeout = q.number("timeout", 0, low=0, high=MAX_LONG_POLL)
        name = q.text("name") or None
        log_ = self.flow_log
        records = await self.long_poll(lambda: log_.select(cursor, max_flows, name),
                                       lambda: log_.last_id, cursor, timeout)
        return json_response(records)


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

    def rows() -> Iterator[tuple[str, str, str, float]]:
        for agent, ds, key, rate in rates:
            if not selection.accepts(agent, ds):
                continue
            if agg in ("edge", "core"):
                core = index.is_core(agent, ds) if index is not None else False
                if core != (agg == "core"):
                    continue
            yield agent, ds, key, rate

    mode = "sum" if agg in ("sum", "edge") else "avg" if agg == "avg" else "max"
    return merge_flow_rates(rows(), mode, max_flows, min_value)


def _flow_rates(engine: Engine, name: str,
                now: float) -> Iterable[tuple[str, str, str, float]] | None:
    """(agent, dataSource, key, rate) of every flow of definition ``name``."""
    snap = engine.flow_snapshot(name, now)
    if snap is None:
        return None
    return [(agent, ds, key, rate) for agent, ds, key, rate, _ in snap.rates()]
