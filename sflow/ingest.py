"""The one way into the engine: UDP payloads (or decoded datagrams) -> engine state.

:meth:`Ingest.receive_batch` is what the collector, replay, benchmarks and
tests call (``Engine.receive`` is a batch of one). It chooses once per
datagram how to read it and then applies one algorithm to one form:

* the compiled kernel (``sflow._ingest``, built by ``pip install`` when a C
  compiler is there) takes the whole batch: it parses the common datagram
  (IPv4 agent; compact flow samples of a sampled header and maybe
  extended_switch; compact counter samples) and applies it to the very state
  objects below, and hands every other datagram back to :meth:`Ingest.slow`,
  in order;
* otherwise :func:`parse` reads each payload into a :class:`Parsed`
  (``sflow.fastpath.parse_compact`` for the common flow datagram, else the full
  decoder, ``sflow.decode``) and :meth:`Ingest.apply` applies it.

Both produce the same state (tested on the corpus, the OVS capture and
mutated datagrams): a datagram is accepted exactly when ``decode_datagram``
accepts it, and malformed ones are counted by its reason.

Effects of one datagram, in wire order of its samples: the agent and its
datagram sequence number (``sflow.agents``); per flow sample its sampler's
sequence number and drops, then every flow definition (``sflow.flowtable``:
flow key memoised on the shared header keys, rate update, thresholds); per
counter sample its sequence number and the sample's records
(``sflow.counters``).
"""

from __future__ import annotations

import logging
import os
from typing import Any, Callable, Iterable

from sflow.agents import AgentTable, account_sequence
from sflow.counters import CounterStore, datasource_name
from sflow.decode import DecodeError, decode_datagram
from sflow.fastpath import (COUNTER, FLOW, SAMPLE_NAMES, SAMPLE_NAMES_NO_BYTES, Parsed,
                            full_keys, parse_compact, split_keys)
from sflow.flowtable import SKIP, FlowTables
from sflow.model import Datagram, FlowSample
from sflow.thresholds import Thresholds

__all__ = ["Ingest", "Stats", "parse", "from_datagram", "compiled", "COMPILED_ENV"]

log = logging.getLogger(__name__)

#: set to 0 to refuse the compiled kernel (tests compare both paths)
COMPILED_ENV = "DEMON_SFLOW_COMPILED"
#: names seen in samples are forgotten after an hour (``/flowkeys/json``)
FLOW_KEYS_TTL = 3600.0
_MAX_NAME_SETS = 4096
#: the compiled kernel's interface version this code expects (sflow/_ingest.c)
KERNEL_VERSION = 3
_stale: list[bool] = []


def compiled() -> Any:
    """The compiled kernel module, or None (not built, or refused by the environment)."""
    if os.environ.get(COMPILED_ENV, "1") == "0":
        return None
    try:
        from sflow import _ingest  # type: ignore[attr-defined]
    except ImportError:
        return None
    if getattr(_ingest, "KERNEL_VERSION", None) != KERNEL_VERSION:
        if not _stale:
            _stale.append(True)
            log.warning("sflow._ingest is a build of other sources (kernel version %s, "
                        "wanted %s): using the pure-Python path; reinstall to rebuild it",
                        getattr(_ingest, "KERNEL_VERSION", None), KERNEL_VERSION)
        return None
    return _ingest


class Stats:
    """Engine-wide counters (``/analyzer/json``, Prometheus)."""

    __slots__ = ("datagrams", "bytes", "decoded", "samples", "flow_samples", "counter_samples",
                 "dropped")

    def __init__(self) -> None:
        self.datagrams = 0
        self.bytes = 0
        self.decoded = 0
        self.samples = 0
        self.flow_samples = 0
        self.counter_samples = 0
        #: decode error reason (or ``ingest-error``) -> datagrams
        self.dropped: dict[str, int] = {}

    def malformed(self, reason: str, size: int) -> None:
        self.datagrams += 1
        self.bytes += size
        self.dropped[reason] = self.dropped.get(reason, 0) + 1


def parse(payload: bytes, source: str = "") -> Parsed | str:
    """One payload as a :class:`Parsed` datagram, or the decode error's reason."""
    parsed = parse_compact(payload)
    if parsed is not None:
        return parsed
    try:
        dg = decode_datagram(payload)
    except DecodeError as exc:
        return exc.reason
    return from_datagram(dg, source)


KeysFn = Callable[[str, FlowSample], dict[str, object]]
DataSourceFn = Callable[[FlowSample], str]


