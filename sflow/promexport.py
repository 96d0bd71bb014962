"""Prometheus exposition of sFlow-RT's metrics, as InMon's Grafana stack scrapes them.

* ``/prometheus/metrics/{agent}/{metric,...}/txt`` (InMon's ``prometheus-grafana``
  compose stack scrapes ``/prometheus/metrics/ALL/ifinutilization,ifoututilization,
  ifinerrors,ifouterrors,ifindiscards,ifoutdiscards/txt`` and relabels
  ``agent`` + ``datasource`` into ``instance``): one gauge per metric named
  ``sflow_<metric>`` (characters outside ``[A-Za-z0-9_]`` become ``_``, as
  InMon's exporter does), a series per data source labelled ``agent``,
  ``datasource``, and ``ifname`` / ``host`` where the agent reported them
  (sFlow-RT's own example: ``sflow_load_one{agent="10.0.0.200",datasource="2.1",
  host="cl-leaf1"} 0.1``). Text metrics are left out (Prometheus values are numbers).
* ``/prometheus/analyzer/txt``: the engine's own figures as ``sflow_analyzer_*``.

The text comes from ``prometheus_client``'s exposition (a registry built per
scrape from a collector over the rows), never written by hand.
"""

from __future__ import annotations

import math
import re
from typing import Any, Iterable, Mapping, Sequence

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import GaugeMetricFamily

__all__ = ["metrics_text", "analyzer_text", "prometheus_name", "CONTENT_TYPE"]

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
PREFIX = "sflow_"
_BAD = re.compile(r"[^a-zA-Z0-9_]")
Row = Mapping[str, Any]


def prometheus_name(metric: str) -> str:
    return PREFIX + _BAD.sub("_", metric)


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    value = float(value)
    return value if math.isfinite(value) else None


class _Snapshot:
    """A one-shot collector over families built beforehand."""

    def __init__(self, families: list[Any]) -> None:
        self.families = families

    def collect(self) -> Iterable[Any]:
        return iter(self.families)


def _expose(families: list[Any]) -> bytes:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Snapshot(families))  # type: ignore[arg-type]
    return generate_latest(registry)


def metrics_text(names: Sequence[str] | None, rows: Iterable[Row],
                 hosts: Mapping[str, str] | None = None) -> bytes:
    """Exposition of ``names`` (None: every numeric metric) over ``rows``.

    ``hosts``: agent → host name (from a host data source's ``host_name``), added
    as the ``host`` label.
    """
    hosts = hosts or {}
    series: dict[str, list[tuple[dict[str, str], float]]] = {}
    order: list[str] = list(names) if names is not None else []
    for row in rows:
        metrics = row["metrics"]
        labels = {"agent": row["agent"], "datasource": row["dataSource"]}
        ifname = metrics.get("ifname")
        if isinstance(ifname, str) and ifname:
            labels["ifname"] = ifname
        host = hosts.get(row["agent"])
        if host:
            labels["host"] = host
        wanted = names if names is not None else sorted(metrics)
        for name in wanted:
            value = _number(metrics.get(name))
            if value is None:
                continue
            if name not in series:
                series[name] = []
                if names is None:
                    order.append(name)
            series[name].append((labels, value))
    families = []
    seen: set[str] = set()
    for name in order:
        points = series.get(name)
        prom = prometheus_name(name)
        if not points or prom in seen:
            continue
        seen.add(prom)
        label_names = ["agent", "datasource"] + [n for n in ("ifname", "host")
                                                 if any(n in lb for lb, _ in points)]
        family = GaugeMetricFamily(prom, f"sFlow metric {name}", labels=label_names)
        for labels, value in points:
            family.add_metric([labels.get(n, "") for n in label_names], value)
        families.append(family)
    return _expose(families)


#: analyzer field -> (Prometheus name, kind, help). Both agent-count names are given:
#: sFlow-RT's own API example says ``sflow_analyzer_agents``; dashboards built on
#: sFlow-RT 3.x query ``sflow_analyzer_agent_count``.
_ANALYZER = [
    ("sFlowAgents", "sflow_analyzer_agents", "gauge", "sFlow agents seen"),
    ("sFlowAgents", "sflow_analyzer_agent_count", "gauge", "sFlow agents seen"),
    ("sFlowDatagramsReceived", "sflow_analyzer_received_datagrams", "counter",
     "sFlow datagrams received"),
    ("sFlowBytesReceived", "sflow_analyzer_received_bytes", "counter", "sFlow bytes received"),
    ("sFlowDatagramsDropped", "sflow_analyzer_discarded_datagrams", "counter",
     "sFlow datagrams discarded as malformed"),
    ("sFlowFlowSamplesReceived", "sflow_analyzer_flow_samples", "counter",
     "flow samples received"),
    ("sFlowCounterSamplesReceived", "sflow_analyzer_counter_samples", "counter",
     "counter samples received"),
    ("activeFlows", "sflow_analyzer_active_flows", "gauge", "flows tracked"),
    ("cpuLoadProcess", "sflow_analyzer_cpu_load_process", "gauge",
     "engine process CPU load (fraction)"),
    ("cpuLoadSystem", "sflow_analyzer_cpu_load_system", "gauge", "machine CPU load (fraction)"),
    ("heapUsed", "sflow_analyzer_heap_used_bytes", "gauge", "engine resident memory"),
    ("heapMax", "sflow_analyzer_heap_max_bytes", "gauge", "machine memory"),
    ("httpConnectionsCurrent", "sflow_analyzer_http_connections_current", "gauge",
     "HTTP requests in progress"),
    ("httpConnectionsTotal", "sflow_analyzer_http_connections", "counter", "HTTP requests served"),
    ("udpKernelDrops", "sflow_analyzer_udp_kernel_drops", "counter",
     "datagrams the kernel dropped on the sFlow socket"),
]


def analyzer_text(analyzer: Mapping[str, Any]) -> bytes:
    """``/prometheus/analyzer/txt`` from an ``/analyzer/json`` body."""
    families = []
    for field, name, kind, help_text in _ANALYZER:
        value = _number(analyzer.get(field))
        if value is None:
            continue
        # all gauges: sFlow-RT's names carry no _total (a counter would get one), and
        # PromQL's rate() reads a growing gauge just as well
        families.append(GaugeMetricFamily(name, f"{help_text} ({kind})", value=value))
    return _expose(families)
