"""The embedded sFlow-RT-compatible analytics engine: flows, thresholds, events, agents.

Pure state with an injected clock: every method that depends on time takes
``now`` (seconds since the epoch, float) and nothing here reads a clock,
sleeps, locks or does I/O. The collector and the HTTP API own the clock and
serialise access through :attr:`Engine.lock` (a ``threading.Condition`` that is
notified when events are added).

Rates. A flow's value is a per-second rate of its ``value`` (bytes, frames...)
scaled by the sampling rate and smoothed with an exponential moving average
of time constant ``t`` (the definition's ``t``). Each sample contributes an
impulse; between samples the rate decays::

    rate <- rate * exp(-dt / t) + value * sampling_rate / t

so a steady stream of R units/s converges to R (the impulses' decaying tails
integrate to R), and a flow that stops falls to 1/e of its rate in ``t``
seconds. Storage: one float per flow, the rate expressed at a per-definition
reference time ``T`` (``stored = rate(now) * exp((now - T) / t)``), so an
update is ``stored += impulse * exp((now - T) / t)`` with no per-flow time,
samples may arrive out of time order, and ranking needs no decay at all. ``T``
moves forward (rescaling every flow) before the factor could overflow.

Thresholds are evaluated on every update of the flow they watch (so an event
is raised by the very sample that crosses; no tick delay). A threshold fires
when a flow's rate is strictly greater than its ``value``. Arming is per
(threshold, agent, dataSource) and, for ``byFlow`` thresholds, per flow key
too; once fired, it re-arms after the rate has stayed at or below the value
for ``timeout`` seconds (the time the rate fell below is computed exactly from
the decay: ``t_last + t * ln(rate / value)``). Without ``byFlow`` the metric
value of a data source is its largest flow (like ``/metric``'s ``topKeys[0]``).

Bounds. A flow whose rate has decayed below ``e^-IDLE_FACTOR`` (e^-10) of
the smallest impulse its definition has seen is idle and is evicted by
:meth:`Engine.tick` (a flow seen once goes after 10 ``t``; a big one after
10 ``t`` plus ``t * ln(size ratio)``). Each definition holds at most
``max_flows`` flows; on overflow the idle and then the smallest flows are
evicted down to 90 % of the cap. Events are a ring of ``max_events``; at
most ``max_agents`` agents are tracked (the least recently seen one, and its
ports, is forgotten to make room).

Two ways in, one effect: :meth:`Engine.ingest` takes a decoded ``Datagram``;
:meth:`Engine.ingest_compact` the collector's fast-path form
(``sflow.fastpath``): shared header keys and context per sample, the flow
key of each definition memoised on the shared header keys.
"""

from __future__ import annotations

import itertools
import math
import re
import threading
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Mapping

from sflow.decode import DecodeError, decode_datagram
from sflow.fastpath import CONTEXT_KEYS, Compact, full_keys, key_names, parse_compact
from sflow.flowdef import FlowDef, ThresholdDef
from sflow.model import CounterSample, Datagram, FlowSample

__all__ = ["Engine", "VERSION", "IDLE_FACTOR", "AGG_MODES"]

#: sFlow-RT's ``MAJOR.MINOR-BUILD`` shape; /analyzer/json says ``"engine": "demon-sflow"``.
VERSION = "3.0-100"
IDLE_FACTOR = 10.0
AGG_MODES = ("max", "sum", "avg", "edge", "core")
_SHRINK_TO = 0.9
_REBASE_AT = 200.0  # e^200 ~ 7e86: far from overflow, and rebasing stays rare
OFPP_LOCAL = 0xFFFE
_PER_SAMPLE_NAME = re.compile(r"(?<![a-z0-9_.])(bytes|frames|_rate)(?![a-z0-9_])",
                              re.IGNORECASE)
_CONTEXT_NAME = re.compile(rf"(?<![a-z0-9_.])({'|'.join(CONTEXT_KEYS)})(?![a-z0-9_])",
                           re.IGNORECASE)
_SKIP = object()
_TABLE_IDS = itertools.count()  # memo: the flow definition skips these keys

KeysFn = Callable[[str, FlowSample], dict[str, object]]
DataSourceFn = Callable[[FlowSample], str]