def from_datagram(dg: Datagram, source: str = "", keys_fn: KeysFn | None = None,
                  datasource_fn: DataSourceFn | None = None) -> Parsed:
    """A decoded datagram as a :class:`Parsed` (its samples in wire order)."""
    from sflow.keys import datasource_of, sample_keys

    keys_fn = keys_fn or sample_keys
    datasource_fn = datasource_fn or datasource_of
    agent = dg.agent or source
    sub = dg.sub_agent_id
    rows: list[Any] = []
    ordered = dg.samples or [*dg.flow_samples, *dg.counter_samples]
    for sample in ordered:
        if isinstance(sample, FlowSample):
            header, context, nbytes = split_keys(keys_fn(agent, sample), agent,
                                                 datasource_fn(sample))
            rows.append((FLOW, (sub, sample.source_class, sample.source_index), sample.sequence,
                         sample.drops, sample.sampling_rate, header, context, nbytes))
        elif hasattr(sample, "records"):  # a counter sample
            records = sample.raw if sample.raw is not None else list(sample.records)
            rows.append((COUNTER, (sub, sample.source_class, sample.source_index),
                         sample.sequence, datasource_name(sample.source_class,
                                                           sample.source_index), records))
    return Parsed(agent, sub, dg.sequence, dg.uptime_ms, rows)


