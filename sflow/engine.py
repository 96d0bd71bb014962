"""The embedded sFlow-RT-compatible analytics engine: a thin facade over its parts.

Pure state with an injected clock: every method that depends on time takes
``now`` (seconds since the epoch, float) and nothing here reads a clock,
sleeps or does I/O. The collector and the HTTP API own the clock and
serialise access through :attr:`Engine.lock` (a ``threading.Condition``
notified when events are added): hold it around every call.

The parts, each a small module:

* ``sflow.ingest``      the one way in (payloads -> state; compiled or Python);
* ``sflow.flowtable``   flow definitions' tables: rates, top-N, eviction;
* ``sflow.agents``      agents, sequence accounting, bounded maps;
* ``sflow.counters``    counter samples per (agent, data source), metrics, port map;
* ``sflow.thresholds``  thresholds, arming, the event ring;
* ``sflow.metrics``     the Prometheus collector (``metrics_registry``).

Reads that may be large are split so the lock is held only for a copy:
``flow_snapshot``/``counter_snapshot`` under the lock, then the pure functions
``sflow.flowtable.active_flows``/``flow_metric`` and
``sflow.counters.metric_rows``/``port_map_rows`` outside it. The one-call
methods (``active_flows``, ``port_map``...) do both for callers that hold the
lock anyway.
"""

from __future__ import annotations

import threading
from typing import Any, Iterable, Mapping

from sflow.agents import AgentTable
from sflow.counters import MAX_DATASOURCES, CounterSource, CounterStore, port_map_rows
from sflow.fastpath import split_keys
from sflow.flowdef import DefinitionError, FlowDef, ThresholdDef
from sflow.flowlog import FlowLog
from sflow.flowtable import AGG_MODES, IDLE_FACTOR, FlowSnapshot, FlowTables, active_flows, flow_metric
from sflow.ingest import DataSourceFn, Ingest, KeysFn, Stats
from sflow.model import Datagram
from sflow.thresholds import Thresholds

__all__ = ["Engine", "VERSION", "IDLE_FACTOR", "AGG_MODES", "MAX_FLOW_DEFINITIONS",
           "MAX_THRESHOLDS"]

#: sFlow-RT's ``MAJOR.MINOR-BUILD`` shape; /analyzer/json says ``"engine": "demon-sflow"``.
VERSION = "3.0-100"
#: at most this many flow definitions and thresholds (issue 14 #7: every definition
#: costs on every sample; 3,000 of them dropped ingest to ~35 datagrams/s)
MAX_FLOW_DEFINITIONS = 256
MAX_THRESHOLDS = 256
#: counter data sources not updated for this long are forgotten (s)
COUNTER_TTL = 3600.0


