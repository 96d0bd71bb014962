"""The engine's Prometheus metrics: a custom collector read at scrape time.

Nothing is added to the ingest hot path: the collector reads the counters the
engine keeps anyway (``Stats``, the agents' running totals, the flow tables'
sizes, eviction counts, the last event id), under the engine lock for a
moment. One ``CollectorRegistry`` per engine (``Engine.metrics_registry``);
the HTTP layer serves it at ``GET /metrics`` (``prometheus_client.generate_latest``).

Names follow the project's conventions (``pytapdemon_engine_...``); labels are
bounded: ``reason`` (decode error slugs), ``kind``, ``agent`` (at most
``max_agents``), ``flow`` (definition names, at most ``MAX_FLOW_DEFINITIONS``),
``map``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Iterator

from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

if TYPE_CHECKING:
    from sflow.engine import Engine

__all__ = ["EngineCollector", "engine_registry"]


class EngineCollector:
    """Reads one engine's counters when scraped."""

    def __init__(self, engine: "Engine") -> None:
        self.engine = engine

    def describe(self) -> list[Any]:
        return []  # no sample at registration: collect() reads the engine when scraped

    def collect(self) -> Iterator[Any]:
        engine = self.engine
        with engine.lock:
            stats = engine.stats
            datagrams, size, decoded = stats.datagrams, stats.bytes, stats.decoded
            flow_samples, counter_samples = stats.flow_samples, stats.counter_samples
            dropped = dict(stats.dropped)
            agents = engine.agent_table.totals()
            flows = {name: table.count for name, table in engine.flows_table.tables.items()}
            evictions = engine.evictions()
            events = engine.last_event_id
            datasources = len(engine.counters.sources)
            compiled = engine.compiled
        p = "pytapdemon_engine_"
        c = CounterMetricFamily(p + "datagrams", "sFlow datagrams received (decoded or not)")
        c.add_metric([], datagrams)
        yield c
        c = CounterMetricFamily(p + "datagrams_decoded", "sFlow datagrams decoded and ingested")
        c.add_metric([], decoded)
        yield c
        c = CounterMetricFamily(p + "received_bytes", "bytes of sFlow datagrams received")
        c.add_metric([], size)
        yield c
        c = CounterMetricFamily(p + "samples", "sFlow samples ingested", labels=["kind"])
        c.add_metric(["flow"], flow_samples)
        c.add_metric(["counter"], counter_samples)
        yield c
        c = CounterMetricFamily(p + "decode_errors", "datagrams dropped, by reason",
                                labels=["reason"])
        for reason, count in sorted(dropped.items()):
            c.add_metric([reason], count)
        yield c
        c = CounterMetricFamily(p + "lost_datagrams",
                                "datagrams missing from an agent's sequence numbers",
                                labels=["agent"])
        s = CounterMetricFamily(p + "lost_samples",
                                "samples missing from an agent's data-source sequence numbers",
                                labels=["agent", "kind"])
        for agent, (lost, flow_lost, counter_lost) in sorted(agents.items()):
            c.add_metric([agent], lost)
            s.add_metric([agent, "flow"], flow_lost)
            s.add_metric([agent, "counter"], counter_lost)
        yield c
        yield s
        g = GaugeMetricFamily(p + "active_flows", "flows tracked, per flow definition",
                              labels=["flow"])
        for name, count in sorted(flows.items()):
            g.add_metric([name], count)
        yield g
        c = CounterMetricFamily(p + "evictions", "entries dropped to keep state bounded",
                                labels=["map"])
        for name, count in sorted(evictions.items()):
            c.add_metric([name], count)
        yield c
        c = CounterMetricFamily(p + "events", "threshold events raised")
        c.add_metric([], events)
        yield c
        g = GaugeMetricFamily(p + "agents", "agents tracked")
        g.add_metric([], len(agents))
        yield g
        g = GaugeMetricFamily(p + "counter_datasources", "data sources with counters kept")
        g.add_metric([], datasources)
        yield g
        g = GaugeMetricFamily(p + "compiled_ingest", "1 if the compiled ingest kernel is in use")
        g.add_metric([], 1 if compiled else 0)
        yield g


def engine_registry(engine: "Engine") -> CollectorRegistry:
    """A registry holding only this engine's collector."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(EngineCollector(engine))
    return registry
