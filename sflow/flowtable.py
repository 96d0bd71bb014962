"""The flow table: per flow definition, smoothed rates per (agent, dataSource, flow key).

Rates. A flow's value is a per-second rate of its ``value`` (bytes, frames...)
scaled by the sampling rate and smoothed with an exponential moving average
of time constant ``t``. Each sample contributes an impulse; between samples
the rate decays::

    rate <- rate * exp(-dt / t) + value * sampling_rate / t

so a steady stream of R units/s converges to R, and a flow that stops falls to
1/e of its rate in ``t`` seconds. Storage: one float per flow, the rate
expressed at a per-definition reference time ``ref`` (``stored = rate(now) *
exp((now - ref) / t)``), so an update is ``stored += impulse * exp((now -
ref) / t)`` with no per-flow time, samples may arrive out of time order, and
ranking needs no decay at all. ``ref`` moves forward (rescaling every flow)
before the factor could overflow.

Bounds. A flow whose rate has decayed below ``e^-IDLE_FACTOR`` of the
smallest impulse its definition has seen is idle and is evicted by
:meth:`FlowTables.tick`. Each definition holds at most ``max_flows`` flows; on
overflow the idle and then the smallest flows are evicted down to 90 %.

Flow keys of parsed samples (``sflow.fastpath``: shared :class:`HeaderKeys`
and :class:`Context` per sample) are memoised per table on the shared header
keys: for the table alone (``memo_scope`` 1: its keys and filter read no
context key), or per (table, context) (2); a definition that reads a
per-sample key (``bytes``, ``frames``, ``_rate``) gets them every time (0).
Key functions other modules register (``sflow.filterexpr.register_key_function``)
declare the keys they read, so their values are memoised the same way.

Reads take a :class:`FlowSnapshot` under the engine lock (copies of the flow
dicts) and rank outside it (:func:`active_flows`, :func:`flow_metric`).
"""

from __future__ import annotations

import itertools
import math
import re
from typing import Any, Iterable, NamedTuple

from sflow.fastpath import CONTEXT_KEYS, Context, HeaderKeys, full_keys
from sflow.filterexpr import implicit_reads
from sflow.flowdef import FlowDef, ThresholdDef
from sflow.flowlog import FlowLog, LogSpec

__all__ = ["FlowTable", "FlowTables", "FlowSnapshot", "active_flows", "flow_metric", "SKIP",
           "IDLE_FACTOR", "AGG_MODES"]

IDLE_FACTOR = 10.0
AGG_MODES = ("max", "sum", "avg", "edge", "core")
_SHRINK_TO = 0.9
_REBASE_AT = 200.0  # e^200 ~ 7e86: far from overflow, and rebasing stays rare
_PER_SAMPLE = {"bytes", "frames", "_rate"}
_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_.]*")
_TABLE_IDS = itertools.count()