class Engine:
    """Flow/threshold/counter state fed with sFlow datagrams; queried by the HTTP API."""

    def __init__(self, max_flows: int = 100_000, max_events: int = 10_000,
                 keys_fn: KeysFn | None = None, datasource_fn: DataSourceFn | None = None,
                 max_agents: int = 10_000, max_datasources: int = MAX_DATASOURCES,
                 max_flow_definitions: int = MAX_FLOW_DEFINITIONS,
                 max_thresholds: int = MAX_THRESHOLDS, compiled: bool = True) -> None:
        self.lock = threading.Condition()
        self.max_flows = max_flows
        self.max_flow_definitions = max_flow_definitions
        self.max_thresholds = max_thresholds
        self.stats = Stats()
        self.agent_table = AgentTable(max_agents=max_agents)
        self.flows_table = FlowTables(max_flows)
        self.threshold_table = Thresholds(max_events)
        self.counters = CounterStore(max_datasources)
        self.flows_table.thresholds = self.threshold_table
        #: records of ``log: true`` definitions (``/flows/json``)
        self.flow_log = FlowLog()
        self.flows_table.flow_log = self.flow_log
        self.threshold_table.attributes = self.counters.attributes
        self.agent_table.on_forget.append(self.counters.forget_agent)
        self.ingester = Ingest(self.stats, self.agent_table, self.flows_table,
                               self.threshold_table, self.counters, keys_fn, datasource_fn,
                               use_compiled=compiled)
        self._registry: Any = None

    # --- definitions -----------------------------------------------------------------

    def set_flow(self, fd: FlowDef) -> None:
        """Define or replace a flow; an identical re-definition keeps its state.

        Raises ``DefinitionError`` (HTTP 400) beyond ``max_flow_definitions``.
        """
        tables = self.flows_table.tables
        if fd.name not in tables and len(tables) >= self.max_flow_definitions:
            raise DefinitionError(f"name: at most {self.max_flow_definitions} flow definitions; "
                                  "delete one first")
        if self.flows_table.set(fd, self.threshold_table.watching(fd.name)):
            self.threshold_table.forget(metric=fd.name)
        self.threshold_table.refresh(self.flows_table.tables)

    def delete_flow(self, name: str) -> bool:
        self.threshold_table.forget(metric=name)
        found = self.flows_table.delete(name)
        self.threshold_table.refresh(self.flows_table.tables)
        return found

    def flow(self, name: str) -> FlowDef | None:
        table = self.flows_table.tables.get(name)
        return table.fd if table else None

    def flows(self) -> dict[str, FlowDef]:
        return {name: table.fd for name, table in self.flows_table.tables.items()}

    def set_threshold(self, td: ThresholdDef) -> None:
        """Define or replace a threshold (``DefinitionError`` beyond ``max_thresholds``)."""
        defs = self.threshold_table.defs
        if defs.get(td.name) == td:
            return
        if td.name not in defs and len(defs) >= self.max_thresholds:
            raise DefinitionError(f"name: at most {self.max_thresholds} thresholds; "
                                  "delete one first")
        self.delete_threshold(td.name)
        defs[td.name] = td
        self.flows_table.watch(td.metric, self.threshold_table.watching(td.metric))
        self.threshold_table.refresh(self.flows_table.tables)

    def delete_threshold(self, name: str) -> bool:
        td = self.threshold_table.defs.get(name)
        if td is None:
            return False
        self.threshold_table.forget(threshold=name)
        del self.threshold_table.defs[name]
        self.flows_table.watch(td.metric, self.threshold_table.watching(td.metric))
        self.threshold_table.refresh(self.flows_table.tables)
        return True

    def threshold(self, name: str) -> ThresholdDef | None:
        return self.threshold_table.defs.get(name)

    def thresholds(self) -> dict[str, ThresholdDef]:
        return dict(self.threshold_table.defs)

    def key_functions_changed(self) -> None:
        """Forget every memoised flow key: call when data a registered key function reads
        (groups, maps, topology) changes, so samples are keyed anew."""
        self.flows_table.invalidate_memos()

    # --- ingest ----------------------------------------------------------------------

    @property
    def compiled(self) -> bool:
        """True if the compiled kernel (``sflow._ingest``) does the common datagrams."""
        return self.ingester.kernel is not None

    def receive(self, payload: bytes, now: float, source: str = "") -> bool:
        """Decode one UDP payload and ingest it; a malformed one is counted. True if decoded."""
        before = self.stats.decoded
        self.ingester.receive_batch([(payload, source)], now)
        return self.stats.decoded != before

    def receive_batch(self, batch: Iterable[tuple[bytes, str]], now: float) -> int:
        """Ingest (payload, source address) pairs; returns how many failed (bugs, logged)."""
        return self.ingester.receive_batch(batch, now)

    def count_malformed(self, reason: str, size: int) -> None:
        self.stats.malformed(reason, size)

    def ingest(self, dg: Datagram, now: float, source: str = "", size: int = 0) -> None:
        """Account one decoded datagram and feed its samples (an ``ingest-error`` propagates)."""
        self.ingester.ingest_datagram(dg, now, source, size)

    def add_sample(self, now: float, agent: str, data_source: str,
                   keys: Mapping[str, Any], sampling_rate: float) -> None:
        """Feed one flow sample's keys (``sflow.keys.sample_keys``) to every flow definition."""
        header, context, nbytes = split_keys(dict(keys), agent, data_source)
        tables = self.flows_table.active
        if tables:
            self.ingester._flow(tables, now, header, context, nbytes,
                                sampling_rate)  # type: ignore[arg-type]

    def tick(self, now: float) -> None:
        """Housekeeping (call about once a second): evict idle flows, re-arm thresholds."""
        self.flows_table.tick(now)
        self.threshold_table.tick(now)
        self.ingester.tick(now)
        self.counters.expire(now - COUNTER_TTL)

    # --- engine-wide counters (kept as attributes for callers and tests) ------------------

    @property
    def datagrams(self) -> int:
        return self.stats.datagrams

    @property
    def decoded(self) -> int:
        return self.stats.decoded

    @property
    def dropped(self) -> dict[str, int]:
        return self.stats.dropped

    @property
    def evicted(self) -> int:
        return self.flows_table.evicted

    @property
    def _fired(self) -> dict[Any, float]:  # tests look at the arming state
        return self.threshold_table.fired

    # --- queries ---------------------------------------------------------------------

    def flow_count(self, name: str | None = None) -> int:
        return self.flows_table.count(name)

    def flow_snapshot(self, name: str, now: float,
                      agents: Iterable[str] | None = None) -> FlowSnapshot | None:
        """Under the lock: a copy of one definition's flows (rank it outside)."""
        return self.flows_table.snapshot(name, now, agents)

    def active_flows(self, name: str, now: float, agents: set[str] | None = None,
                     max_flows: int = 100, min_value: float = 0.0,
                     agg_mode: str = "max") -> list[dict[str, Any]] | None:
        """Largest flows of definition ``name`` merged across data sources (None: undefined)."""
        snap = self.flow_snapshot(name, now, agents)
        return None if snap is None else active_flows(snap, max_flows, min_value, agg_mode)

    def flow_metric(self, name: str, now: float, agents: set[str] | None = None,
                    data_source: str | None = None) -> dict[str, Any] | None:
        """A flow definition as an sFlow-RT ``Statistic`` (max over data sources, ``topKeys``)."""
        snap = self.flow_snapshot(name, now, agents)
        return None if snap is None else flow_metric(snap, now, data_source)

    @property
    def last_event_id(self) -> int:
        return self.threshold_table.last_event_id

    def events(self, event_id: int = -1, max_events: int = 100,
               threshold_id: str | None = None) -> list[dict[str, Any]]:
        """Events newer than ``event_id``, newest first (see ``Thresholds.select``)."""
        return self.threshold_table.select(event_id, max_events, threshold_id)

    def agents(self, now: float, only: set[str] | None = None) -> dict[str, dict[str, Any]]:
        """``/agents/json``: per agent address, counters as sFlow-RT names them."""
        return self.agent_table.to_json(now, only)

    def counter_snapshot(self, agents: Iterable[str] | None = None) -> list[CounterSource]:
        """Under the lock: every data source's last two counter samples (read them outside:
        ``CounterSource.metrics()``, ``sflow.counters.metric_rows``/``port_map_rows``)."""
        return self.counters.snapshot(agents)

    def datasource_attributes(self, agent: str, data_source: str) -> dict[str, Any]:
        """Attributes a threshold ``filter`` can select on: agent, ifindex, ifname, ifspeed..."""
        return self.counters.attributes(agent, data_source)

    def analyzer(self) -> dict[str, Any]:
        """``/analyzer/json`` counters (the collector adds its socket figures)."""
        stats = self.stats
        return {
            "version": VERSION,
            "engine": "demon-sflow",
            "sFlowDatagramsReceived": stats.datagrams,
            "sFlowBytesReceived": stats.bytes,
            "sFlowDatagramsDecoded": stats.decoded,
            "sFlowDatagramsDropped": sum(stats.dropped.values()),
            "sFlowDatagramsDroppedReasons": dict(sorted(stats.dropped.items())),
            "sFlowSamplesReceived": stats.samples,
            "sFlowFlowSamplesReceived": stats.flow_samples,
            "sFlowCounterSamplesReceived": stats.counter_samples,
            "sFlowAgents": len(self.agent_table.agents),
            "activeFlows": self.flow_count(),
            "activeFlowsEvicted": self.evicted,
            "maxFlowsPerDefinition": self.max_flows,
            "events": self.last_event_id,
            "evictions": self.evictions(),
        }

    def evictions(self) -> dict[str, int]:
        """Entries dropped to keep state bounded, by map."""
        return {"flows": self.flows_table.evicted, **self.agent_table.evictions,
                "datasources": self.counters.evicted}

    def port_map(self, now: float) -> list[dict[str, Any]]:
        """``/demon/portmap/json``: (agent, ifIndex) -> (dpid, OpenFlow port, name)."""
        return port_map_rows(self.counter_snapshot(), now)

    def flow_keys(self, now: float) -> dict[str, int]:
        """``/flowkeys/json``: key names seen recently -> ms since last seen."""
        return self.ingester.flow_keys(now)

    @property
    def metrics_registry(self) -> Any:
        """A ``prometheus_client.CollectorRegistry`` of this engine (read at scrape time)."""
        if self._registry is None:
            from sflow.metrics import engine_registry
            self._registry = engine_registry(self)
        return self._registry

    @property
    def takes_compact(self) -> bool:  # kept for callers of the former fast-path switch
        return self.ingester.keys_fn is None and self.ingester.datasource_fn is None

