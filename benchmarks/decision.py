"""Decision speed: threshold events through the core and the store, and the delay
from an event reaching the daemon to its ``install_mirror`` reaching the controller.

    .venv/bin/python benchmarks/decision.py [--events 20000] [--latency-events 1000]

Prints, measured in the same run:

* anchor: a bare SQLite loop on the same kind of file (WAL, synchronous=NORMAL),
  one INSERT + COMMIT per row: the floor any per-step persistence pays;
* core only: ``core.step`` per event, no store;
* core + store: ``Runtime.process`` on batches of 100 events (what one long poll
  delivers): steps, history, cursor, one transaction per batch;
* latency: the real runtime (embedded engine for its HTTP API, a controller on
  the real RPC server), events handed to its input queue at a steady pace,
  each a new elephant → ``install_mirror`` received by the controller:
  median, p95, max.

Targets (issue 4): >= 5,000 events/s through core + store, p95 <= 20 ms.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import sqlite3
import statistics
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from demon import core  # noqa: E402
from demon.api.server import ApiServer  # noqa: E402
from demon.core import Context  # noqa: E402
from demon.model import ControllerStatus, State  # noqa: E402
from demon.rpc.client import RpcClient  # noqa: E402
from demon.rpc.server import RpcServer  # noqa: E402
from demon.runtime import (Runtime, RuntimeOptions, _Events, load_config,  # noqa: E402
                           threshold_event, thresholds_of)
from demon.store import Store  # noqa: E402
from demon.topology import Topology  # noqa: E402
from sflow.client import Event  # noqa: E402

POLICY = """\
name: bench
kind: elephant
keys: ipsource,ipdestination,ipprotocol,tcpsourceport,tcpdestinationport
threshold: 1Mbps
interval: 1h
duration: 1h
max_duration: 2h
max_taps: {max_taps}
"""
GLOBAL = "max_taps: {max_taps}\n"
TOKEN = "bench-token"
AGENT = "127.0.0.1"


def switches() -> list[dict[str, Any]]:
    out = [{"dpid": d, "name": f"s{d}", "role": "filter", "host_ports": [1, 2, 3, 4, 5],
            "uplinks": [6, 7, 8, 9, 10],
            "ports": [{"port_no": p, "name": f"s{d}-eth{p}"} for p in range(1, 11)]}
           for d in (1, 2)]
    out.append({"dpid": 3, "name": "s3", "role": "aggregation", "uplinks": list(range(1, 11)),
                "capture_port": 11, "host_ports": []})
    return out


def port_map() -> list[dict[str, Any]]:
    return [{"agent": AGENT, "ifIndex": 100 * d + p, "dpid": d, "ofPort": p}
            for d in (1, 2) for p in range(1, 11)]


def event(n: int, flows: int) -> Event:
    k = n % flows
    key = f"10.{k // 65536 % 256}.{k // 256 % 256}.{k % 256},10.0.0.2,6,{1024 + k % 60000},80"
    raw: dict[str, Any] = {}
    return Event(event_id=n + 1, timestamp_ms=int(time.time() * 1000),
                 threshold_id="demon_bench", metric="demon_bench", agent=AGENT,
                 data_source=str(101 + k % 5), value=500_000.0, threshold=125_000.0,
                 flow_key=key, raw=raw)


def policies_dir(root: Path, max_taps: int) -> Path:
    pol = root / f"policies-{max_taps}"
    pol.mkdir()
    (pol / "bench.yaml").write_text(POLICY.format(max_taps=max_taps))
    (pol / "_global.yaml").write_text(GLOBAL.format(max_taps=max_taps))
    return pol


def rate(count: int, seconds: float) -> str:
    return f"{count / seconds:,.0f}/s"


def bench_sqlite(root: Path, rows: int) -> float:
    db = sqlite3.connect(root / "anchor.sqlite", isolation_level=None)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA synchronous=NORMAL")
    db.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, at REAL, detail TEXT)")
    start = time.perf_counter()
    for n in range(rows):
        db.execute("BEGIN")
        db.execute("INSERT INTO t (at, detail) VALUES (?, ?)", (time.time(), '{"cause":"x"}'))
        db.execute("COMMIT")
    elapsed = time.perf_counter() - start
    db.close()
    return elapsed


def make_context(pol: Path) -> Context:
    from sflow.client import parse_port_map_entry

    policies, limits = load_config(pol)
    topology = Topology([parse_port_map_entry(e) for e in port_map()], switches())
    return Context(policies=policies, topology=topology, limits=limits)


def bench_core(ctx: Context, events: list[Event]) -> float:
    by_threshold = thresholds_of(ctx.policies)
    state, _ = core.step(State(), ctx, ControllerStatus(up=True), time.time())
    start = time.perf_counter()
    for ev in events:
        inp = threshold_event(ev, by_threshold)
        state, _ = core.step(state, ctx, inp, time.time())
    return time.perf_counter() - start


def bench_core_store(root: Path, pol: Path, ctx: Context, events: list[Event]) -> float:
    store = Store(root / "state.sqlite")
    runtime = Runtime(pol, "http://127.0.0.1:9", RpcClient("tcp:127.0.0.1:9", TOKEN), store,
                      RuntimeOptions(dry_run=True))
    runtime.ctx = ctx
    runtime._by_threshold = thresholds_of(ctx.policies)  # what start() sets
    runtime.process([ControllerStatus(up=True)])
    start = time.perf_counter()
    for i in range(0, len(events), 100):
        runtime.process([_Events(events[i:i + 100])])
    elapsed = time.perf_counter() - start
    store.close()
    return elapsed


class Controller:
    """Answers like a component; notes when each install arrived."""

    def __init__(self) -> None:
        self.arrived: dict[str, float] = {}

    def methods(self) -> set[str]:
        return {"hello", "list_switches", "list_mirrors", "install_mirror", "remove_mirror",
                "subscribe"}

    def call(self, method: str, params: dict[str, Any]) -> Any:
        if method == "install_mirror":
            self.arrived[params["tap_id"]] = time.perf_counter()
            return {"tap_id": params["tap_id"], "dpid": params["dpid"], "cookie": 1,
                    "entries": 1, "replaced": False, "installed_at": time.time()}
        if method == "hello":
            return {"protocol": 1, "component": "bench", "version": "0", "openflow": "1.3"}
        if method == "list_switches":
            return switches()
        if method == "remove_mirror":
            return {"tap_id": params["tap_id"], "removed": True, "packets": 0, "bytes": 0}
        return []


@dataclass
class LiveDaemon:
    """The real daemon in this process, as :func:`live_daemon` runs it."""

    runtime: Runtime
    controller: Any
    api: ApiServer | None

    @property
    def api_url(self) -> str:
        if self.api is None:
            raise RuntimeError("the daemon was started without its API (api=True)")
        return self.api.url


@contextlib.contextmanager
def live_daemon(pol: Path, state: Path, controller: Any, *, token: str = TOKEN,
                api: bool = False, api_tokens: list[Any] | None = None,
                bench_topology: bool = True) -> Iterator[LiveDaemon]:
    """The whole daemon over real parts: the embedded engine, the RPC server around
    ``controller`` (a component's answers), the state file, the runtime's loop on its
    thread and, with ``api``, its HTTP API; everything stopped and closed on the way out.
    ``bench_topology``: the bench fabric and port map (the embedded engine has no port
    map without sFlow), so that the workload's events can be placed."""
    from sflow.embedded import EmbeddedEngine

    engine = EmbeddedEngine(sflow_addr=("127.0.0.1", 0), http_addr=("127.0.0.1", 0)).start()
    server = RpcServer("tcp:127.0.0.1:0", token, controller).start()
    store = Store(state)
    runtime = Runtime(pol, engine.url, RpcClient(server.address, token), store,
                      RuntimeOptions(event_poll_timeout=1))
    server_api: ApiServer | None = None
    thread = threading.Thread(target=runtime.run, daemon=True)
    try:
        runtime.start()
        if bench_topology:
            runtime.ctx = make_context(pol)
        thread.start()
        if api:
            server_api = ApiServer(runtime, "127.0.0.1", 0, api_tokens).start()
        yield LiveDaemon(runtime, controller, server_api)
    finally:
        if server_api is not None:
            server_api.stop()
        runtime.request_stop("benchmark over")
        if thread.is_alive():
            thread.join(timeout=20)
        server.close()
        engine.stop()
        store.close()


def bench_latency(root: Path, pol: Path, count: int, pace: float) -> list[float]:
    handler = Controller()
    sent: dict[str, float] = {}
    with live_daemon(pol, root / "latency.sqlite", handler) as daemon:
        time.sleep(0.5)
        for n in range(count):
            ev = event(n, count)
            sent[f"bench.{n + 1}"] = time.perf_counter()
            daemon.runtime.submit(_Events([ev]))
            time.sleep(pace)
        deadline = time.monotonic() + 10
        while len(handler.arrived) < count and time.monotonic() < deadline:
            time.sleep(0.01)
    return [(handler.arrived[t] - sent[t]) * 1000 for t in sent if t in handler.arrived]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--events", type=int, default=20000)
    ap.add_argument("--flows", type=int, default=2000, help="distinct flow keys in the stream")
    ap.add_argument("--max-taps", type=int, default=32,
                    help="policy and global cap in the throughput runs (the rest wait)")
    ap.add_argument("--latency-events", type=int, default=300,
                    help="each one a new tap: the live-tap count grows to this")
    ap.add_argument("--pace", type=float, default=0.004, help="seconds between latency events")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.ERROR)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        pol = policies_dir(root, args.max_taps)
        ctx = make_context(pol)
        events = [event(n, args.flows) for n in range(args.events)]
        anchor = bench_sqlite(root, args.events)
        print(f"anchor  sqlite INSERT+COMMIT loop: {rate(args.events, anchor)} "
              f"({args.events} rows in {anchor:.2f}s)")
        core_s = bench_core(ctx, events)
        print(f"core    core.step only:            {rate(args.events, core_s)} "
              f"({args.events} events, {args.flows} flows, caps {args.max_taps}, "
              f"{core_s:.2f}s)")
        both = bench_core_store(root, pol, ctx, events)
        print(f"runtime core + store (batches of 100): {rate(args.events, both)} "
              f"({both:.2f}s)   target >= 5,000/s")
        lat = bench_latency(root, policies_dir(root, 10000), args.latency_events, args.pace)
        if not lat:
            print("latency: no install arrived")
            return 1
        lat.sort()
        p95 = lat[min(len(lat) - 1, int(0.95 * len(lat)))]
        print(f"latency event in → install_mirror at controller ({len(lat)} events, one every "
              f"{args.pace * 1000:g} ms): median {statistics.median(lat):.2f} ms, "
              f"p95 {p95:.2f} ms, max {lat[-1]:.2f} ms   target p95 <= 20 ms")
    return 0


if __name__ == "__main__":
    sys.exit(main())
