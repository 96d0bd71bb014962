"""What goes into and comes out of the mirror book (:mod:`demon.controller.book`).

Pure data, standard library only (the POX component imports it). Flow changes are
OpenFlow-version-neutral: a component compiles them for its version
(:func:`demon.controller.of13.flow_mod`, the POX component's ``flow_mod``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping, Union

from demon.controller.fabric import Entry

#: One flow entry as a switch reports it: the entry, packets, bytes, duration (s).
Row = tuple[Entry, int, int, float]
#: An event to publish to subscribers: (name, params).
Event = tuple[str, dict[str, Any]]


@dataclass(frozen=True)
class FlowMod:
    """ADD ``entry`` (replacing one of equal table, priority and match), or
    DELETE_STRICT it (table, priority and match name it)."""

    command: str  # "add" | "delete_strict"
    entry: Entry


@dataclass(frozen=True)
class PortNoFlood:
    """Keep a port out of flooding (OpenFlow 1.0's ``OFPPC_NO_FLOOD``; a 1.3 switch
    floods by explicit entries instead, so a 1.3 component leaves this out)."""

    port_no: int


Change = Union[FlowMod, PortNoFlood]


@dataclass(frozen=True)
class Removed:
    """A FlowRemoved message in neutral form."""

    priority: int
    match: Mapping[str, Any]
    cookie: int
    reason: str  # idle_timeout | hard_timeout | delete | group_delete | unknown
    packets: int
    bytes: int
    duration_s: float
    table_id: int = 0


@dataclass
class Outcome:
    """What one input to the book asks of the component.

    ``changes``: per switch, in order, to send as one batch confirmed by one
    barrier. ``events``: to publish once the changes are confirmed. ``result``:
    the RPC answer, if the input was a call. ``stats``: switches whose mirror
    counters the book needs (answer with ``stats_reply`` or ``stats_failed``).
    ``awaiting``: (dpid, entry key) of entries this outcome deletes whose final
    counters (their FlowRemoved) the call's answer waits for. ``undo``: what
    ``rollback`` needs if the switch refuses the changes.
    """

    changes: dict[int, list[Change]] = field(default_factory=dict)
    events: list[Event] = field(default_factory=list)
    result: Any = None
    stats: set[int] = field(default_factory=set)
    awaiting: set[tuple[int, Any]] = field(default_factory=set)
    undo: Any = None

    def add(self, dpid: int, changes: list[Change]) -> None:
        if changes:
            self.changes.setdefault(dpid, []).extend(changes)

    def extend(self, other: "Outcome") -> "Outcome":
        for dpid, changes in other.changes.items():
            self.add(dpid, changes)
        self.events += other.events
        self.stats |= other.stats
        self.awaiting |= other.awaiting
        return self
