"""The capture agent's Prometheus metrics (``--metrics-listen``, default 127.0.0.1:8736).

A custom collector reads the figures the agent keeps anyway, at scrape time:
nothing is added to the receive loop. Per-tap series cover live and recent
taps (an ended tap's sink is dropped ten minutes after its files closed), so
the tap id label stays bounded.
"""

from __future__ import annotations

from typing import Any, Callable, Iterator

from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from demon.capture.filer import CaptureAgent

P = "pytapdemon_capture_"


class CaptureCollector(Collector):
    def __init__(self, agent: CaptureAgent, extra: Callable[[], dict[str, Any]] | None = None) -> None:
        self.agent = agent
        self.extra = extra

    def collect(self) -> Iterator[Any]:
        agent = self.agent
        sinks = list(agent.sinks.values())
        packets = CounterMetricFamily(P + "packets", "Frames written to the tap's files", labels=["tap_id"])
        nbytes = CounterMetricFamily(P + "bytes", "Bytes (original frame lengths) written for the tap",
                                     labels=["tap_id"])
        files = GaugeMetricFamily(P + "files", "Capture files of the tap on disk", labels=["tap_id"])
        opened = CounterMetricFamily(P + "files_opened", "Capture files opened for the tap", labels=["tap_id"])
        disk = GaugeMetricFamily(P + "disk_bytes", "Bytes of the tap's capture files on disk", labels=["tap_id"])
        drops = CounterMetricFamily(P + "kernel_drops", "Frames the kernel dropped (ring full)", labels=["tap_id"])
        lost = CounterMetricFamily(P + "not_written_frames", "Frames received but not written",
                                   labels=["tap_id", "reason"])
        errors = CounterMetricFamily(P + "write_errors", "Write errors (disk full, I/O)", labels=["tap_id"])
        writing = GaugeMetricFamily(P + "writing", "1 while the tap's frames are being written", labels=["tap_id"])
        for s in sinks:
            label = [s.name]
            packets.add_metric(label, s.packets)
            nbytes.add_metric(label, s.bytes)
            on_disk = s.disk_files()
            files.add_metric(label, len(on_disk))
            opened.add_metric(label, s.files.index)
            disk.add_metric(label, sum(seg.size for seg, _ in on_disk))
            drops.add_metric(label, s.kernel_drops)
            lost.add_metric([s.name, "write_error"], s.not_written - s.budget_dropped)
            lost.add_metric([s.name, "budget"], s.budget_dropped)
            errors.add_metric(label, s.write_errors)
            writing.add_metric(label, 1 if s.writing and not s.over_budget else 0)
        yield from (packets, nbytes, files, opened, disk, drops, lost, errors, writing)
        c = agent.counters
        frames = CounterMetricFamily(P + "frames", "Frames taken by the Python path, by outcome",
                                     labels=["outcome"])
        for outcome in ("matched", "matched_late", "unmatched", "ipv6_noise"):
            frames.add_metric([outcome], c.get(outcome, 0))
        yield frames
        yield CounterMetricFamily(P + "unmatched_frames", "Frames of no known tap (filed under unmatched/)",
                                  value=c.get("unmatched", 0))
        yield GaugeMetricFamily(P + "pending_frames", "Frames waiting for their tap to be known",
                                value=len(agent.pending))
        yield GaugeMetricFamily(P + "taps", "Taps in the tap table that have not ended",
                                value=sum(1 for t in agent.table.taps if not t.ended))
        yield CounterMetricFamily(P + "budget_removed_files", "Files removed to keep the disk budget",
                                  value=agent.budget.removed_files)
        yield CounterMetricFamily(P + "budget_removed_bytes", "Bytes removed to keep the disk budget",
                                  value=agent.budget.removed_bytes)
        extra = self.extra() if self.extra is not None else {}
        if "kernel_drops" in extra:
            yield CounterMetricFamily(P + "kernel_drops_all", "Frames the kernel dropped, every ring",
                                      value=extra["kernel_drops"])
            yield CounterMetricFamily(P + "kernel_packets", "Frames the kernel handed to the rings",
                                      value=extra.get("kernel_packets", 0))
        daemon = extra.get("daemon")
        if isinstance(daemon, dict):
            yield GaugeMetricFamily(P + "daemon_up", "1 when the last poll of the daemon's stream succeeded",
                                    value=1 if daemon.get("up") else 0)
            yield GaugeMetricFamily(P + "daemon_last_transition_id", "The last transition id applied",
                                    value=daemon.get("last_id") or 0)
            yield CounterMetricFamily(P + "daemon_transitions", "Transitions applied from the daemon",
                                      value=daemon.get("transitions") or 0)


def registry_for(agent: CaptureAgent, extra: Callable[[], dict[str, Any]] | None = None) -> CollectorRegistry:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(CaptureCollector(agent, extra))
    return registry


def serve(registry: CollectorRegistry, host: str, port: int) -> Any:
    """``GET /metrics`` on ``host:port`` (uvicorn on a thread, via sflow.webserve)."""
    from prometheus_client import make_asgi_app

    from sflow.webserve import BackgroundServer

    return BackgroundServer(make_asgi_app(registry), host, port, name="capture metrics").start()