def _default_keys() -> tuple[KeysFn, DataSourceFn]:
    from sflow.keys import datasource_of, sample_keys
    return sample_keys, datasource_of


class _Source:
    """The flows of one definition at one (agent, dataSource): key -> stored rate."""

    __slots__ = ("flows", "last")

    def __init__(self, now: float) -> None:
        self.flows: dict[str, float] = {}
        self.last = now  # newest sample time


class _FlowTable:
    """Tracked flows of one definition, per (agent, dataSource).

    A stored rate is the rate at reference time ``ref`` (see the module
    docstring); ``scale(now)`` converts, cached for the last ``now`` asked
    (every sample of a datagram, or of a collector batch, shares it).
    """

    __slots__ = ("fd", "sources", "count", "thresholds", "last_sweep", "ref", "min_impulse",
                 "_scale_at", "_scale", "memo_scope", "value_kind", "uid")

    def __init__(self, fd: FlowDef) -> None:
        self.fd = fd
        self.sources: dict[tuple[str, str], _Source] = {}
        self.count = 0
        self.thresholds: list[ThresholdDef] = []
        self.last_sweep = 0.0
        self.ref: float | None = None
        self.min_impulse = math.inf
        self._scale_at = math.nan
        self._scale = 1.0
        # Compact samples (sflow.fastpath): the flow key is memoised on the shared
        # header keys (1: the definition reads no context key, 2: per context too)
        # unless its keys or filter read a per-sample key (0).
        text = " ".join(fd.keys) + " " + (fd.filter or "")
        self.memo_scope = (0 if _PER_SAMPLE_NAME.search(text)
                           else 2 if _CONTEXT_NAME.search(text) else 1)
        self.value_kind = {"bytes": 1, "frames": 2}.get(fd.value_key, 0)
        # memo key: a number, so that memos never keep a replaced table (and its flows) alive
        self.uid = next(_TABLE_IDS)

    def scale(self, now: float) -> float:
        """exp((now - ref) / t): stored value / scale = rate at ``now``."""
        if now == self._scale_at:
            return self._scale
        ref = self.ref
        if ref is None:
            ref = self.ref = now
        x = (now - ref) / self.fd.t
        if x > _REBASE_AT:
            self.rebase(now)
            value = 1.0
        elif x < -_REBASE_AT:  # the clock jumped far back: keep the rates as they were
            self.ref = now
            value = 1.0
        else:
            value = math.exp(x)
        self._scale_at, self._scale = now, value
        return value

    def rebase(self, now: float) -> None:
        factor = math.exp(-(now - self.ref) / self.fd.t) if self.ref is not None else 1.0
        for source in self.sources.values():
            flows = source.flows
            for key in flows:
                flows[key] *= factor
        self.ref = now
        self._scale_at = math.nan


@dataclass
class _SeqTracker:
    """Sequence-number bookkeeping for one sequence space."""

    last: int = -1
    lost: int = 0
    out_of_order: int = 0
    duplicates: int = 0

    def see(self, seq: int) -> None:
        last = self.last
        if last < 0 or seq == last + 1:
            self.last = seq
        elif seq > last + 1:
            self.lost += seq - last - 1
            self.last = seq
        elif seq == last:
            self.duplicates += 1
        elif seq <= 1 or last - seq > 1_000_000:
            self.last = seq  # the agent restarted its numbering
        else:
            self.out_of_order += 1


@dataclass
class _Agent:
    first_seen: float
    last_seen: float
    uptime: int = 0
    datagrams: int = 0
    flow_samples: int = 0
    counter_samples: int = 0
    sources: set[str] = field(default_factory=set)
    datagram_seq: dict[int, _SeqTracker] = field(default_factory=dict)
    flow_seq: dict[tuple[int, int, int], _SeqTracker] = field(default_factory=dict)
    counter_seq: dict[tuple[int, int, int], _SeqTracker] = field(default_factory=dict)
    flow_drops: dict[tuple[int, int, int], tuple[int, int]] = field(default_factory=dict)


@dataclass
class _Port:
    last_seen: float
    dpid: int | None = None
    of_port: int | None = None
    name: str | None = None
    ifspeed: int | None = None


