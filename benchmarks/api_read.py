"""The daemon API's read latency with 1,000 taps in its history.

    flock /tmp/pytapdemon-bench.lock .venv/bin/python benchmarks/api_read.py [--taps 1000]

A state file holding ``--taps`` ended taps (four transitions each: created,
active, expiring, removed) and ``--live`` live ones is loaded by the real
runtime (embedded engine, a controller on the real RPC server); its API is
served as ``demon-watch`` serves it (FastAPI on uvicorn, loopback). One
keep-alive client asks each endpoint ``--requests`` times, one after the
other, and the script prints p50/p95/max per endpoint, beside the anchor
measured in the same run: the same server answering a constant ``{}`` (what
the HTTP stack alone costs).
"""

from __future__ import annotations

import argparse
import logging
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

import decision  # noqa: E402  (benchmarks/decision.py: its policy and the in-process daemon)
from demon.model import HistoryEntry, State, Tap  # noqa: E402
from demon.store import Store  # noqa: E402

TOKEN = "bench-token-0123456789"


def fill(path: Path, ended: int, live: int) -> list[str]:
    """A state file with ``ended`` ended taps and ``live`` live ones; their ids."""
    now = time.time()
    taps: dict[str, Tap] = {}
    entries: list[HistoryEntry] = []
    for n in range(ended + live):
        tid = f"bench.{n + 1}"
        created = now - 86400 + n * 60 if n < ended else now - 60
        flow = f"10.1.{n // 256 % 256}.{n % 256},10.0.0.2,6,{1024 + n},80"
        alive = n >= ended
        tap = Tap(tap_id=tid, policy="bench", flow_key=flow,
                  match={"eth_type": 2048, "ipv4_src": flow.split(",")[0], "ipv4_dst": "10.0.0.2",
                         "ip_proto": 6, "tcp_src": 1024 + n, "tcp_dst": 80, "in_port": 1},
                  dpid=1, in_port=1, copy_port=6 + n % 5, vlan_tag=None, bidirectional=False,
                  state="active" if alive else "removed", rate_bps=2e6, priority=100,
                  created_at=created, updated_at=created + 30, expires_at=created + 7200,
                  last_trigger_at=created + 20, trigger=f"event {n}: demon_bench 2Mbps > 1Mbps",
                  agent="127.0.0.1", data_source="101", packets=1000 * n, bytes=1_500_000 * n,
                  sent=True, ended_at=None if alive else created + 40)
        taps[tid] = tap
        detail = {"policy": "bench", "flow_key": flow}
        entries += [HistoryEntry(tid, created, "created", {"cause": tap.trigger, "event_id": n,
                                                           **detail, "state": "pending"}),
                    HistoryEntry(tid, created + 0.01, "active", {
                        "cause": "controller confirmed the install", **detail, "state": "active"})]
        if not alive:
            entries += [HistoryEntry(tid, created + 30, "expiring", {
                            "cause": "condition cleared: no trigger for 10s", **detail,
                            "state": "expiring"}),
                        HistoryEntry(tid, created + 40, "removed", {
                            "cause": "controller removed the mirror", **detail,
                            "state": "removed"})]
    with Store(path) as store:
        store.save(State(taps=taps, next_seq=ended + live + 1), entries)
        # The core forgets ended taps after a while; the state file keeps them.
        store.save(State(taps={k: t for k, t in taps.items() if t.state == "active"},
                         next_seq=ended + live + 1))
    return list(taps)


