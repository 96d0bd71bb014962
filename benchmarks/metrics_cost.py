"""What the daemon's metrics cost its decision loop: the same work with and without
a Prometheus scraper, measured in the same run (the run without is the anchor).

    .venv/bin/python benchmarks/metrics_cost.py [--events 20000] [--every 1.0] [--rounds 3]

* throughput: ``Runtime.process`` on batches of 100 threshold events (core +
  store, as in ``benchmarks/decision.py``), while a thread renders the daemon's
  metrics (``Runtime.render_metrics``, what ``GET /metrics`` serves) every
  ``--every`` seconds; and, to make any cost visible, every 0.1 s;
* latency: the real runtime with its API (uvicorn), events at a steady pace,
  event in → ``install_mirror`` at the controller, while a client GETs
  ``/metrics`` over HTTP every ``--every`` seconds;
* one scrape: how long rendering takes with the taps the runs left.

Rounds alternate without/with so that a machine's load drift hits both.
"""

from __future__ import annotations

import argparse
import logging
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, Callable

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

import httpx  # noqa: E402

import decision  # noqa: E402  (benchmarks/decision.py: its workload and fake controller)
from demon.model import ControllerStatus  # noqa: E402
from demon.rpc.client import RpcClient  # noqa: E402
from demon.runtime import Runtime, RuntimeOptions, _Events, thresholds_of  # noqa: E402
from demon.store import Store  # noqa: E402


class Scraper:
    """Calls ``scrape()`` every ``every`` seconds on a thread; counts and times them."""

    def __init__(self, scrape: Callable[[], Any], every: float) -> None:
        self.scrape, self.every = scrape, every
        self.times: list[float] = []
        self._halt = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._halt.wait(self.every):
            start = time.perf_counter()
            self.scrape()
            self.times.append(time.perf_counter() - start)

    def __enter__(self) -> "Scraper":
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._halt.set()
        self._thread.join(5)


def throughput(root: Path, pol: Path, events: list[Any], every: float | None, n: int) -> tuple[float, int]:
    store = Store(root / f"tp-{n}.sqlite")
    runtime = Runtime(pol, "http://127.0.0.1:9", RpcClient("tcp:127.0.0.1:9", decision.TOKEN), store,
                      RuntimeOptions(dry_run=True))
    runtime.ctx = decision.make_context(pol)
    runtime._by_threshold = thresholds_of(runtime.ctx.policies)  # what start() sets
    runtime.process([ControllerStatus(up=True)])
    scraper = Scraper(runtime.render_metrics, every) if every else None
    try:
        if scraper:
            scraper.__enter__()
        start = time.perf_counter()
        for i in range(0, len(events), 100):
            runtime.process([_Events(events[i:i + 100])])
        elapsed = time.perf_counter() - start
    finally:
        if scraper:
            scraper.__exit__()
        store.close()
    return len(events) / elapsed, len(scraper.times) if scraper else 0


def latency(root: Path, pol: Path, count: int, pace: float, every: float | None, n: int) -> tuple[list[float], int]:
    handler = decision.Controller()
    sent: dict[str, float] = {}
    with decision.live_daemon(pol, root / f"lat-{n}.sqlite", handler, api=True) as daemon, \
            httpx.Client(base_url=daemon.api_url, timeout=10) as client:
        scraper = Scraper(lambda: client.get("/metrics").raise_for_status(), every) if every else None
        try:
            if scraper:
                scraper.__enter__()
            time.sleep(0.5)
            for i in range(count):
                sent[f"bench.{i + 1}"] = time.perf_counter()
                daemon.runtime.submit(_Events([decision.event(i, count)]))
                time.sleep(pace)
            deadline = time.monotonic() + 10
            while len(handler.arrived) < count and time.monotonic() < deadline:
                time.sleep(0.01)
        finally:
            if scraper:
                scraper.__exit__()
    return sorted((handler.arrived[t] - sent[t]) * 1000 for t in sent if t in handler.arrived), \
        len(scraper.times) if scraper else 0


