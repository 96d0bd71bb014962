"""The flow log: records of flows of definitions with ``log: true`` (``GET /flows/json``).

Each sample a logged definition counts (agent, dataSource, flow key, value
scaled by the sampling rate) is added to that flow's open record. A record
is written to the log:

* when the flow **ends**: no sample for :func:`idle_timeout` of its definition
  (``max(2 s, 2 t)``): ``start`` = first sample, ``end`` = last sample;
* every ``activeTimeout`` seconds while it goes on (the record covers the
  time since the previous one; ``value`` is what was counted in it);
* with ``flowStart: true``, once when the flow **starts** (``start`` = ``end``
  = the first sample, ``value`` = that sample's) and not again until it has
  ended and starts anew.

Record (InMon's ``tail_flows.py`` reads every field)::

    {"flowID": 7, "name": "tcp", "flowKeys": "10.0.0.1,10.0.0.2,51792,5201",
     "value": 200015872.0, "start": 1795510806213, "end": 1795510814412,
     "agent": "127.0.0.1", "dataSource": "1478"}

``start``/``end`` are ms since the epoch; ``value`` is in the definition's
``value`` unit, summed (bytes, frames...), not a rate. ``flowID`` grows by one
from 1; the log keeps the last :data:`MAX_RECORDS`. Open flows are bounded
(:data:`MAX_OPEN`): past it the least recently seen one is closed (written)
early. Pure: the engine calls :meth:`FlowLog.observe` under its lock and
:meth:`FlowLog.tick` about once a second.
"""

from __future__ import annotations

from collections import OrderedDict, deque
from dataclasses import dataclass
from typing import Any

__all__ = ["FlowLog", "LogSpec", "idle_timeout", "MAX_RECORDS", "MAX_OPEN"]

MAX_RECORDS = 10_000
MAX_OPEN = 200_000


def idle_timeout(t: float) -> float:
    """Seconds without a sample after which a logged flow has ended."""
    return max(2.0, 2.0 * t)


@dataclass(frozen=True)
class LogSpec:
    """What the log needs of a flow definition."""

    name: str
    t: float
    active_timeout: float
    flow_start: bool


class _Open:
    __slots__ = ("spec", "start", "last", "since", "value", "announced")

    def __init__(self, spec: LogSpec, now: float) -> None:
        self.spec = spec
        self.start = now      # first sample of the flow
        self.since = now      # start of the record being accumulated
        self.last = now       # newest sample
        self.value = 0.0
        self.announced = False


class FlowLog:
    def __init__(self, max_records: int = MAX_RECORDS, max_open: int = MAX_OPEN) -> None:
        self.records: deque[dict[str, Any]] = deque(maxlen=max_records)
        self.max_open = max_open
        self._open: OrderedDict[tuple[str, str, str, str], _Open] = OrderedDict()
        self._next_id = 1
        self.closed_early = 0

    @property
    def last_id(self) -> int:
        return self._next_id - 1

    def _write(self, spec: LogSpec, agent: str, data_source: str, key: str, value: float,
               start: float, end: float) -> None:
        self.records.append({"flowID": self._next_id, "name": spec.name, "flowKeys": key,
                             "value": value, "start": int(start * 1000),
                             "end": int(end * 1000), "agent": agent, "dataSource": data_source})
        self._next_id += 1

    def observe(self, spec: LogSpec, agent: str, data_source: str, key: str, value: float,
                now: float) -> None:
        """One sample of a logged flow (``value`` already scaled by the sampling rate)."""
        ident = (spec.name, agent, data_source, key)
        flow = self._open.get(ident)
        if flow is None:
            flow = self._open[ident] = _Open(spec, now)
            if len(self._open) > self.max_open:
                self._close(next(iter(self._open)), early=True)
        else:
            self._open.move_to_end(ident)
            if now > flow.last:
                flow.last = now
        flow.value += value
        if spec.flow_start and not flow.announced:
            flow.announced = True
            self._write(spec, agent, data_source, key, value, now, now)

    def _close(self, ident: tuple[str, str, str, str], early: bool = False) -> None:
        flow = self._open.pop(ident)
        if early:
            self.closed_early += 1
        if not flow.spec.flow_start:
            self._write(flow.spec, ident[1], ident[2], ident[3], flow.value, flow.since, flow.last)

    def tick(self, now: float) -> None:
        """Write the records of flows that ended or reached their active timeout."""
        ended = []
        for ident, flow in self._open.items():
            spec = flow.spec
            if now - flow.last > idle_timeout(spec.t):
                ended.append(ident)
            elif (not spec.flow_start and spec.active_timeout > 0
                  and now - flow.since >= spec.active_timeout):
                self._write(spec, ident[1], ident[2], ident[3], flow.value, flow.since, now)
                flow.since, flow.value = now, 0.0
        for ident in ended:
            self._close(ident)

    def forget(self, name: str) -> None:
        """A definition was deleted or changed: drop its open flows (nothing written)."""
        for ident in [i for i in self._open if i[0] == name]:
            del self._open[ident]

    def select(self, flow_id: int = -1, max_flows: int = 100,
               name: str | None = None) -> list[dict[str, Any]]:
        """Records after ``flow_id`` (-1: the newest), newest first, at most ``max_flows``;
        with a cursor, the *oldest* ones after it (a client moving its cursor to the
        newest id it got never skips one), as ``/events/json`` does."""
        picked: list[dict[str, Any]] = []
        if max_flows <= 0:
            return picked
        if flow_id < 0:
            for rec in reversed(self.records):
                if name is None or rec["name"] == name:
                    picked.append(rec)
                    if len(picked) >= max_flows:
                        break
            return picked
        for rec in self.records:
            if rec["flowID"] > flow_id and (name is None or rec["name"] == name):
                picked.append(rec)
                if len(picked) >= max_flows:
                    break
        picked.reverse()
        return picked

    @property
    def open_flows(self) -> int:
        return len(self._open)
