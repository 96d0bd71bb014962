"""The engine's HTTP API: the engine's own status (``/agents/json``,
``/flowkeys/json``, ``/analyzer/json`` and its Prometheus form, the port map
``/demon/portmap/json``) and our own metrics (``GET /metrics``,
``pytapdemon_engine_*``).
"""

from __future__ import annotations

import json
import os
import time
from typing import Any, Callable

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response

from sflow import promexport
from sflow.counters import port_map_rows
from sflow.engine import Engine
from sflow.httpbase import EngineAccess, Query, json_response

__all__ = ["StatusRoutes", "register_http_collector"]


class StatusRoutes(EngineAccess):
    """Status figures of the engine, its collector and its HTTP server."""

    extra_analyzer: Callable[[], dict[str, Any]] | None
    # HTTP figures (/analyzer/json, /metrics): touched on the event loop only
    requests_current: int
    requests_total: int
    requests_by: dict[tuple[str, str], int]
    _cpu_last: tuple[float, float, float, float] | None

    async def agents(self, request: Request) -> Response:
        only = set(Query(request).all("agent")) or None
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

    async def prometheus_analyzer(self, request: Request) -> Response:
        body = await self.analyzer_body()
        return Response(promexport.analyzer_text(body), media_type=promexport.CONTENT_TYPE)

    async def own_metrics(self, request: Request) -> Response:
        """Our own metrics (``pytapdemon_engine_*``): the engine's collector and HTTP requests."""
        from prometheus_client import generate_latest
        registry = self.engine.metrics_registry
        return Response(await run_in_threadpool(generate_latest, registry),
                        media_type=promexport.CONTENT_TYPE)


def register_http_collector(engine: Engine, api: StatusRoutes) -> None:
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
