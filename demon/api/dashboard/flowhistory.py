"""The top flows of each policy over the last minutes, for the dashboard's charts.

Fed from the ``/activeflows`` polls the runtime makes anyway (the engine side
calls :meth:`FlowHistory.add` after each successful poll): no new request
reaches the engine. Bounded: per policy, the ``keep`` fastest flows of each
poll, for ``window`` seconds; at most ``max_polls`` polls per policy (a
policy polled faster than once a second is thinned out, never grown).

Flow keys are kept here (in memory, for a few minutes) and served by the API
like the taps' own flow keys; they are never metric labels.
"""

from __future__ import annotations

import threading
from collections import deque
from dataclasses import dataclass
from typing import Any, Iterable, Mapping

WINDOW = 600.0     # seconds of history kept
KEEP = 10          # flows kept per poll (the fastest)
MAX_POLLS = 1200   # polls kept per policy (two per second over the window)


@dataclass(frozen=True)
class Poll:
    at: float
    complete: bool
    flows: tuple[tuple[str, float, str, str], ...]  # (key, bps, agent, data source), fastest first


class FlowHistory:
    """Thread-safe: the engine side's pool threads add, the API's thread reads."""

    def __init__(self, window: float = WINDOW, keep: int = KEEP, max_polls: int = MAX_POLLS) -> None:
        self.window, self.keep, self.max_polls = window, keep, max_polls
        self._lock = threading.Lock()
        self._polls: dict[str, deque[Poll]] = {}

    def add(self, policy: str, rows: Iterable[tuple[str, float, str, str]], at: float,
            complete: bool = True) -> None:
        """One poll of ``policy``: ``rows`` are (flow key, bits/s, agent, data source)."""
        top = tuple(sorted(rows, key=lambda r: -r[1])[: self.keep])
        with self._lock:
            polls = self._polls.setdefault(policy, deque())
            if polls and at < polls[-1].at:  # a late poll thread: keep time order
                return
            min_gap = self.window / self.max_polls
            if len(polls) >= 2 and polls[-1].at - polls[-2].at < min_gap:
                # Polled faster than the history keeps: the newest poll stands in for
                # the last one until they are min_gap apart.
                polls.pop()
            polls.append(Poll(at, complete, top))
            while polls and polls[0].at < at - self.window:
                polls.popleft()

    def forget(self, keep_policies: Iterable[str]) -> None:
        """Drop the history of policies no longer loaded."""
        keep = set(keep_policies)
        with self._lock:
            for name in [n for n in self._polls if n not in keep]:
                del self._polls[name]

    def polls(self, policy: str, since: float) -> list[Poll]:
        with self._lock:
            return [p for p in self._polls.get(policy, ()) if p.at >= since]

    def series(self, policy: str, since: float, top: int) -> dict[str, Any]:
        """The ``top`` flows seen since ``since`` (by their peak), each with its
        points; and the instants polled (a flow absent from a poll was below the
        policy's minimum or not among the fastest then)."""
        polls = self.polls(policy, since)
        points: dict[str, list[list[float]]] = {}
        where: dict[str, tuple[str, str]] = {}
        for poll in polls:
            for key, bps, agent, source in poll.flows:
                points.setdefault(key, []).append([round(poll.at, 3), round(bps, 1)])
                where[key] = (agent, source)
        ranked = sorted(points, key=lambda k: (-max(v for _, v in points[k]), k))[:top]
        last = polls[-1] if polls else None
        latest = {key: bps for key, bps, _, _ in last.flows} if last else {}
        flows = [{"flow_key": key, "agent": where[key][0], "data_source": where[key][1],
                  "last_bps": latest.get(key),  # None: not in the last poll
                  "peak_bps": max(v for _, v in points[key]), "points": points[key]}
                 for key in ranked]
        return {"polled_at": [round(p.at, 3) for p in polls], "flows": flows,
                "last_poll_at": last.at if last else None,
                "settled": last.complete if last else None}


def rows_of(policy: Any, flows: Iterable[Any]) -> list[tuple[str, float, str, str]]:
    """``sflow.client.ActiveFlow`` records of a poll → rows in bits/s."""
    to_bps = getattr(policy, "to_bps", lambda v: v)
    return [(str(f.key), float(to_bps(f.value)), str(f.agent), str(f.data_source)) for f in flows]


def threshold_bps(policy: Any) -> float | None:
    """The line the chart draws: the policy's engine threshold in bits/s (None
    for kinds without one, e.g. top talkers and scheduled taps)."""
    try:
        spec = policy.threshold_spec()
    except Exception:  # noqa: BLE001 - a kind without an engine definition
        return None
    if not spec or "value" not in spec:
        return None
    return float(policy.to_bps(float(spec["value"])))


def policy_chart_info(policy: Any) -> Mapping[str, Any]:
    return {"threshold_bps": threshold_bps(policy),
            "interval_s": float(getattr(policy, "interval", 0) or 0) or None,
            "flow_name": getattr(policy, "flow_name", None),
            "keys": getattr(policy, "keys", None)}
