"""The engine's HTTP API: counter metrics and flow values as metrics
(``/metric``, ``/dump``, ``/table``, ``/metrics/json``) and InMon's Prometheus
scrape of them (``/prometheus/metrics/{agent}/{metric,...}/txt``).

What is copied under the engine lock is only the snapshot; rates, aggregations
and encoding run outside it, in a worker thread.
"""

from __future__ import annotations

import json
import re
from typing import Any, Callable

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response

from sflow import metricquery, promexport
from sflow.counters import metric_rows
from sflow.httpbase import ApiError, json_response
from sflow.httptopology import AgentSelection, TopologyRoutes

__all__ = ["MetricRoutes"]


class MetricRoutes(TopologyRoutes):
    """Counter metrics, flow metrics and their Prometheus export."""

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
