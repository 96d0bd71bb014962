"""The daemon's Prometheus metrics (``GET /metrics`` on the API's address).

One ``CollectorRegistry`` per runtime (tests build many in one process) with a
custom collector that reads, at scrape time, what the runtime, its engine and
controller sides and the notifications already count: nothing is added to the
decision loop's path. Names follow ``pytapdemon_daemon_<what>[_<unit>][_total]``;
labels are bounded (state, policy, kind, cause class, method, outcome, sink):
never a flow key.
"""

from __future__ import annotations

from typing import Any, Iterable, Iterator

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import (CounterMetricFamily, GaugeMetricFamily,
                                    HistogramMetricFamily, InfoMetricFamily, Metric)
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from demon.model import LIVE_STATES

P = "pytapdemon_daemon_"
STATES = ("pending", "active", "expiring", "removed", "failed")


class DaemonCollector:
    def __init__(self, runtime: Any) -> None:
        self.runtime = runtime

    def describe(self) -> list[Metric]:
        return []  # no describe at registration: collect() reads live objects

    def collect(self) -> Iterator[Metric]:
        rt = self.runtime
        from demon import __version__

        info = InfoMetricFamily(P + "build", "pytapdemon's version")
        info.add_metric([], {"version": __version__})
        yield info
        view = rt.view
        snap = view.snapshot() if view.ready else None
        taps = GaugeMetricFamily(P + "taps", "Taps the daemon knows, by state and policy "
                                 "(ended ones as long as the state file keeps them)",
                                 labels=["state", "policy"])
        live = GaugeMetricFamily(P + "live_taps", "Live taps (pending, active, expiring) by "
                                 "policy", labels=["policy"])
        used = GaugeMetricFamily(P + "capture_budget_used_bits_per_second",
                                 "Capture budget in use: the sum of the live taps' rates")
        total = GaugeMetricFamily(P + "capture_budget_bits_per_second",
                                  "The whole capture budget (limits.capture_capacity)")
        if snap is not None:
            counts: dict[tuple[str, str], int] = {}
            policies = set(snap.policies)
            for tap in snap.taps():
                key = (tap.state, tap.policy)
                counts[key] = counts.get(key, 0) + 1
                policies.add(tap.policy)
            for policy in sorted(policies):
                for state in STATES:
                    taps.add_metric([state, policy], counts.get((state, policy), 0))
                live.add_metric([policy], sum(counts.get((s, policy), 0) for s in LIVE_STATES))
            used.add_metric([], sum(t.rate_bps for t in snap.live_taps()))
            capacity = getattr(snap.limits, "capture_capacity", None)
            if capacity is not None:
                total.add_metric([], float(capacity))
        yield taps
        yield live
        yield used
        yield total

        transitions = CounterMetricFamily(P + "transitions", "Recorded transitions by kind and "
                                          "cause", labels=["kind", "cause"])
        for (kind, cause), n in sorted(dict(rt.transition_counts).items()):
            transitions.add_metric([kind, cause], n)
        yield transitions
        counters = dict(rt.counters)
        yield _counter(P + "decisions", "Inputs the decision core decided", rt.steps)
        yield _counter(P + "events_received", "Threshold events received from the engine",
                       rt.engine.events_received)
        yield _counter(P + "threshold_events", "Events of the policies' thresholds decided",
                       counters.get("events", 0))
        polls = CounterMetricFamily(P + "engine_polls", "activeflows polls by outcome "
                                    "(unsettled: answered while the engine's rates settle)",
                                    labels=["outcome"])
        polls.add_metric(["ok"], rt.engine.polls_ok)
        polls.add_metric(["failed"], rt.engine.polls_failed)
        polls.add_metric(["unsettled"], rt.engine.polls_unsettled)
        yield polls
        yield _counter(P + "operator_requests", "Operator requests decided (API and state "
                       "file)", counters.get("operator_requests", 0))
        reloads = CounterMetricFamily(P + "policy_reloads", "Policy reloads by outcome",
                                      labels=["outcome"])
        reloads.add_metric(["ok"], counters.get("reloads_ok", 0))
        reloads.add_metric(["rejected"], counters.get("reloads_rejected", 0))
        yield reloads

        side = rt.controller_side
        calls = CounterMetricFamily(P + "rpc_calls", "Controller RPC calls by method and "
                                    "outcome", labels=["method", "outcome"])
        rpc_errors = 0
        for (method, outcome), n in sorted(dict(side.calls).items()):
            calls.add_metric([method, outcome], n)
            if outcome != "ok":
                rpc_errors += n
        yield calls
        latency = HistogramMetricFamily(P + "rpc_duration_seconds", "Controller RPC call "
                                        "latency", labels=["method"])
        for method, hist in sorted(dict(side.latency).items()):
            latency.add_metric([method], hist.cumulative(), hist.total)
        yield latency

        notify_failed = 0
        notifications = CounterMetricFamily(P + "notifications", "Transitions handed to each "
                                            "notification sink, by outcome",
                                            labels=["sink", "kind", "outcome"])
        behind = GaugeMetricFamily(P + "notifications_behind", "Transitions a sink has not "
                                   "handled yet", labels=["sink", "kind"])
        if rt.notifier is not None:
            for name, s in rt.notifier.status().items():
                notifications.add_metric([name, s["kind"], "delivered"], s["delivered"])
                notifications.add_metric([name, s["kind"], "failed"], s["failed"])
                behind.add_metric([name, s["kind"]], s["behind"])
                notify_failed += s["failed"]
        yield notifications
        yield behind

        errors = CounterMetricFamily(P + "errors", "Errors by kind", labels=["kind"])
        errors.add_metric(["core"], counters.get("core_errors", 0))
        errors.add_metric(["store"], counters.get("store_errors", 0))
        errors.add_metric(["engine"], rt.engine.polls_failed)
        errors.add_metric(["rpc"], rpc_errors)
        errors.add_metric(["notification"], notify_failed)
        yield errors

        yield _gauge(P + "engine_up", "1 while the analytics engine answers",
                     1 if rt.engine.reachable else 0)
        yield _gauge(P + "controller_up", "1 while the controller component answers",
                     1 if side.up else 0)
        yield _gauge(P + "store_writable", "1 while the state file takes writes",
                     1 if rt.store_error is None else 0)
        yield _gauge(P + "unsaved_transitions", "Transitions decided but not saved yet (the "
                     "state file refuses writes)", len(rt._unsaved))
        yield _gauge(P + "last_transition_id", "The newest saved transition's id", view.last_id)
        yield _gauge(P + "start_time_seconds", "When the daemon started (epoch)",
                     rt.started_at)


def _counter(name: str, doc: str, value: float) -> CounterMetricFamily:
    metric = CounterMetricFamily(name, doc)
    metric.add_metric([], value)
    return metric


def _gauge(name: str, doc: str, value: float) -> GaugeMetricFamily:
    metric = GaugeMetricFamily(name, doc)
    metric.add_metric([], value)
    return metric


class DaemonMetrics:
    """The runtime's registry, plus other registries served on the same page
    (the embedded engine's, when it has one)."""

    def __init__(self, runtime: Any, extra: Iterable[CollectorRegistry] = ()) -> None:
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(DaemonCollector(runtime))
        self.extra = list(extra)

    def render(self) -> tuple[bytes, str]:
        body = generate_latest(self.registry)
        for registry in self.extra:
            body += generate_latest(registry)
        return body, CONTENT_TYPE_LATEST
