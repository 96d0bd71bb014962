"""End-to-end tap latency on the lab, and what a tap costs production traffic.

    .venv/bin/python benchmarks/lab_latency.py [--runs 10] [--rate 200M] [--seconds 4]

Needs root, Open vSwitch and Mininet; takes the machine-wide lab lock. One lab
(os-ken component, embedded engine, demon-watch with policies/lab) serves every run.

Prints, over ``--runs`` TCP elephants h1 -> h2 (a fresh source port each, so no
hold-down applies), median and p95 of the time from flow start to

* the threshold event (the daemon's "created" record),
* the mirror installed (the controller's confirmation, "active"),
* the first mirrored packet at the capture host (kernel receive timestamp on h11),

beside the physical floor for the sampling rate and threshold used: the time to
collect the samples that separate the flow's rate from the threshold at 95 %
confidence, plus the wait for the sFlow agent's export (OVS flushes samples
once a second: 0.5 s on average).

Then the production flow's TCP throughput (iperf3, unlimited) without a tap and
with its mirror installed, alternating, side by side (the anchor is the untapped
figure measured in the same run).
"""

from __future__ import annotations

import argparse
import fcntl
import math
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path


REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from topo.hostproc import traffic, traffic_result  # noqa: E402
from topo.session import LabSession, SessionOptions  # noqa: E402
from topo.traffic import parse_rate  # noqa: E402

THRESHOLD_BPS = 50e6  # policies/lab/elephant-tcp.yaml
SMOOTHING_T = 2.0  # its t
FRAME = 1514  # a full-size TCP segment on the wire (TSO off)
Z95 = 1.645  # one-sided 95 %
EXPORT_INTERVAL = 1.0  # OVS's sFlow agent flushes its datagrams every second


def pct(values: list[float], q: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, max(0, math.ceil(q * len(s)) - 1))]


def floor_seconds(rate_bps: float, sampling: int) -> dict[str, float]:
    """Lower bounds on detection latency that no engine can beat at this sampling."""
    pps = rate_bps / (FRAME * 8)
    # Poisson sample count k: the rate estimate's lower 95 % bound R(1 - z/sqrt(k)) must exceed T.
    k = math.ceil((Z95 * rate_bps / (rate_bps - THRESHOLD_BPS)) ** 2)
    samples = k / (pps / sampling)
    return {"samples_needed": k, "sampling_s": samples, "export_s": EXPORT_INTERVAL,
            "floor_s": samples + EXPORT_INTERVAL / 2,
            "floor_worst_s": samples + EXPORT_INTERVAL}


def one_run(s: LabSession, sport: int, dport: int, rate: str, seconds: float) -> dict[str, float] | None:
    nbytes = int(parse_rate(rate) / 8 * seconds)
    sink = traffic(s.lab.host("h2"), "tcpsink", "--port", str(dport), "--max-time", "60")
    time.sleep(0.3)
    start = time.time()
    sender = traffic(s.lab.host("h1"), "tcp", "--dst", "10.0.0.2", "--dport", str(dport), "--sport", str(sport),
                     "--bytes", str(nbytes), "--rate", rate)
    key = f"10.0.0.1,10.0.0.2,{sport},{dport}"
    marks: dict[str, float] = {}

    def progressed(sess: LabSession) -> bool:
        for e in sess.timeline_dicts():
            tap = sess.taps.get(e["tap_id"] or "")
            if tap and tap["flow_key"] == key and e["what"] in ("tap created", "tap active", "first packet captured"):
                marks.setdefault(e["what"], e["at"])
        return sender.proc.poll() is not None and len(marks) == 3

    s.wait(progressed, seconds + 20)
    sender.proc.wait(30)
    sink.proc.wait(30)
    s.wait(lambda sess: not sess.live_taps(), 30)
    if len(marks) < 3:
        return None
    return {"event": marks["tap created"] - start, "installed": marks["tap active"] - start,
            "first_packet": marks["first packet captured"] - start,
            "install_to_packet": marks["first packet captured"] - marks["tap active"]}