class Controller:
    """Answers like a component; holds the live taps' mirrors."""

    def __init__(self, live: list[str]) -> None:
        self.live = live

    def methods(self) -> set[str]:
        return {"hello", "list_switches", "list_mirrors", "install_mirror", "remove_mirror",
                "subscribe"}

    def call(self, method: str, params: dict[str, Any]) -> Any:
        if method == "hello":
            return {"protocol": 1, "component": "bench", "version": "0", "openflow": "1.3"}
        if method == "list_switches":
            return [{"dpid": 1, "name": "s1", "role": "filter", "host_ports": [1, 2, 3, 4, 5],
                     "uplinks": [6, 7, 8, 9, 10]}]
        if method == "list_mirrors":
            return [{"tap_id": t, "dpid": 1, "packets": 0, "bytes": 0} for t in self.live]
        if method == "install_mirror":
            return {"tap_id": params["tap_id"], "dpid": 1, "cookie": 1}
        return {"tap_id": params.get("tap_id"), "removed": True, "packets": 0, "bytes": 0}


def measure(client: Any, path: str, count: int) -> list[float]:
    client.get(path).raise_for_status()  # warm
    out = []
    for _ in range(count):
        start = time.perf_counter()
        resp = client.get(path)
        out.append((time.perf_counter() - start) * 1000)
        resp.raise_for_status()
    return out


def line(name: str, ms: list[float], size: int) -> str:
    ms = sorted(ms)
    p95 = ms[min(len(ms) - 1, int(0.95 * len(ms)))]
    return (f"{name:<44} p50 {statistics.median(ms):7.2f} ms   p95 {p95:7.2f} ms   "
            f"max {ms[-1]:7.2f} ms   ({size:,} bytes)")


def main(argv: list[str] | None = None) -> int:
    import httpx

    from demon.rpc.token import ApiToken
    from sflow.webserve import BackgroundServer

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--taps", type=int, default=1000, help="ended taps in the history")
    ap.add_argument("--live", type=int, default=20, help="live taps")
    ap.add_argument("--requests", type=int, default=200, help="requests per endpoint")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.ERROR)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        (root / "policies").mkdir()
        (root / "policies" / "bench.yaml").write_text(decision.POLICY.format(max_taps=1000))
        ids = fill(root / "state.sqlite", args.taps, args.live)
        live = ids[args.taps:]
        from fastapi import FastAPI

        bare = FastAPI()
        bare.get("/ping")(lambda: {})
        with decision.live_daemon(root / "policies", root / "state.sqlite", Controller(live),
                                  token=TOKEN, api=True, api_tokens=[ApiToken("bench", TOKEN)],
                                  bench_topology=False) as daemon, \
                BackgroundServer(bare, "127.0.0.1", 0, name="anchor") as anchor:
            runtime = daemon.runtime
            time.sleep(1.0)  # the loop has published its first batches
            last = runtime.view.last_id
            with httpx.Client(base_url=daemon.api_url, timeout=30) as client, \
                    httpx.Client(base_url=anchor.url, timeout=30) as bare_client:
                print(f"state file: {args.taps} ended taps + {args.live} live, "
                      f"{last} transitions; {args.requests} requests per endpoint, one client")
                print(line("anchor: same server, constant {}", measure(bare_client, "/ping",
                                                                       args.requests), 2))
                middle = ids[args.taps // 2]
                for name, path in (
                        ("GET /api/v1/status", "/api/v1/status"),
                        ("GET /api/v1/taps (all, limit 100000)", "/api/v1/taps?limit=100000"),
                        ("GET /api/v1/taps?state=live", "/api/v1/taps?state=live"),
                        ("GET /api/v1/taps?since=<last hour>",
                         f"/api/v1/taps?since={time.time() - 3600:.0f}"),
                        ("GET /api/v1/taps/{id} (an ended tap's story)", f"/api/v1/taps/{middle}"),
                        ("GET /api/v1/policies", "/api/v1/policies"),
                        ("GET /api/v1/transitions?after=0&limit=1000",
                         "/api/v1/transitions?after=0&limit=1000"),
                        (f"GET /api/v1/transitions?after={last - 10}",
                         f"/api/v1/transitions?after={last - 10}"),
                        ("GET /metrics", "/metrics")):
                    size = len(client.get(path).content)
                    print(line(name, measure(client, path, args.requests), size))
    return 0


if __name__ == "__main__":
    sys.exit(main())