class Engine:
    """Flow/threshold state fed with decoded datagrams; queried by the HTTP API."""

    def __init__(self, max_flows: int = 100_000, max_events: int = 10_000,
                 keys_fn: KeysFn | None = None, datasource_fn: DataSourceFn | None = None,
                 max_agents: int = 10_000) -> None:
        if max_flows < 10:
            raise ValueError(f"max_flows must be >= 10, got {max_flows}")
        self.max_agents = max(1, max_agents)
        self.lock = threading.Condition()
        self.max_flows = max_flows
        if keys_fn is None or datasource_fn is None:
            default_keys, default_ds = _default_keys()
            keys_fn = keys_fn or default_keys
            datasource_fn = datasource_fn or default_ds
        self._keys_fn = keys_fn
        self._datasource_fn = datasource_fn
        default_keys, default_ds = _default_keys()
        self._compact_ok = keys_fn is default_keys and datasource_fn is default_ds
        self._tables: dict[str, _FlowTable] = {}
        self._thresholds: dict[str, ThresholdDef] = {}
        self._fired: dict[tuple[str, str, str, str], float] = {}
        self._events: deque[dict[str, Any]] = deque(maxlen=max_events)
        self._next_event_id = 1
        self._agents: dict[str, _Agent] = {}
        self._ports: dict[tuple[str, int], _Port] = {}
        self._flow_keys: dict[str, float] = {}
        self.datagrams = 0
        self.bytes = 0
        self.decoded = 0
        self.samples = 0
        self.flow_samples = 0
        self.counter_samples = 0
        self.dropped: dict[str, int] = {}
        self.evicted = 0

    # --- definitions -----------------------------------------------------------------

    def set_flow(self, fd: FlowDef) -> None:
        """Define or replace a flow; an identical re-definition keeps its state."""
        old = self._tables.get(fd.name)
        if old is not None and old.fd == fd:
            return
        table = _FlowTable(fd)
        table.thresholds = [td for td in self._thresholds.values() if td.metric == fd.name]
        self._tables[fd.name] = table
        self._forget_fired(metric=fd.name)

    def delete_flow(self, name: str) -> bool:
        self._forget_fired(metric=name)
        return self._tables.pop(name, None) is not None

    def flow(self, name: str) -> FlowDef | None:
        table = self._tables.get(name)
        return table.fd if table else None

    def flows(self) -> dict[str, FlowDef]:
        return {name: table.fd for name, table in self._tables.items()}

    def set_threshold(self, td: ThresholdDef) -> None:
        old = self._thresholds.get(td.name)
        if old == td:
            return
        self.delete_threshold(td.name)
        self._thresholds[td.name] = td
        table = self._tables.get(td.metric)
        if table is not None:
            table.thresholds.append(td)

    def delete_threshold(self, name: str) -> bool:
        td = self._thresholds.pop(name, None)
        if td is None:
            return False
        table = self._tables.get(td.metric)
        if table is not None:
            table.thresholds = [t for t in table.thresholds if t.name != name]
        self._forget_fired(threshold=name)
        return True

    def threshold(self, name: str) -> ThresholdDef | None:
        return self._thresholds.get(name)

    def thresholds(self) -> dict[str, ThresholdDef]:
        return dict(self._thresholds)

    def _forget_fired(self, metric: str | None = None, threshold: str | None = None) -> None:
        names = {threshold} if threshold else {n for n, td in self._thresholds.items()
                                               if td.metric == metric}
        for arm in [a for a in self._fired if a[0] in names]:
            del self._fired[arm]

    # --- ingest ----------------------------------------------------------------------

    @property
    def takes_compact(self) -> bool:
        """True if :meth:`ingest_compact` may be used (the default flow keys are in use)."""
        return self._compact_ok

    def receive(self, payload: bytes, now: float, source: str = "") -> bool:
        """Decode one UDP payload and ingest it; a malformed one is counted. True if decoded."""
        if self._compact_ok:
            compact = parse_compact(payload)
            if compact is not None:
                self.ingest_compact(compact, now, source, len(payload))
                return True
        try:
            datagram = decode_datagram(payload)
        except DecodeError as exc:
            self.count_malformed(exc.reason, len(payload))
            return False
        self.ingest(datagram, now, source, len(payload))
        return True

    def count_malformed(self, reason: str, size: int) -> None:
        self.datagrams += 1
        self.bytes += size
        self.dropped[reason] = self.dropped.get(reason, 0) + 1

    def ingest(self, dg: Datagram, now: float, source: str = "", size: int = 0) -> None:
        """Account one decoded datagram and feed its samples to every flow definition.

        Should that fail (a bug, not bad input: the decoder vetted the datagram),
        the datagram is counted as dropped with reason ``ingest-error`` and the
        exception propagates.
        """
        self.datagrams += 1
        self.bytes += size
        try:
            self._ingest(dg, now, source)
        except Exception:
            self.dropped["ingest-error"] = self.dropped.get("ingest-error", 0) + 1
            raise
        self.decoded += 1

    def _account(self, agent_name: str, sub: int, sequence: int, uptime_ms: int, now: float,
                 source: str) -> _Agent:
        """The datagram's agent, its datagram counted and its sequence number checked."""
        agent = self._agents.get(agent_name)
        if agent is None:
            if len(self._agents) >= self.max_agents:
                self._forget_oldest_agent()
            agent = self._agents[agent_name] = _Agent(first_seen=now, last_seen=now)
        if agent.last_seen < now:
            agent.last_seen = now
        agent.uptime = uptime_ms
        agent.datagrams += 1
        if source and len(agent.sources) < 16:
            agent.sources.add(source)
        tracker = agent.datagram_seq.get(sub)
        if tracker is None:
            tracker = agent.datagram_seq[sub] = _SeqTracker()
        tracker.see(sequence)
        return agent

    def _ingest(self, dg: Datagram, now: float, source: str) -> None:
        agent_name = dg.agent or source
        agent = self._account(agent_name, dg.sub_agent_id, dg.sequence, dg.uptime_ms, now, source)
        flows = dg.flow_samples
        if flows:
            self._ingest_flows(agent_name, agent, dg.sub_agent_id, flows, now)
        if dg.counter_samples:
            self._ingest_counters(agent_name, agent, dg.sub_agent_id, dg.counter_samples, now)

    def _ingest_flows(self, agent_name: str, agent: _Agent, sub: int,
                      samples: list[FlowSample], now: float) -> None:
        n = len(samples)
        self.samples += n
        self.flow_samples += n
        agent.flow_samples += n
        flow_seq = agent.flow_seq
        tables = self._tables
        keys_fn = self._keys_fn
        ds_fn = self._datasource_fn
        add = self.add_sample
        first = True
        for sample in samples:
            sid = (sub, sample.source_class, sample.source_index)
            tracker = flow_seq.get(sid)
            if tracker is None:
                tracker = flow_seq[sid] = _SeqTracker()
            seq = sample.sequence
            if seq == tracker.last + 1:  # the common case, inline
                tracker.last = seq
            else:
                tracker.see(seq)
            if sample.drops:  # a cumulative counter: report the growth since first seen
                base = agent.flow_drops.get(sid, (sample.drops, 0))[0]
                agent.flow_drops[sid] = (base, sample.drops)
            if not tables:
                continue
            keys = keys_fn(agent_name, sample)
            if first:
                first = False
                for name in keys:
                    self._flow_keys[name] = now
            add(now, agent_name, ds_fn(sample), keys, sample.sampling_rate or 1)

    def ingest_compact(self, dg: Compact, now: float, source: str = "", size: int = 0) -> None:
        """:meth:`ingest` for a datagram from ``sflow.fastpath.parse_compact`` (same effect)."""
        self.datagrams += 1
        self.bytes += size
        try:
            self._ingest_compact(dg, now, source)
        except Exception:
            self.dropped["ingest-error"] = self.dropped.get("ingest-error", 0) + 1
            raise
        self.decoded += 1

    def _ingest_compact(self, dg: Compact, now: float, source: str) -> None:
        sub = dg.sub_agent_id
        agent = self._account(dg.agent or source, sub, dg.sequence, dg.uptime_ms, now, source)
        samples = dg.samples
        if not samples:
            return
        n = len(samples)
        self.samples += n
        self.flow_samples += n
        agent.flow_samples += n
        flow_seq = agent.flow_seq
        tables = self._tables.values() if self._tables else ()
        first = True
        for seq, src, rate, drops, header, context, frame_len in samples:
            sid = (sub, src >> 24, src & 0xFFFFFF)
            tracker = flow_seq.get(sid)
            if tracker is None:
                tracker = flow_seq[sid] = _SeqTracker()
            if seq == tracker.last + 1:
                tracker.last = seq
            else:
                tracker.see(seq)
            if drops:
                base = agent.flow_drops.get(sid, (drops, 0))[0]
                agent.flow_drops[sid] = (base, drops)
            if not tables:
                continue
            if first:
                first = False
                for name in key_names(header, context):
                    self._flow_keys[name] = now
            rate = rate or 1
            memo = header.memo
            full = None
            for table in tables:
                scope = table.memo_scope
                key = (memo.get(table.uid) if scope == 1
                       else memo.get((table.uid, context)) if scope else None)
                if key is None:
                    fd = table.fd
                    if scope == 1:
                        view = header.keys
                    else:
                        view = full = full or full_keys(header, context, frame_len, rate)
                    predicate = fd.predicate
                    if predicate is not None and not predicate(view):
                        key = _SKIP
                    else:
                        key = fd.flow_key(view)
                        if key is None:
                            key = _SKIP
                    if scope == 1:
                        memo[table.uid] = key
                    elif scope == 2:
                        memo[(table.uid, context)] = key
                if key is _SKIP:
                    continue
                kind = table.value_kind
                if kind == 1:
                    value = frame_len * table.fd.value_factor
                elif kind == 2:
                    value = table.fd.value_factor
                else:
                    if full is None:
                        full = full_keys(header, context, frame_len, rate)
                    value = table.fd.value_fn(full)
                    if value is None:
                        continue
                self._update(table, now, context.where, context.agent, context.datasource,
                             key, value, rate)

    def _ingest_counters(self, agent_name: str, agent: _Agent, sub: int,
                         samples: list[CounterSample], now: float) -> None:
        n = len(samples)
        self.samples += n
        self.counter_samples += n
        agent.counter_samples += n
        for sample in samples:
            sid = (sub, sample.source_class, sample.source_index)
            tracker = agent.counter_seq.get(sid)
            if tracker is None:
                tracker = agent.counter_seq[sid] = _SeqTracker()
            tracker.see(sample.sequence)
            if sample.source_class != 0:
                continue
            port = None
            for rec in sample.records:
                if rec.enterprise != 0 or rec.format not in (1, 1004, 1005):
                    continue
                if port is None:
                    port = self._ports.get((agent_name, sample.source_index))
                    if port is None:
                        port = self._ports[(agent_name, sample.source_index)] = _Port(now)
                    port.last_seen = max(port.last_seen, now)
                fields = rec.fields
                if rec.format == 1004:
                    port.dpid = fields.get("openflow_datapath_id", port.dpid)
                    port.of_port = fields.get("openflow_port", port.of_port)
                elif rec.format == 1005:
                    port.name = fields.get("ifName", port.name)
                else:
                    port.ifspeed = fields.get("ifSpeed", port.ifspeed)

    def _forget_oldest_agent(self) -> None:
        """Bound the per-agent state (agent addresses come from the datagrams)."""
        oldest = min(self._agents, key=lambda name: self._agents[name].last_seen)
        del self._agents[oldest]
        for port in [p for p in self._ports if p[0] == oldest]:
            del self._ports[port]

    def add_sample(self, now: float, agent: str, data_source: str,
                   keys: Mapping[str, Any], sampling_rate: float) -> None:
        """Feed one flow sample's keys (``sflow.keys.sample_keys``) to every flow definition."""
        where = (agent, data_source)
        for table in self._tables.values():
            fd = table.fd
            predicate = fd.predicate
            if predicate is not None and not predicate(keys):
                continue
            plain = fd.plain_keys
            if plain is not None:  # inline FlowDef.flow_key's fast path
                try:
                    key = fd.fs.join([keys[name] for name in plain])
                except (KeyError, TypeError):
                    key = fd.flow_key(keys)
            else:
                key = fd.flow_key(keys)
            if key is None:
                continue
            raw = keys.get(fd.value_key)
            if raw.__class__ is int or raw.__class__ is float:
                value = raw * fd.value_factor
            else:
                value = fd.value_fn(keys)
                if value is None:
                    continue
            self._update(table, now, where, agent, data_source, key, value, sampling_rate)

    def _update(self, table: _FlowTable, now: float, where: tuple[str, str], agent: str,
                data_source: str, key: str, value: float, sampling_rate: float) -> None:
        """Add one sample's impulse to a flow, then check the thresholds watching it."""
        impulse = value * sampling_rate / table.fd.t
        if impulse < table.min_impulse and impulse > 0:
            table.min_impulse = impulse
        scale = table.scale(now)
        source = table.sources.get(where)
        if source is None:
            source = table.sources[where] = _Source(now)
        elif source.last < now:
            source.last = now
        flows = source.flows
        stored = flows.get(key)
        if stored is None:
            stored = flows[key] = impulse * scale
            table.count += 1
            if table.count > self.max_flows:
                self._shrink(table, now)
        else:
            stored = flows[key] = stored + impulse * scale
        if table.thresholds:
            self._check(table, agent, data_source, key, stored / scale, now)

    def _check(self, table: _FlowTable, agent: str, data_source: str, key: str,
               rate: float, now: float) -> None:
        for td in table.thresholds:
            limit = td.value
            if rate <= limit:
                continue
            arm = (td.name, agent, data_source, key if td.by_flow else "")
            falls_below = now + table.fd.t * math.log(rate / limit) if limit > 0 else math.inf
            fell = self._fired.get(arm)
            if fell is not None and now - fell <= td.timeout:
                self._fired[arm] = max(fell, falls_below)  # still armed-off
                continue
            if td.filter and not td.matches(self.datasource_attributes(agent, data_source)):
                continue
            self._fired[arm] = falls_below
            event: dict[str, Any] = {
                "eventID": self._next_event_id, "timestamp": int(now * 1000),
                "thresholdID": td.name, "metric": td.metric, "agent": agent,
                "dataSource": data_source, "value": rate, "threshold": limit,
            }
            if td.by_flow:
                event["flowKey"] = key
            self._next_event_id += 1
            self._events.append(event)

    def datasource_attributes(self, agent: str, data_source: str) -> dict[str, Any]:
        """Attributes a threshold ``filter`` can select on: agent, ifindex, ifname, ifspeed."""
        attrs: dict[str, Any] = {"agent": agent, "datasource": data_source}
        if data_source.isdigit():
            attrs["ifindex"] = data_source
            port = self._ports.get((agent, int(data_source)))
            if port is not None:
                attrs.update(ifname=port.name, ifspeed=port.ifspeed)
        return attrs

    def _shrink(self, table: _FlowTable, now: float) -> None:
        self._evict_idle(table, now)
        target = int(self.max_flows * _SHRINK_TO)
        excess = table.count - target
        if excess <= 0:
            return
        # stored values share one scale: rank them as they are
        ranked = sorted(((stored, where, key) for where, source in table.sources.items()
                         for key, stored in source.flows.items()), key=lambda item: item[0])
        for _, where, key in ranked[:excess]:
            flows = table.sources[where].flows
            del flows[key]
            if not flows:
                del table.sources[where]
        table.count -= excess
        self.evicted += excess

    def _evict_idle(self, table: _FlowTable, now: float) -> None:
        floor = table.min_impulse * math.exp(-IDLE_FACTOR) * table.scale(now)
        removed = 0
        for where in list(table.sources):
            flows = table.sources[where].flows
            idle = [key for key, stored in flows.items() if stored < floor]
            for key in idle:
                del flows[key]
            removed += len(idle)
            if not flows:
                del table.sources[where]
        table.count -= removed
        self.evicted += removed
        table.last_sweep = now

    def tick(self, now: float) -> None:
        """Housekeeping (call about once a second): evict idle flows, re-arm thresholds."""
        for table in self._tables.values():
            if now - table.last_sweep >= max(1.0, table.fd.t):
                self._evict_idle(table, now)
        for arm, fell in list(self._fired.items()):
            td = self._thresholds.get(arm[0])
            if td is None or now - fell > td.timeout:
                del self._fired[arm]
        stale = now - 3600
        for name in [k for k, seen in self._flow_keys.items() if seen < stale]:
            del self._flow_keys[name]

    # --- queries ---------------------------------------------------------------------

    def flow_count(self, name: str | None = None) -> int:
        if name is not None:
            table = self._tables.get(name)
            return table.count if table else 0
        return sum(table.count for table in self._tables.values())

    def _rates(self, table: _FlowTable, agents: set[str] | None,
               now: float) -> Iterable[tuple[str, str, str, float, float]]:
        """(agent, dataSource, key, rate at now, data source's last update) of every flow."""
        inverse = 1.0 / table.scale(now) if table.ref is not None else 1.0
        for (agent, ds), source in table.sources.items():
            if agents is not None and agent not in agents:
                continue
            last = source.last
            for key, stored in source.flows.items():
                yield agent, ds, key, stored * inverse, last

    def active_flows(self, name: str, now: float, agents: set[str] | None = None,
                     max_flows: int = 100, min_value: float = 0.0,
                     agg_mode: str = "max") -> list[dict[str, Any]] | None:
        """Largest flows of definition ``name`` merged across data sources, value descending.

        ``agg_mode``: ``max`` reports a key once with its largest value (and where
        that was seen), ``sum`` adds its values, ``avg`` averages them; ``edge`` and
        ``core`` need a topology, which the embedded engine does not have, so they
        behave as ``max``. None if the flow is not defined.
        """
        table = self._tables.get(name)
        if table is None:
            return None
        merged: dict[str, list[Any]] = {}  # key -> [best, agent, ds, sum, count]
        for agent, ds, key, rate, _last in self._rates(table, agents, now):
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
            value = total if agg_mode == "sum" else total / count if agg_mode == "avg" else best
            if value >= min_value:
                out.append({"key": key, "value": value, "agent": agent, "dataSource": ds})
        out.sort(key=lambda rec: rec["value"], reverse=True)
        return out[:max_flows]

    def flow_metric(self, name: str, now: float, agents: set[str] | None = None,
                    data_source: str | None = None) -> dict[str, Any] | None:
        """A flow definition as an sFlow-RT ``Statistic`` (max over data sources, ``topKeys``)."""
        table = self._tables.get(name)
        if table is None:
            return None
        per_source: dict[tuple[str, str], list[tuple[float, str, float]]] = {}
        for agent, ds, key, rate, last in self._rates(table, agents, now):
            if data_source is None or ds == data_source:
                per_source.setdefault((agent, ds), []).append((rate, key, last))
        stat: dict[str, Any] = {"metricName": name, "metricN": len(per_source)}
        if not per_source:
            return stat
        best_where, best = max(per_source.items(), key=lambda item: max(item[1])[0])
        best.sort(reverse=True)
        ages = [now - max(r[2] for r in recs) for recs in per_source.values()]
        stat.update(agent=best_where[0], dataSource=best_where[1], metricValue=best[0][0],
                    lastUpdate=int(min(ages) * 1000), lastUpdateMin=int(min(ages) * 1000),
                    lastUpdateMax=int(max(ages) * 1000),
                    topKeys=[{"key": key, "value": rate, "lastUpdate": int((now - last) * 1000)}
                             for rate, key, last in best[:table.fd.n]])
        return stat

    @property
    def last_event_id(self) -> int:
        return self._next_event_id - 1

    def events(self, event_id: int = -1, max_events: int = 100,
               threshold_id: str | None = None) -> list[dict[str, Any]]:
        """Events newer than ``event_id``, newest first, at most ``max_events``.

        With ``event_id`` -1 these are the newest events; with a cursor they are
        the *oldest* ones after it, so a client that advances its cursor to the
        newest id it got never skips an event.
        """
        picked: list[dict[str, Any]] = []
        if max_events <= 0:
            return picked
        if event_id < 0:
            for event in reversed(self._events):
                if threshold_id is None or event["thresholdID"] == threshold_id:
                    picked.append(event)
                    if len(picked) >= max_events:
                        break
            return picked
        for event in self._events:
            if event["eventID"] > event_id and (threshold_id is None
                                                or event["thresholdID"] == threshold_id):
                picked.append(event)
                if len(picked) >= max_events:
                    break
        picked.reverse()
        return picked

    def agents(self, now: float, only: set[str] | None = None) -> dict[str, dict[str, Any]]:
        """``/agents/json``: per agent address, counters as sFlow-RT names them."""
        out = {}
        for name, ag in self._agents.items():
            if only is not None and name not in only:
                continue
            out[name] = {
                "sFlowDatagramsReceived": ag.datagrams,
                "sFlowDatagramsLost": sum(t.lost for t in ag.datagram_seq.values()),
                "sFlowDatagramsOutOfOrder": sum(t.out_of_order for t in ag.datagram_seq.values()),
                "sFlowDatagramsDuplicates": sum(t.duplicates for t in ag.datagram_seq.values()),
                "sFlowDatagramSource": sorted(ag.sources),
                "sFlowSubAgents": sorted(ag.datagram_seq),
                "sFlowFlowSamples": ag.flow_samples,
                "sFlowFlowLostSamples": sum(t.lost for t in ag.flow_seq.values()),
                "sFlowFlowOutOfOrderSamples": sum(t.out_of_order for t in ag.flow_seq.values()),
                "sFlowFlowDuplicateSamples": sum(t.duplicates for t in ag.flow_seq.values()),
                "sFlowFlowDrops": sum(d[1] - d[0] for d in ag.flow_drops.values()),
                "sFlowFlowDatasources": len(ag.flow_seq),
                "sFlowCounterSamples": ag.counter_samples,
                "sFlowCounterLostSamples": sum(t.lost for t in ag.counter_seq.values()),
                "sFlowCounterOutOfOrderSamples": sum(t.out_of_order for t in ag.counter_seq.values()),
                "sFlowCounterDuplicateSamples": sum(t.duplicates for t in ag.counter_seq.values()),
                "sFlowCounterDatasources": len(ag.counter_seq),
                "firstSeen": int((now - ag.first_seen) * 1000),
                "lastSeen": int((now - ag.last_seen) * 1000),
                "uptime": ag.uptime,
            }
        return out

    def analyzer(self) -> dict[str, Any]:
        """``/analyzer/json`` counters (the collector adds its socket figures)."""
        return {
            "version": VERSION,
            "engine": "demon-sflow",
            "sFlowDatagramsReceived": self.datagrams,
            "sFlowBytesReceived": self.bytes,
            "sFlowDatagramsDecoded": self.decoded,
            "sFlowDatagramsDropped": sum(self.dropped.values()),
            "sFlowDatagramsDroppedReasons": dict(sorted(self.dropped.items())),
            "sFlowSamplesReceived": self.samples,
            "sFlowFlowSamplesReceived": self.flow_samples,
            "sFlowCounterSamplesReceived": self.counter_samples,
            "sFlowAgents": len(self._agents),
            "activeFlows": self.flow_count(),
            "activeFlowsEvicted": self.evicted,
            "maxFlowsPerDefinition": self.max_flows,
            "events": self.last_event_id,
        }

    def port_map(self, now: float) -> list[dict[str, Any]]:
        """``/demon/portmap/json``: (agent, ifIndex) -> (dpid, OpenFlow port, name).

        A bridge's own port (OpenFlow ``LOCAL``, 65534) is left out: it is no
        switch port, so nothing can be tapped there.
        """
        out = []
        for (agent, if_index), port in sorted(self._ports.items()):
            if port.dpid is None and port.of_port is None and port.name is None:
                continue
            if port.of_port == OFPP_LOCAL:
                continue
            out.append({"agent": agent, "ifIndex": if_index, "dpid": port.dpid,
                        "dpidHex": None if port.dpid is None else f"{port.dpid:016x}",
                        "ofPort": port.of_port, "name": port.name,
                        "lastSeen": int((now - port.last_seen) * 1000)})
        return out

    def flow_keys(self, now: float) -> dict[str, int]:
        """``/flowkeys/json``: key names seen recently -> ms since last seen."""
        return {name: int((now - seen) * 1000) for name, seen in sorted(self._flow_keys.items())
                if not name.startswith("_")}