def throughput(s: LabSession, tapped: bool, cport: int, seconds: float) -> float:
    tap_id = f"bench-{cport}"
    if tapped:
        s.rpc.install_mirror(tap_id, 1, {"in_port": 1, "ipv4_src": "10.0.0.1", "ipv4_dst": "10.0.0.2",
                                         "tcp_src": cport, "tcp_dst": 5999}, 6, idle_timeout=0,
                             hard_timeout=120)
    server = traffic(s.lab.host("h2"), "serve", "--port", "5999")
    time.sleep(0.5)
    try:
        result = traffic_result(s.lab.host("h1"), "elephant", "--dst", "10.0.0.2", "--port", "5999",
                                "--rate", "100G", "--time", str(seconds), "--cport", str(cport),
                                timeout=seconds + 30)
    finally:
        server.stop()
        if tapped:
            s.rpc.remove_mirror(tap_id)
    return (result.get("bps_sent") or 0) / 1e6


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--runs", type=int, default=10)
    p.add_argument("--rate", default="200M")
    p.add_argument("--seconds", type=float, default=4)
    p.add_argument("--sampling", type=int, default=100)
    p.add_argument("--throughput-runs", type=int, default=3)
    args = p.parse_args(argv)
    if os.geteuid() != 0:
        print("lab_latency: needs root (Open vSwitch, Mininet)", file=sys.stderr)
        return 2
    lock = open(os.environ.get("DEMON_LAB_LOCK", "/tmp/pytapdemon-lab.lock"), "w")
    fcntl.flock(lock, fcntl.LOCK_EX)
    out = Path(tempfile.mkdtemp(prefix="lab-latency-"))
    s = LabSession(SessionOptions(out=out, sampling=args.sampling))
    results: list[dict[str, float]] = []
    missed = 0
    try:
        s.start()
        for i in range(args.runs):
            r = one_run(s, 43000 + i, 5400 + i, args.rate, args.seconds)
            if r is None:
                missed += 1
            else:
                results.append(r)
            print(f"run {i + 1}/{args.runs}: " + (", ".join(f"{k} {v * 1000:.0f} ms" for k, v in r.items())
                                                  if r else "no tap"), flush=True)
        s.stop_watch()  # from here on only the benchmark installs mirrors
        plain, tapped = [], []
        for i in range(args.throughput_runs):
            plain.append(throughput(s, False, 44000 + 2 * i, 4))
            tapped.append(throughput(s, True, 44001 + 2 * i, 4))
    finally:
        s.stop()
    rate = parse_rate(args.rate)
    fl = floor_seconds(rate, args.sampling)
    print(f"\nlab latency: {len(results)} of {args.runs} elephants tapped ({missed} missed); TCP {args.rate}bit/s, "
          f"threshold {THRESHOLD_BPS / 1e6:.0f} Mbit/s, sampling 1-in-{args.sampling}, t={SMOOTHING_T:g}s")
    print(f"{'from flow start to':32} {'median':>9} {'p95':>9}")
    for key, label in (("event", "threshold event"), ("installed", "mirror installed"),
                       ("first_packet", "first packet at capture host"),
                       ("install_to_packet", "(install -> first packet)")):
        vals = [r[key] for r in results]
        if vals:
            print(f"{label:32} {statistics.median(vals) * 1000:7.0f}ms {pct(vals, 0.95) * 1000:7.0f}ms")
    print(f"physical floor: {fl['samples_needed']} samples for 95 % confidence take {fl['sampling_s'] * 1000:.0f} ms "
          f"at this rate; + the wait for OVS's sFlow export (once a second: 0-{fl['export_s'] * 1000:.0f} ms, "
          f"mean {fl['export_s'] * 500:.0f} ms) = {fl['sampling_s'] * 1000:.0f} ms at best, "
          f"{fl['floor_s'] * 1000:.0f} ms on average, {fl['floor_worst_s'] * 1000:.0f} ms at worst")
    print(f"\nproduction TCP throughput h1->h2 (iperf3, {args.throughput_runs} x 4 s each, alternating):")
    print(f"  without a tap (anchor): median {statistics.median(plain):7.0f} Mbit/s  {[round(x) for x in plain]}")
    print(f"  with its mirror:        median {statistics.median(tapped):7.0f} Mbit/s  {[round(x) for x in tapped]}")
    print(f"(lab output in {out})")
    return 0 if results else 1


if __name__ == "__main__":
    raise SystemExit(main())