class Ingest:
    """The engine's ingest state and kernel (see the module doc).

    Attributes are what the compiled kernel reads: ``stats``, ``agents``
    (AgentTable), ``flows`` (FlowTables), ``thresholds``, ``counters``
    (CounterStore), ``names_seen`` (key-name tuple -> last seen).
    """

    def __init__(self, stats: Stats, agents: AgentTable, flows: FlowTables,
                 thresholds: Thresholds, counters: CounterStore,
                 keys_fn: KeysFn | None = None, datasource_fn: DataSourceFn | None = None,
                 use_compiled: bool = True) -> None:
        self.stats = stats
        self.agents = agents
        self.flows = flows
        self.thresholds = thresholds
        self.counters = counters
        self.names_seen: dict[tuple[str, ...], float] = {}
        self.keys_fn = keys_fn
        self.datasource_fn = datasource_fn
        custom = keys_fn is not None or datasource_fn is not None
        #: the compiled kernel in use, or None (pure Python)
        self.kernel = compiled() if use_compiled and not custom else None
        self.skip = SKIP

    # --- entry points ---------------------------------------------------------------

    def receive_batch(self, batch: Iterable[tuple[bytes, str]], now: float) -> int:
        """Ingest (payload, UDP source address) pairs; how many failed in ingest (bugs:
        counted as ``ingest-error`` and logged, never raised)."""
        if self.kernel is not None:  # it feeds the flow log (log: true) as update() does
            batch = batch if isinstance(batch, list) else list(batch)
            return self.kernel.ingest(self, batch, now)
        failures = 0
        for payload, source in batch:
            try:
                self.slow(payload, source, now)
            except Exception:  # noqa: BLE001 - counted; one bad datagram never stops the rest
                failures += 1
                log.exception("ingest failed for a datagram from %s", source)
        return failures

    def slow(self, payload: bytes, source: str, now: float) -> None:
        """One payload through the Python path (the compiled kernel's fallback too)."""
        if self.keys_fn is not None or self.datasource_fn is not None:
            try:
                dg = decode_datagram(payload)
            except DecodeError as exc:
                self.stats.malformed(exc.reason, len(payload))
                return
            self.ingest_datagram(dg, now, source, len(payload))
            return
        parsed = parse(payload, source)
        if parsed.__class__ is str:
            self.stats.malformed(parsed, len(payload))  # type: ignore[arg-type]
            return
        self.apply(parsed, now, source, len(payload))  # type: ignore[arg-type]

    def ingest_datagram(self, dg: Datagram, now: float, source: str = "", size: int = 0) -> None:
        """A decoded datagram (tests, replays of decoded data)."""
        stats = self.stats
        try:
            parsed = from_datagram(dg, source, self.keys_fn, self.datasource_fn)
        except Exception:
            stats.datagrams += 1
            stats.bytes += size
            stats.dropped["ingest-error"] = stats.dropped.get("ingest-error", 0) + 1
            raise
        self.apply(parsed, now, source, size)

    # --- the kernel -----------------------------------------------------------------

    def apply(self, dg: Parsed, now: float, source: str, size: int) -> None:
        """All effects of one parsed datagram. A failure (a bug, not bad input) counts
        the datagram as dropped with reason ``ingest-error`` and propagates."""
        stats = self.stats
        stats.datagrams += 1
        stats.bytes += size
        try:
            self._apply(dg, now, source)
        except Exception:
            stats.dropped["ingest-error"] = stats.dropped.get("ingest-error", 0) + 1
            raise
        stats.decoded += 1

    def _apply(self, dg: Parsed, now: float, source: str) -> None:
        agents = self.agents
        name = dg.agent or source
        agent = agents.agents.get(name)
        if agent is None:
            agent = agents.agent(name, now)
        if agent.last_seen < now:
            agent.last_seen = now
        agent.uptime = dg.uptime_ms
        agent.datagrams += 1
        if source and len(agent.sources) < 16:
            agent.sources.add(source)
        sub = dg.sub_agent_id
        last = agent.subagents.get(sub)
        if last is None:
            agents.first_sequence(agent, 0, sub, dg.sequence)
        elif account_sequence(agent, 0, last, dg.sequence):
            agent.subagents[sub] = dg.sequence
        stats = self.stats
        tables = self.flows.active
        first = True
        for row in dg.samples:
            stats.samples += 1
            if row[0] == FLOW:
                _, sid, seq, drops, rate, header, context, nbytes = row
                stats.flow_samples += 1
                agent.flow_samples += 1
                sampler = agent.samplers.get(sid)
                if sampler is None:
                    agents.first_sequence(agent, 1, sid, seq, drops)
                else:
                    if seq == sampler[0] + 1:
                        sampler[0] = seq
                    elif account_sequence(agent, 1, sampler[0], seq):
                        sampler[0] = seq
                    if drops != sampler[1]:
                        if drops > sampler[1]:
                            agent.flow_drops += drops - sampler[1]
                        sampler[1] = drops
                if not tables:
                    continue
                if first:
                    first = False
                    seen = self.names_seen
                    if len(seen) >= _MAX_NAME_SETS:
                        seen.clear()
                    seen[header.names] = now
                    seen[context.names] = now
                    seen[SAMPLE_NAMES if nbytes is not None else SAMPLE_NAMES_NO_BYTES] = now
                self._flow(tables, now, header, context, nbytes, rate)
            else:
                _, sid, seq, datasource, records = row
                stats.counter_samples += 1
                agent.counter_samples += 1
                last = agent.counter_sources.get(sid)
                if last is None:
                    agents.first_sequence(agent, 2, sid, seq)
                elif account_sequence(agent, 2, last, seq):
                    agent.counter_sources[sid] = seq
                self.counters.put(name, datasource, seq, now, records)
                if self.thresholds.counter_watch:
                    self.thresholds.counter_sample(name, datasource, now, self.counters)

    def _flow(self, tables: tuple[Any, ...], now: float, header: Any, context: Any,
              nbytes: int | None, rate: int) -> None:
        memo = header.memo
        full = None
        scaled = rate or 1
        update = self.flows.update
        for table in tables:
            scope = table.memo_scope
            key = (memo.get(table.uid) if scope == 1
                   else memo.get((table.uid, context)) if scope == 2 else None)
            if key is None:
                key = table.compute_key(header, context, nbytes, rate)
            if key is SKIP:
                continue
            kind = table.value_kind
            if kind == 1:
                if nbytes is None:
                    continue
                value = nbytes * table.value_factor
            elif kind == 2:
                value = table.value_factor
            else:
                if full is None:
                    full = full_keys(header, context, nbytes, rate)
                value = table.fd.value_fn(full)
                if value is None:
                    continue
            update(table, now, context.agent, context.datasource, context.where, key, value,
                   scaled)

    # --- called by the compiled kernel ------------------------------------------------

    def value_of(self, table: Any, header: Any, context: Any, nbytes: int | None,
                 rate: int) -> float | None:
        """A table's value of a sample whose value is not bytes or frames."""
        return table.fd.value_fn(full_keys(header, context, nbytes, rate))

    def fail(self, source: str, exc: BaseException | None) -> None:
        """A datagram failed in ingest (a bug): counted, logged, collection goes on."""
        stats = self.stats
        stats.dropped["ingest-error"] = stats.dropped.get("ingest-error", 0) + 1
        log.error("ingest failed for a datagram from %s", source,
                  exc_info=(type(exc), exc, exc.__traceback__) if exc is not None else None)

    # --- reads ----------------------------------------------------------------------

    def flow_keys(self, now: float) -> dict[str, int]:
        """``/flowkeys/json``: key names seen recently -> ms since last seen."""
        latest: dict[str, float] = {}
        for names, seen in list(self.names_seen.items()):
            for name in names:
                if latest.get(name, -1.0) < seen:
                    latest[name] = seen
        return {name: int((now - seen) * 1000) for name, seen in sorted(latest.items())
                if not name.startswith("_")}

    def tick(self, now: float) -> None:
        stale = now - FLOW_KEYS_TTL
        for names in [n for n, seen in self.names_seen.items() if seen < stale]:
            del self.names_seen[names]
