"""Thresholds and the events they raise.

A threshold fires when a flow's rate is strictly greater than its ``value``.
Arming is per (threshold, agent, dataSource) and, for ``byFlow`` thresholds,
per flow key too; once fired, it re-arms after the rate has stayed at or below
the value for ``timeout`` seconds. The time the rate fell below is computed
exactly from the decay (``t_last + t * ln(rate / value)``), so the hot path
only keeps, per arm, the time it falls below (:attr:`Thresholds.fired`).
Without ``byFlow`` the metric value of a data source is its largest flow.

The check on every flow update (:meth:`Thresholds.exceeded`) is the one the
compiled path (``sflow._ingest``) repeats for the common "still armed off"
case; firing, the data-source filter and the event itself are always here.
"""

from __future__ import annotations

import itertools
import math
from collections import deque
from typing import Any, Callable

from sflow.flowdef import ThresholdDef

__all__ = ["Thresholds", "MAX_EVENTS"]

MAX_EVENTS = 10_000

Arm = tuple[str, str, str, str]  # (threshold, agent, dataSource, flow key or "")


class Thresholds:
    """Threshold definitions, their arming state and the event ring."""

    def __init__(self, max_events: int = MAX_EVENTS) -> None:
        self.defs: dict[str, ThresholdDef] = {}
        #: arm -> time the rate falls (fell) to the threshold's value
        self.fired: dict[Arm, float] = {}
        self.events: deque[dict[str, Any]] = deque(maxlen=max_events)
        self.next_event_id = 1
        #: thresholds on counter metrics (their metric is no flow definition)
        self.counter_watch: tuple[ThresholdDef, ...] = ()
        #: data source -> attributes for threshold filters (set by the engine)
        self.attributes: Callable[[str, str], dict[str, Any]] = \
            lambda agent, ds: {"agent": agent, "datasource": ds}

    def refresh(self, flows: Any) -> None:
        """Recompute which thresholds watch counter metrics: those whose ``metric`` is no
        flow definition (``flows``: the defined names)."""
        self.counter_watch = tuple(td for td in self.defs.values() if td.metric not in flows)

    def counter_sample(self, agent: str, data_source: str, now: float, counters: Any) -> None:
        """A counter sample arrived for (agent, dataSource): check the counter thresholds.

        The metric is the data source's (``sflow.counters``: ``ifinutilization``,
        ``load_one``...); it fires when strictly greater than ``value``, once per
        (threshold, agent, dataSource) until it has stayed at or below for ``timeout``
        seconds (the arm keeps the last time it was seen above).
        """
        source = counters.get(agent, data_source)
        if source is None:
            return
        metrics = source.metrics()
        for td in self.counter_watch:
            value = metrics.get(td.metric)
            if value is None or isinstance(value, str) or not value > td.value:
                continue
            arm = (td.name, agent, data_source, "")
            seen = self.fired.get(arm)
            self.fired[arm] = now
            if seen is not None and now - seen <= td.timeout:
                continue
            if td.filter and not td.matches(self.attributes(agent, data_source)):
                del self.fired[arm]
                continue
            self.events.append({
                "eventID": self.next_event_id, "timestamp": int(now * 1000),
                "thresholdID": td.name, "metric": td.metric, "agent": agent,
                "dataSource": data_source, "value": value, "threshold": td.value})
            self.next_event_id += 1

    @property
    def last_event_id(self) -> int:
        return self.next_event_id - 1

    def watching(self, metric: str) -> list[ThresholdDef]:
        return [td for td in self.defs.values() if td.metric == metric]

    def forget(self, metric: str | None = None, threshold: str | None = None) -> None:
        """Drop the arming state of one threshold, or of every threshold on ``metric``."""
        names = {threshold} if threshold else {n for n, td in self.defs.items()
                                               if td.metric == metric}
        for arm in [a for a in self.fired if a[0] in names]:
            del self.fired[arm]

    def exceeded(self, td: ThresholdDef, t: float, agent: str, data_source: str, key: str,
                 rate: float, now: float) -> None:
        """A flow watched by ``td`` is above its value: fire unless armed off."""
        limit = td.value
        arm = (td.name, agent, data_source, key if td.by_flow else "")
        falls_below = now + t * math.log(rate / limit) if limit > 0 else math.inf
        fell = self.fired.get(arm)
        if fell is not None and now - fell <= td.timeout:
            self.fired[arm] = max(fell, falls_below)  # still armed off
            return
        if td.filter and not td.matches(self.attributes(agent, data_source)):
            return
        self.fired[arm] = falls_below
        event: dict[str, Any] = {
            "eventID": self.next_event_id, "timestamp": int(now * 1000),
            "thresholdID": td.name, "metric": td.metric, "agent": agent,
            "dataSource": data_source, "value": rate, "threshold": limit,
        }
        if td.by_flow:
            event["flowKey"] = key
        self.next_event_id += 1
        self.events.append(event)

    def tick(self, now: float) -> None:
        """Forget arms whose rate has been below for longer than their timeout."""
        defs = self.defs
        for arm, fell in list(self.fired.items()):
            td = defs.get(arm[0])
            if td is None or now - fell > td.timeout:
                del self.fired[arm]

    def select(self, event_id: int = -1, max_events: int = 100,
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
            for event in reversed(self.events):
                if threshold_id is None or event["thresholdID"] == threshold_id:
                    picked.append(event)
                    if len(picked) >= max_events:
                        break
            return picked
        events = self.events
        if events and events[0]["eventID"] <= event_id:
            # ids are consecutive: skip straight to the first newer one
            start = event_id - events[0]["eventID"] + 1
            if start >= len(events):
                return picked
        else:
            start = 0
        for event in itertools.islice(events, start, None):
            if threshold_id is None or event["thresholdID"] == threshold_id:
                picked.append(event)
                if len(picked) >= max_events:
                    break
        picked.reverse()
        return picked