def pct(values: list[float], q: float) -> float:
    return values[min(len(values) - 1, int(q * len(values)))]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--events", type=int, default=20000)
    ap.add_argument("--flows", type=int, default=2000)
    ap.add_argument("--max-taps", type=int, default=32)
    ap.add_argument("--latency-events", type=int, default=300)
    ap.add_argument("--pace", type=float, default=0.004)
    ap.add_argument("--every", type=float, default=1.0, help="seconds between scrapes (default 1)")
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.ERROR)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        pol = decision.policies_dir(root, args.max_taps)
        events = [decision.event(i, args.flows) for i in range(args.events)]
        runs: dict[str, list[float]] = {"none": [], "every": [], "stress": []}
        n = 0
        for _ in range(args.rounds):
            for label, every in (("none", None), ("every", args.every), ("stress", 0.1)):
                n += 1
                rate, _ = throughput(root, pol, events, every, n)
                runs[label].append(rate)
        print(f"throughput, core + store, batches of 100 ({args.events} events, {args.rounds} rounds, median):")
        anchor = statistics.median(runs["none"])
        print(f"  anchor  no scraper:            {anchor:,.0f} events/s  {[round(r) for r in runs['none']]}")
        for label, text in (("every", f"scrape every {args.every:g} s"), ("stress", "scrape every 0.1 s")):
            med = statistics.median(runs[label])
            print(f"  {text:<28} {med:,.0f} events/s  ({(med / anchor - 1) * 100:+.1f}%)  "
                  f"{[round(r) for r in runs[label]]}")
        lat_pol = decision.policies_dir(root, 10000)
        lats: dict[str, list[float]] = {"none": [], "every": []}
        scrapes = 0
        for _ in range(args.rounds):
            for label, every in (("none", None), ("every", args.every)):
                n += 1
                got, k = latency(root, lat_pol, args.latency_events, args.pace, every, n)
                lats[label].extend(got)
                scrapes += k
        print(f"latency event → install_mirror ({args.latency_events} events × {args.rounds} rounds, one every "
              f"{args.pace * 1000:g} ms):")
        for label, text in (("none", "anchor  no scraper"), ("every", f"GET /metrics every {args.every:g} s")):
            v = sorted(lats[label])
            print(f"  {text:<28} median {statistics.median(v):.2f} ms, p95 {pct(v, 0.95):.2f} ms, "
                  f"max {v[-1]:.2f} ms ({len(v)} events)")
        print(f"  ({scrapes} HTTP scrapes during the runs with a scraper)")
        # One scrape, as the number of taps the daemon knows grows (each new flow a tap).
        big = lat_pol  # caps of 10,000
        store = Store(root / "one.sqlite")
        runtime = Runtime(big, "http://127.0.0.1:9", RpcClient("tcp:127.0.0.1:9", decision.TOKEN), store,
                          RuntimeOptions(dry_run=True))
        runtime.ctx = decision.make_context(big)
        runtime._by_threshold = thresholds_of(runtime.ctx.policies)
        runtime.process([ControllerStatus(up=True)])
        done = 0
        for want in (100, 1000, 10000):
            fresh = [decision.event(i, 10**6) for i in range(done, want)]
            for i in range(0, len(fresh), 100):
                runtime.process([_Events(fresh[i:i + 100])])
            done = want
            times = []
            for _ in range(20):
                start = time.perf_counter()
                body, _ = runtime.render_metrics()
                times.append((time.perf_counter() - start) * 1000)
            med = statistics.median(times)
            print(f"one scrape (render_metrics) with {len(runtime.view.snapshot().taps()):>5} taps known: "
                  f"median {med:.2f} ms, {len(body)} bytes → {med / 10:.3f}% of one core at one scrape a second")
        store.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
