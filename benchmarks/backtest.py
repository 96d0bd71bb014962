"""Raw-sFlow backtest speed: capture time replayed per second of wall time.

    flock /tmp/pytapdemon-bench.lock .venv/bin/python benchmarks/backtest.py \\
        [--capture ../shared/captures/ovs-seed-elephant.pcap] [--loops 40] [--policies policies/lab]

The capture is replayed ``--loops`` times end to end (each copy shifted in time,
so the engine sees one long recording), through ``demon.replay_sflow`` with the
given policies, exactly as ``demon-watch --replay`` runs it. Printed, measured in
the same run:

* anchor: the bare engine fed the same datagrams (``Engine.receive`` with the
  policies' flows defined, no polls, no decision core): the floor;
* backtest: the whole backtest (engine, polls, events, ticks, core);
* speed: capture seconds per wall-clock second (target: >= 20x real time).

Figures only; nothing is asserted.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from demon.policy import engine_policies, load_policy_set  # noqa: E402
from demon.replay import load_fabric  # noqa: E402
from demon.replay_sflow import backtest_capture, datagrams  # noqa: E402
from sflow.engine import Engine  # noqa: E402
from sflow.flowdef import parse_flow, parse_threshold  # noqa: E402

SHARED = Path(__import__("os").environ.get("DEMON_SHARED", REPO.parent / "shared"))


def looped(items: list[tuple[float, str, bytes]], loops: int) -> list[tuple[float, str, bytes]]:
    span = items[-1][0] - items[0][0] + 1.0
    return [(ts + n * span, src, payload) for n in range(loops) for ts, src, payload in items]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--capture", default=str(SHARED / "captures" / "ovs-seed-elephant.pcap"))
    ap.add_argument("--fabric", default=str(REPO / "tests/fixtures/replay/"
                                            "elephant_session.fabric.json"))
    ap.add_argument("--policies", default=str(REPO / "policies" / "lab"))
    ap.add_argument("--loops", type=int, default=40)
    ap.add_argument("--runs", type=int, default=3)
    args = ap.parse_args()
    loaded = load_policy_set(args.policies)
    switches = load_fabric(args.fabric)
    items = looped(datagrams(args.capture), args.loops)
    span = items[-1][0] - items[0][0]
    print(f"capture {args.capture} x{args.loops}: {len(items)} datagrams over {span:.0f}s of "
          f"capture time; policies {args.policies} ({', '.join(sorted(loaded.policies))})")
    for run in range(1, args.runs + 1):
        engine = Engine()
        for pol in engine_policies(loaded.policies).values():
            engine.set_flow(parse_flow(pol.flow_name, pol.flow_spec()))
            if pol.threshold_spec() is not None:
                engine.set_threshold(parse_threshold(pol.flow_name, pol.threshold_spec()))
        t0 = time.perf_counter()
        for ts, src, payload in items:
            engine.receive(payload, ts, src)
        anchor = time.perf_counter() - t0
        t0 = time.perf_counter()
        result = backtest_capture(loaded.policies, loaded.limits, switches, items)
        took = time.perf_counter() - t0
        print(f"run {run}: anchor (engine ingest only) {anchor:.3f}s = {span / anchor:,.0f}x "
              f"real time; backtest {took:.3f}s = {span / took:,.0f}x real time "
              f"({took / len(items) * 1e6:.1f} µs/datagram, {len(result.taps)} taps, "
              f"{result.events} events, {result.polls} polls)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
