"""Backtest on raw sFlow: the policies run over a capture of sFlow datagrams through the
embedded engine, in process, in virtual time.

``demon-watch --policies DIR --replay FILE.pcap`` (pcap or pcapng: ``tcpdump -w`` on
the collector's port, or the engine's own rolling recording, ``--record-sflow``)
defines each policy's flow and threshold in a fresh :class:`sflow.engine.Engine`,
feeds it every datagram at its capture time, and drives the decision core as the
daemon would against a live engine, on the capture's clock:

* after each datagram, the engine's new threshold events (the daemon's long poll
  returns them at once);
* every policy's ``/activeflows`` poll every ``interval``, the engine's
  housekeeping and the core's ``Tick`` every second, the port map (from the
  agents' counter samples) every second;

so the taps come at the capture time the live daemon would have taken them (to
within one export interval of the agents), as fast as the CPU allows. Because the
engine recomputes everything from the datagrams, a *changed* policy (keys,
filter, threshold, smoothing) can be backtested, which a recording of an
engine's JSON answers cannot do. Output: :mod:`demon.replay`'s.
"""

from __future__ import annotations

import heapq
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping

from demon.core import awaiting_placement
from demon.policy import engine_policies
from demon.replay_core import TICK, Backtest, ReplayError, ReplayResult
from sflow.client import parse_event
from sflow.engine import Engine
from sflow.flowdef import DefinitionError, parse_flow, parse_threshold
from sflow.pcap import PcapError, read_udp_packets

SFLOW_PORT = 6343
_PCAP_MAGICS = {b"\xd4\xc3\xb2\xa1", b"\x4d\x3c\xb2\xa1", b"\xa1\xb2\xc3\xd4", b"\xa1\xb2\x3c\x4d",
                b"\x0a\x0d\x0d\x0a"}


def _captures(path: Path) -> list[Path]:
    """The capture files ``path`` stands for: itself, or a directory's (a rolling
    recording's segments, or any pcap/pcapng files), in name (= time) order."""
    if path.is_dir():
        return sorted(p for p in path.iterdir() if p.is_file() and _is_pcap(p))
    return [path] if _is_pcap(path) else []


def _is_pcap(path: Path) -> bool:
    try:
        with open(path, "rb") as fh:
            return fh.read(4) in _PCAP_MAGICS
    except OSError:
        return False


def is_capture(path: str | Path) -> bool:
    """True if ``path`` is a pcap/pcapng file, or a directory of them (by magic number)."""
    return bool(_captures(Path(path)))


def datagrams(path: str | Path, port: int | None = SFLOW_PORT) -> list[tuple[float, str, bytes]]:
    """(capture time, UDP source address, payload) of the sFlow datagrams, in time order.

    Datagrams sent to ``port``; when none are (a collector on another port), every
    UDP datagram of the capture (the engine counts what is not sFlow as malformed).
    """
    packets = []
    for capture in _captures(Path(path)):
        try:
            packets += read_udp_packets(capture)
        except (PcapError, OSError) as exc:
            raise ReplayError(f"cannot read the capture {capture}: {exc}") from None
    chosen = [p for p in packets if port is None or p.dst_port == port] or packets
    out = [(p.timestamp, p.src_ip, p.payload) for p in chosen]
    out.sort(key=lambda d: d[0])  # stable: same-time datagrams keep their order
    return out


class RawBacktest:
    """The embedded engine and the core on the capture's clock; ``feed`` datagrams in
    time order, then ``finish``."""

    def __init__(self, policies: Mapping[str, Any], limits: Any,
                 switches: list[dict[str, Any]], start: float) -> None:
        self.core = Backtest(policies, limits, switches, start)
        self.engine = Engine()
        self.policies = engine_policies(policies)
        for pol in self.policies.values():
            try:
                self.engine.set_flow(parse_flow(pol.flow_name, pol.flow_spec()))
                spec = pol.threshold_spec()
                if spec is not None:
                    self.engine.set_threshold(parse_threshold(pol.flow_name, spec))
            except DefinitionError as exc:
                raise ReplayError(f"policy {pol.name}: the engine refuses its definition: "
                                  f"{exc}") from None
        self.cursor = 0
        self.malformed = 0
        self.datagrams = 0
        # timers: (due, order, kind, policy) — kinds run in this order at equal times
        self._timers: list[tuple[float, int, str, str]] = []
        heapq.heappush(self._timers, (start + TICK, 0, "housekeeping", ""))
        for name, pol in self.policies.items():
            heapq.heappush(self._timers, (start + pol.interval, 1, "poll", name))

    @property
    def result(self) -> ReplayResult:
        return self.core.result

    def advance(self, now: float) -> None:
        """Run every timer due up to ``now`` at its own time."""
        while self._timers and self._timers[0][0] <= now:
            due, order, kind, name = heapq.heappop(self._timers)
            if kind == "housekeeping":
                self.engine.tick(due)
                self.core.on_port_map(self.engine.port_map(due))
                self.core.advance(due)
                heapq.heappush(self._timers, (due + TICK, order, kind, name))
            else:
                pol = self.policies[name]
                self.core.advance(due)
                rows = self.engine.active_flows(pol.flow_name, due, max_flows=pol.max_flows,
                                                min_value=pol.min_value) or []
                self.core.on_poll(name, rows, due)
                heapq.heappush(self._timers, (due + pol.interval, order, kind, name))
        self.core.advance(now)

    def feed(self, ts: float, source: str, payload: bytes) -> None:
        self.advance(ts)
        self.datagrams += 1
        if not self.engine.receive(payload, ts, source):
            self.malformed += 1
        if self.engine.last_event_id > self.cursor:
            new = self.engine.events(self.cursor, max_events=1_000_000)
            self.cursor = self.engine.last_event_id
            self.core.on_events([parse_event(obj) for obj in new], ts)
        if awaiting_placement(self.core.state):
            # as the daemon does: a flow waits for its port, the map is read again at once
            # (agents announce ports with their counter samples) and the waiting retried
            before = self.core.port_map
            self.core.on_port_map(self.engine.port_map(ts))
            if self.core.port_map is not before:
                self.core.tick(ts)

    def finish(self, end: float) -> ReplayResult:
        self.advance(end)
        result = self.core.result
        result.datagrams = self.datagrams
        result.malformed = self.malformed
        return result


def backtest_capture(policies: Mapping[str, Any], limits: Any, switches: list[dict[str, Any]],
                     items: list[tuple[float, str, bytes]], source: str = "",
                     progress: Callable[..., Iterable[Any]] | None = None) -> ReplayResult:
    """Run the policies over ``items`` (from :func:`datagrams`); ``progress`` wraps the
    loop (``sflow.cliopts.progress``)."""
    if not items:
        raise ReplayError(f"capture {source} holds no UDP datagram")
    run = RawBacktest(policies, limits, switches, items[0][0])
    loop = progress(items, total=len(items), desc="backtest", unit="datagram") if progress \
        else items
    for ts, src, payload in loop:
        run.feed(ts, src, payload)
    return run.finish(items[-1][0])

