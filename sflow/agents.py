"""Per-agent accounting: datagrams, samples, sequence numbers, every map bounded.

One :class:`AgentState` per agent address (the address inside the datagram).
Sequence numbers are checked per (agent, sub-agent) for datagrams and per
(agent, sub-agent, data source) for flow and counter samples; what the checks
find is added to the agent's running totals at once, so reading an agent is
O(1) whatever the number of its data sources (``/agents/json`` and the
Prometheus collector never sum over the maps).

Bounds (issue 14 #6: crafted datagrams must not grow memory without end):
every map keyed by something a datagram says is capped. Agents: the least
recently seen tenth goes when the table is full (amortised: one sort per
tenth of the table). Sub-agents, flow samplers and counter sources of one
agent: the oldest entry goes (dict order). Each eviction is counted by map in
:attr:`AgentTable.evictions`; an evicted sequence space simply starts again
when it is seen next.

State is plain Python objects (slots, dicts, ints) so that the compiled hot
path (``sflow._ingest``) and the pure-Python one update the very same
structures; new entries are always made here (:meth:`AgentTable.agent`,
:meth:`AgentTable.first_sequence`), where the bounds live.
"""

from __future__ import annotations

from typing import Any, Iterable

__all__ = ["AgentState", "AgentTable", "seq_step", "MAX_SUBAGENTS", "MAX_SAMPLERS",
           "MAX_COUNTER_SOURCES", "RESTART_GAP"]

MAX_SUBAGENTS = 64          # per agent (OVS: one per bridge; hsflowd: 2)
MAX_SAMPLERS = 4096         # per agent (a port-sampling chassis: one per port)
MAX_COUNTER_SOURCES = 4096  # per agent (one per port, plus a few host/bridge sources)
MAX_SOURCES = 16            # UDP source addresses remembered per agent
RESTART_GAP = 1_000_000     # a sequence number this far back is a restart, not disorder

# result codes of seq_step (the compiled path uses the same numbers)
SEQ_OK, SEQ_LOST, SEQ_DUP, SEQ_OOO, SEQ_RESTART = 0, 1, 2, 3, 4


def seq_step(last: int, seq: int) -> int:
    """What sequence number ``seq`` after ``last`` means: one of the SEQ_ codes."""
    if seq == last + 1:
        return SEQ_OK
    if seq > last + 1:
        return SEQ_LOST
    if seq == last:
        return SEQ_DUP
    if seq <= 1 or last - seq > RESTART_GAP:
        return SEQ_RESTART
    return SEQ_OOO


class AgentState:
    """One agent's counters and sequence spaces (see the module doc)."""

    __slots__ = ("name", "first_seen", "last_seen", "uptime", "datagrams", "flow_samples",
                 "counter_samples", "sources", "subagents", "samplers", "counter_sources",
                 "datagrams_lost", "datagrams_out_of_order", "datagrams_duplicates",
                 "flow_lost", "flow_out_of_order", "flow_duplicates", "flow_drops",
                 "counter_lost", "counter_out_of_order", "counter_duplicates")

    def __init__(self, name: str, now: float) -> None:
        self.name = name
        self.first_seen = now
        self.last_seen = now
        self.uptime = 0
        self.datagrams = 0
        self.flow_samples = 0
        self.counter_samples = 0
        self.sources: set[str] = set()
        #: sub-agent id -> last datagram sequence number
        self.subagents: dict[int, int] = {}
        #: (sub-agent, class, index) -> [last sample sequence number, last drops counter]
        self.samplers: dict[tuple[int, int, int], list[int]] = {}
        #: (sub-agent, class, index) -> last counter-sample sequence number
        self.counter_sources: dict[tuple[int, int, int], int] = {}
        self.datagrams_lost = self.datagrams_out_of_order = self.datagrams_duplicates = 0
        self.flow_lost = self.flow_out_of_order = self.flow_duplicates = self.flow_drops = 0
        self.counter_lost = self.counter_out_of_order = self.counter_duplicates = 0

    def to_json(self, now: float) -> dict[str, Any]:
        """``/agents/json`` fields, named as sFlow-RT names them."""
        return {
            "sFlowDatagramsReceived": self.datagrams,
            "sFlowDatagramsLost": self.datagrams_lost,
            "sFlowDatagramsOutOfOrder": self.datagrams_out_of_order,
            "sFlowDatagramsDuplicates": self.datagrams_duplicates,
            "sFlowDatagramSource": sorted(self.sources),
            "sFlowSubAgents": sorted(self.subagents),
            "sFlowFlowSamples": self.flow_samples,
            "sFlowFlowLostSamples": self.flow_lost,
            "sFlowFlowOutOfOrderSamples": self.flow_out_of_order,
            "sFlowFlowDuplicateSamples": self.flow_duplicates,
            "sFlowFlowDrops": self.flow_drops,
            "sFlowFlowDatasources": len(self.samplers),
            "sFlowCounterSamples": self.counter_samples,
            "sFlowCounterLostSamples": self.counter_lost,
            "sFlowCounterOutOfOrderSamples": self.counter_out_of_order,
            "sFlowCounterDuplicateSamples": self.counter_duplicates,
            "sFlowCounterDatasources": len(self.counter_sources),
            "firstSeen": int((now - self.first_seen) * 1000),
            "lastSeen": int((now - self.last_seen) * 1000),
            "uptime": self.uptime,
        }