class _Skip:
    """The memo value of "this sample is not counted in this table"."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "SKIP"


SKIP: Any = _Skip()


def memo_scope(fd: FlowDef) -> int:
    """0: the definition reads a per-sample key; 2: a context key; 1: header keys only."""
    text = " ".join(fd.keys) + " " + (fd.filter or "")
    names = {m.group(0).lower() for m in _NAME.finditer(text)} | implicit_reads(text)
    if fd.value_key not in ("bytes", "frames"):
        names.add(fd.value_key)  # read through value_fn on the full keys, never memoised
    if names & _PER_SAMPLE:
        return 0
    if names & set(CONTEXT_KEYS):
        return 2
    return 1


class FlowTable:
    """Tracked flows of one definition: ``sources[(agent, dataSource)] = [flows, last]``
    with ``flows`` mapping flow key -> stored rate and ``last`` the newest sample time."""

    __slots__ = ("fd", "sources", "count", "thresholds", "last_sweep", "ref", "min_impulse",
                 "_scale_at", "_scale", "memo_scope", "value_kind", "value_factor", "t",
                 "uid", "max_flows", "log_spec")

    def __init__(self, fd: FlowDef, max_flows: int) -> None:
        self.fd = fd
        #: the flow log's view of a ``log: true`` definition (sflow.flowlog), else None
        self.log_spec = (LogSpec(fd.name, fd.t, fd.active_timeout, fd.flow_start)
                         if fd.log else None)
        self.sources: dict[tuple[str, str], list[Any]] = {}
        self.count = 0
        self.thresholds: tuple[ThresholdDef, ...] = ()
        self.last_sweep = 0.0
        self.ref: float | None = None
        self.min_impulse = math.inf
        self._scale_at = math.nan
        self._scale = 1.0
        self.memo_scope = memo_scope(fd)
        self.value_kind = {"bytes": 1, "frames": 2}.get(fd.value_key, 0)
        self.value_factor = fd.value_factor
        self.t = fd.t
        # memo key: a number, so that memos never keep a replaced table (and its flows) alive
        self.uid = next(_TABLE_IDS)
        self.max_flows = max_flows

    def scale(self, now: float) -> float:
        """exp((now - ref) / t): stored value / scale = rate at ``now``."""
        if now == self._scale_at:
            return self._scale
        ref = self.ref
        if ref is None:
            ref = self.ref = now
        x = (now - ref) / self.t
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
        factor = math.exp(-(now - self.ref) / self.t) if self.ref is not None else 1.0
        for source in self.sources.values():
            flows = source[0]
            for key in flows:
                flows[key] *= factor
        self.ref = now
        self._scale_at = math.nan

    def compute_key(self, header: HeaderKeys, context: Context, nbytes: int | None,
                    rate: int) -> Any:
        """The flow key of a parsed sample in this table, or SKIP; memoised on the header."""
        scope = self.memo_scope
        view = header.keys if scope == 1 else full_keys(header, context, nbytes, rate)
        fd = self.fd
        predicate = fd.predicate
        if predicate is not None and not predicate(view):
            key = SKIP
        else:
            key = fd.flow_key(view)
            if key is None:
                key = SKIP
        if scope == 1:
            header.memo[self.uid] = key
        elif scope == 2:
            header.memo[(self.uid, context)] = key
        return key

    def new_uid(self) -> None:
        """Forget every memoised key of this table (a key function's data changed)."""
        self.uid = next(_TABLE_IDS)


class FlowTables:
    """Every flow definition's table; the per-sample update and housekeeping."""

    def __init__(self, max_flows: int = 100_000) -> None:
        if max_flows < 10:
            raise ValueError(f"max_flows must be >= 10, got {max_flows}")
        self.max_flows = max_flows
        self.tables: dict[str, FlowTable] = {}
        #: the tables in a tuple (what ingest iterates; rebuilt on every change)
        self.active: tuple[FlowTable, ...] = ()
        self.logging = False
        self.evicted = 0
        self.thresholds: Any = None  # sflow.thresholds.Thresholds, set by the engine
        self.flow_log: FlowLog | None = None  # sflow.flowlog.FlowLog, set by the engine

    def _changed(self) -> None:
        self.active = tuple(self.tables.values())
        #: a definition writes the flow log (sflow.flowlog): ingest stays in Python
        self.logging = any(table.log_spec is not None for table in self.active)

    def set(self, fd: FlowDef, watching: list[ThresholdDef]) -> bool:
        """Define or replace a flow; an identical re-definition keeps its state (False)."""
        old = self.tables.get(fd.name)
        if old is not None and old.fd == fd:
            return False
        table = FlowTable(fd, self.max_flows)
        table.thresholds = tuple(watching)
        self.tables[fd.name] = table
        if self.flow_log is not None:
            self.flow_log.forget(fd.name)
        self._changed()
        return True

    def delete(self, name: str) -> bool:
        found = self.tables.pop(name, None) is not None
        if self.flow_log is not None:
            self.flow_log.forget(name)
        self._changed()
        return found

    def watch(self, metric: str, watching: list[ThresholdDef]) -> None:
        table = self.tables.get(metric)
        if table is not None:
            table.thresholds = tuple(watching)

    def invalidate_memos(self) -> None:
        for table in self.tables.values():
            table.new_uid()

    def update(self, table: FlowTable, now: float, agent: str, data_source: str,
               where: tuple[str, str], key: str, value: float, sampling_rate: float) -> None:
        """Add one sample's impulse to a flow, then check the thresholds watching it."""
        impulse = value * sampling_rate / table.t
        if impulse < table.min_impulse and impulse > 0:
            table.min_impulse = impulse
        scale = table.scale(now)
        source = table.sources.get(where)
        if source is None:
            source = table.sources[where] = [{}, now]
        elif source[1] < now:
            source[1] = now
        flows = source[0]
        stored = flows.get(key)
        if stored is None:
            stored = flows[key] = impulse * scale
            table.count += 1
            if table.count > table.max_flows:
                self.shrink(table, now)
        else:
            stored = flows[key] = stored + impulse * scale
        if table.log_spec is not None and self.flow_log is not None:
            self.flow_log.observe(table.log_spec, agent, data_source, key,
                                  value * sampling_rate, now)
        if table.thresholds:
            rate = stored / scale
            for td in table.thresholds:
                if rate > td.value:
                    self.thresholds.exceeded(td, table.t, agent, data_source, key, rate, now)

    def shrink(self, table: FlowTable, now: float) -> None:
        self.evict_idle(table, now)
        target = int(table.max_flows * _SHRINK_TO)
        excess = table.count - target
        if excess <= 0:
            return
        # stored values share one scale: rank them as they are
        ranked = sorted(((stored, where, key) for where, source in table.sources.items()
                         for key, stored in source[0].items()), key=lambda item: item[0])
        for _, where, key in ranked[:excess]:
            flows = table.sources[where][0]
            del flows[key]
            if not flows:
                del table.sources[where]
        table.count -= excess
        self.evicted += excess

    def evict_idle(self, table: FlowTable, now: float) -> None:
        floor = table.min_impulse * math.exp(-IDLE_FACTOR) * table.scale(now)
        removed = 0
        for where in list(table.sources):
            flows = table.sources[where][0]
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
        for table in self.tables.values():
            if now - table.last_sweep >= max(1.0, table.t):
                self.evict_idle(table, now)
        if self.flow_log is not None:
            self.flow_log.tick(now)

    def count(self, name: str | None = None) -> int:
        if name is not None:
            table = self.tables.get(name)
            return table.count if table else 0
        return sum(table.count for table in self.tables.values())

    def snapshot(self, name: str, now: float,
                 agents: Iterable[str] | None = None) -> "FlowSnapshot | None":
        """Copies of one definition's flows (of ``agents``), rates at ``now``."""
        table = self.tables.get(name)
        if table is None:
            return None
        wanted = None if agents is None else set(agents)
        inverse = 1.0 / table.scale(now) if table.ref is not None else 1.0
        rows = [(where[0], where[1], source[0].copy(), source[1])
                for where, source in table.sources.items()
                if wanted is None or where[0] in wanted]
        return FlowSnapshot(table.fd, inverse, rows)


class FlowSnapshot(NamedTuple):
    """One definition's flows at a moment: (agent, dataSource, {key: stored}, last)."""

    fd: FlowDef
    inverse_scale: float
    rows: list[tuple[str, str, dict[str, float], float]]

    def rates(self) -> Iterable[tuple[str, str, str, float, float]]:
        """(agent, dataSource, key, rate, the data source's last update) of every flow."""
        inverse = self.inverse_scale
        for agent, ds, flows, last in self.rows:
            for key, stored in flows.items():
                yield agent, ds, key, stored * inverse, last


def active_flows(snap: FlowSnapshot, max_flows: int = 100, min_value: float = 0.0,
                 agg_mode: str = "max") -> list[dict[str, Any]]:
    """Largest flows merged across data sources, value descending (pure).

    ``agg_mode``: ``max`` reports a key once with its largest value (and where
    that was seen), ``sum`` adds its values, ``avg`` averages them; ``edge`` and
    ``core`` behave as ``max`` here (the topology's own modes are the HTTP layer's).
    """
    rows = ((agent, ds, key, rate) for agent, ds, key, rate, _last in snap.rates())
    return merge_flow_rates(rows, "max" if agg_mode in ("edge", "core") else agg_mode,
                            max_flows, min_value)


def merge_flow_rates(rows: Iterable[tuple[str, str, str, float]], mode: str, max_flows: int,
                     min_value: float) -> list[dict[str, Any]]:
    """``/activeflows`` records from (agent, dataSource, key, rate) rows, one per key,
    value descending: ``sum`` adds a key's rates, ``avg`` averages them, else the
    largest; agent and dataSource are where the largest was seen (pure)."""
    merged: dict[str, list[Any]] = {}  # key -> [best, agent, ds, sum, count]
    for agent, ds, key, rate in rows:
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
        value = total if mode == "sum" else total / count if mode == "avg" else best
        if value >= min_value:
            out.append({"key": key, "value": value, "agent": agent, "dataSource": ds})
    out.sort(key=lambda rec: rec["value"], reverse=True)
    return out[:max_flows]


def flow_metric(snap: FlowSnapshot, now: float,
                data_source: str | None = None) -> dict[str, Any]:
    """The definition as an sFlow-RT ``Statistic``: max over data sources, ``topKeys`` (pure)."""
    name = snap.fd.name
    per_source: dict[tuple[str, str], list[tuple[float, str, float]]] = {}
    for agent, ds, key, rate, last in snap.rates():
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
                         for rate, key, last in best[:snap.fd.n]])
    return stat
