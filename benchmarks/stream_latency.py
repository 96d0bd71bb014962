"""Transition → the capture host knows the tap, in the lab (split hosts).

    flock /tmp/pytapdemon-bench.lock .venv/bin/python benchmarks/stream_latency.py [--taps 40]

Root, Open vSwitch and Mininet; takes the lab lock. The lab runs with split
hosts (``topo.session``: the daemon's API on the management address, the
capture agent in h11's namespace following the transition stream with
``--daemon``). An operator taps ``--taps`` flows by hand through the API
(``at`` given: no traffic needed), one every ``--pace`` seconds, then releases
them: each tap gives created, active, expiring and removed transitions.

For every transition, from its ``at`` (the daemon's clock when the decision
core recorded it, the same machine's clock):

* capture host: when the capture agent has applied it (its stream cursor in
  ``daemon-cursor.json`` reaches the id; polled every millisecond);
* anchor, measured in the same run: when a plain long-poll client of the same
  API in the root namespace received it (the daemon's own part: save, publish,
  HTTP).

Prints p50/p95/max of both, and the machine's load.
"""

from __future__ import annotations

import argparse
import fcntl
import json
import os
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

POLICY = """\
name: bench
kind: elephant
keys: ipsource,ipdestination,tcpsourceport,tcpdestinationport
value: bytes
t: 2s
threshold: 50Mbps
interval: 1s
duration: 60s
max_duration: 10m
holddown: 1s
max_taps: 500
priority: 200
idle_timeout: 120
"""
GLOBAL = "max_taps: 500\nhard_timeout_grace: 10s\n"


def percentiles(values: list[float]) -> str:
    values = sorted(values)
    p95 = values[min(len(values) - 1, int(0.95 * len(values)))]
    return (f"p50 {statistics.median(values):7.2f} ms   p95 {p95:7.2f} ms   "
            f"max {values[-1]:7.2f} ms   (n={len(values)})")


def main(argv: list[str] | None = None) -> int:
    from demon.api.client import ApiClient
    from topo.session import LabSession, SessionOptions

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--taps", type=int, default=40)
    ap.add_argument("--pace", type=float, default=0.25, help="seconds between operator actions")
    args = ap.parse_args(argv)
    if os.geteuid() != 0:
        print("stream_latency: needs root (the lab)", file=sys.stderr)
        return 2
    lock = open(os.environ.get("DEMON_LAB_LOCK", "/tmp/pytapdemon-lab.lock"), "w")
    fcntl.flock(lock, fcntl.LOCK_EX)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        pol = root / "policies"
        pol.mkdir()
        (pol / "bench.yaml").write_text(POLICY)
        (pol / "_global.yaml").write_text(GLOBAL)
        session = LabSession(SessionOptions(out=root / "lab", policies=pol, split_hosts=True))
        session.start()
        client_seen: dict[int, float] = {}
        capture_seen: dict[int, float] = {}
        stop = threading.Event()
        try:
            api = ApiClient(str(session.api_url), session.tokens["lab"], timeout=40)
            start_id = api.get("/api/v1/status")["last_transition_id"]
            cursor_file = session.paths["captures"] / "daemon-cursor.json"

            def follow() -> None:  # the anchor: a plain long-poll client, root namespace
                after = start_id
                while not stop.is_set():
                    body = api.get("/api/v1/transitions", after=after, timeout=2)
                    now = time.time()
                    for record in body["transitions"]:
                        client_seen.setdefault(record["id"], now)
                    after = body["last_id"]

            def watch_capture_host() -> None:
                last = start_id
                while not stop.is_set():
                    try:
                        applied = json.loads(cursor_file.read_text())["last_id"]
                    except (OSError, ValueError, KeyError):
                        applied = last
                    now = time.time()
                    for tid in range(last + 1, applied + 1):
                        capture_seen.setdefault(tid, now)
                    last = max(last, applied)
                    time.sleep(0.001)

            threads = [threading.Thread(target=follow, daemon=True),
                       threading.Thread(target=watch_capture_host, daemon=True)]
            for t in threads:
                t.start()
            tap_ids = []
            for n in range(args.taps):
                answer = api.post("/api/v1/taps", {"policy": "bench", "at": "1/1", "hold": "5m",
                                                   "flow": f"10.0.0.1,10.0.0.2,{40000 + n},80"})
                tap_ids.append(answer["tap_id"])
                time.sleep(args.pace)
            for tap_id in tap_ids:
                api.post(f"/api/v1/taps/{tap_id}/release")
                time.sleep(args.pace)
            last_id = api.get("/api/v1/status")["last_transition_id"]
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline and (len(capture_seen) < last_id - start_id
                                                   or len(client_seen) < last_id - start_id):
                time.sleep(0.1)
            records = [r for r in api.transitions(start_id) if r["id"] <= last_id]
        finally:
            stop.set()
            session.stop()
    kinds: dict[str, int] = {}
    for r in records:
        kinds[r["kind"]] = kinds.get(r["kind"], 0) + 1
    at = {r["id"]: r["at"] for r in records}
    to_capture = [(capture_seen[i] - at[i]) * 1000 for i in at if i in capture_seen]
    to_client = [(client_seen[i] - at[i]) * 1000 for i in at if i in client_seen]
    load = os.getloadavg()
    print(f"{len(records)} transitions ({', '.join(f'{k} {v}' for k, v in sorted(kinds.items()))})"
          f" from {args.taps} operator taps, one action every {args.pace:g}s; load average "
          f"{load[0]:.2f} {load[1]:.2f} (2 cores)")
    print(f"anchor: transition -> root-namespace API client   {percentiles(to_client)}")
    print(f"transition -> capture host (h11) knows the tap    {percentiles(to_capture)}")
    missing = len(at) - len(to_capture)
    if missing:
        print(f"capture host never saw {missing} transition(s)")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