class AgentTable:
    """Every agent, bounded; the sequence-number slow paths."""

    def __init__(self, max_agents: int = 10_000, max_subagents: int = MAX_SUBAGENTS,
                 max_samplers: int = MAX_SAMPLERS,
                 max_counter_sources: int = MAX_COUNTER_SOURCES) -> None:
        self.max_agents = max(1, max_agents)
        self.max_subagents = max(1, max_subagents)
        self.max_samplers = max(1, max_samplers)
        self.max_counter_sources = max(1, max_counter_sources)
        self.agents: dict[str, AgentState] = {}
        self.evictions: dict[str, int] = {"agents": 0, "subagents": 0, "samplers": 0,
                                          "counter_sources": 0}
        #: called with an agent name when an agent is forgotten (its counters go too)
        self.on_forget: list[Any] = []

    def agent(self, name: str, now: float) -> AgentState:
        """The agent, made (room made first) if new."""
        agent = self.agents.get(name)
        if agent is None:
            if len(self.agents) >= self.max_agents:
                self._evict_agents()
            agent = self.agents[name] = AgentState(name, now)
        return agent

    def _evict_agents(self) -> None:
        # the least recently seen tenth at once: one sort per max_agents/10 new agents
        count = max(1, len(self.agents) // 10)
        oldest = sorted(self.agents.values(), key=lambda a: a.last_seen)[:count]
        for agent in oldest:
            del self.agents[agent.name]
            for forget in self.on_forget:
                forget(agent.name)
        self.evictions["agents"] += len(oldest)

    def first_sequence(self, agent: AgentState, kind: int, key: Any, seq: int,
                       drops: int = 0) -> None:
        """Make the sequence entry of a sub-agent (kind 0), flow sampler (1) or counter
        source (2) seen for the first time, evicting the map's oldest entry if full."""
        if kind == 0:
            table: dict[Any, Any] = agent.subagents
            cap, name, value = self.max_subagents, "subagents", seq
        elif kind == 1:
            table, cap, name, value = agent.samplers, self.max_samplers, "samplers", [seq, drops]
        else:
            table, cap, name, value = (agent.counter_sources, self.max_counter_sources,
                                       "counter_sources", seq)
        if len(table) >= cap:
            del table[next(iter(table))]
            self.evictions[name] += 1
        table[key] = value

    def forget(self, name: str) -> None:
        if self.agents.pop(name, None) is not None:
            for forget in self.on_forget:
                forget(name)

    def to_json(self, now: float, only: Iterable[str] | None = None) -> dict[str, dict[str, Any]]:
        wanted = None if only is None else set(only)
        return {name: agent.to_json(now) for name, agent in list(self.agents.items())
                if wanted is None or name in wanted}

    def totals(self) -> dict[str, tuple[int, int, int]]:
        """agent -> (datagrams lost, flow samples lost, counter samples lost) (metrics)."""
        return {name: (a.datagrams_lost, a.flow_lost, a.counter_lost)
                for name, a in list(self.agents.items())}


def account_sequence(agent: AgentState, kind: int, last: int, seq: int) -> bool:
    """Add what ``seq`` after ``last`` means to the agent's totals; True if ``last``
    moves to ``seq`` (in order, a gap or a restart)."""
    code = seq_step(last, seq)
    if code == SEQ_OK or code == SEQ_RESTART:
        return True
    if code == SEQ_LOST:
        gap = seq - last - 1
        if kind == 0:
            agent.datagrams_lost += gap
        elif kind == 1:
            agent.flow_lost += gap
        else:
            agent.counter_lost += gap
        return True
    if code == SEQ_DUP:
        if kind == 0:
            agent.datagrams_duplicates += 1
        elif kind == 1:
            agent.flow_duplicates += 1
        else:
            agent.counter_duplicates += 1
        return False
    if kind == 0:
        agent.datagrams_out_of_order += 1
    elif kind == 1:
        agent.flow_out_of_order += 1
    else:
        agent.counter_out_of_order += 1
    return False
