"""Capture agent benchmark: what it files per CPU second, beside dumpcap and tcpdump,
and what a tap costs production in the lab.

    flock /tmp/pytapdemon-bench.lock .venv/bin/python benchmarks/capture.py [--mode all]

Modes (root for the live ones):

* ``offline``: ``demon-capture --read`` of a generated capture (two taps: a TCP
  elephant of 1514-byte frames and a 64-byte UDP flood), CPU seconds of the
  filing itself; anchor: ``tcpdump -r … -w …`` with each tap's filter.
* ``veth``: live on a veth pair of its own (no lab): a sender blasts the same two
  flows; demon-capture, dumpcap and tcpdump capture them *at the same time* on
  the receiving end, each with the taps' filter, so each sees the same frames;
  CPU seconds of each capture process between start and end of the traffic.
* ``lab``: the seed network (takes the lab lock). Production cost of a tap, side
  by side: iperf3 h1 → h2 as fast as it goes (or at ``--rate``), untapped / tapped with the agent
  on h11 / tapped with nothing capturing on h11 (the copy alone), alternated,
  ``--runs`` rounds, medians. Then one tapped run with demon-capture, dumpcap
  and tcpdump all capturing on h11: CPU per frame of each (the anchor).

Figures are CPU per frame and frames (Gbit) filed per CPU second; other
sessions may load the machine's cores: compare figures of one run only.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import resource
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from sflow.pcap import PcapWriter, iter_packets, udp_frame  # noqa: E402

PY = sys.executable
TICK = os.sysconf("SC_CLK_TCK")
ELEPHANT = {"ipv4_src": "10.0.0.1", "ipv4_dst": "10.0.0.2", "tcp_src": 41500, "tcp_dst": 5201}
FLOOD = {"ipv4_src": "10.0.0.1", "ipv4_dst": "10.0.0.2", "udp_src": 41501, "udp_dst": 5202}
FILTERS = {"elephant": "tcp and src host 10.0.0.1 and src port 41500 and dst port 5201",
           "flood": "udp and src host 10.0.0.1 and src port 41501 and dst port 5202"}
BOTH = f"({FILTERS['elephant']}) or ({FILTERS['flood']})"


def taps_file(path: Path) -> Path:
    from demon.capture.taptable import write_tap_table

    write_tap_table(path, [{"tap_id": "elephant", "match": ELEPHANT, "start": 1.0},
                           {"tap_id": "flood", "match": FLOOD, "start": 1.0}])
    return path


def tcp_frame(payload_len: int, seq: int) -> bytes:
    import struct
    import socket as s
    tcp = struct.pack(">HHIIBBHHH", 41500, 5201, seq, 0, 0x50, 0x10, 65535, 0, 0) + bytes(payload_len)
    ip = struct.pack(">BBHHHBBH4s4s", 0x45, 0, 20 + len(tcp), seq & 0xFFFF, 0x4000, 64, 6, 0,
                     s.inet_aton("10.0.0.1"), s.inet_aton("10.0.0.2"))
    return b"\x00\x00\x00\x00\x00\x02\x00\x00\x00\x00\x00\x01\x08\x00" + ip + tcp


def traffic(n_elephant: int, n_flood: int) -> list[bytes]:
    """The two flows interleaved: 1514-byte TCP frames, 60-byte UDP frames (64 on the wire)."""
    flood = udp_frame(bytes(18), "10.0.0.1", 41501, "10.0.0.2", 5202)
    out: list[bytes] = []
    for i in range(max(n_elephant, n_flood)):
        if i < n_elephant:
            out.append(tcp_frame(1460, i * 1460))
        if i < n_flood:
            out.append(flood)
    return out


def proc_cpu(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK


def fmt(name: str, frames: int, nbytes: int, cpu: float, drops: Any = "-") -> str:
    per = cpu / frames * 1e6 if frames else float("nan")
    fps = frames / cpu if cpu else float("inf")
    gbps = nbytes * 8 / cpu / 1e9 if cpu else float("inf")
    return (f"  {name:<26} {frames:>9} frames {nbytes / 1e6:>9.1f} MB  cpu {cpu:6.2f}s  "
            f"{per:6.2f} us/frame  {fps / 1e3:8.0f}k frames/cpu-s  {gbps:6.2f} Gbit/cpu-s  drops {drops}")


# -- offline -------------------------------------------------------------------------------
def bench_offline(tmp: Path, frames: int) -> None:
    from demon.capture.agent import run_offline
    from demon.capture.filer import CaptureAgent
    from demon.capture.taptable import TapTable

    src = tmp / "offline.pcap"
    data = traffic(frames // 2, frames // 2)
    with open(src, "wb") as fh:
        w = PcapWriter(fh, nanoseconds=True)
        for i, f in enumerate(data):
            w.write_ns(1_700_000_000_000_000_000 + i * 1000, f)
    nbytes = sum(map(len, data))
    print(f"offline: {len(data)} frames ({nbytes / 1e6:.0f} MB) from {src.name}, two taps")
    for fmt_name in ("pcapng", "pcap"):
        out = tmp / f"off-{fmt_name}"
        shutil.rmtree(out, ignore_errors=True)
        agent = CaptureAgent(out, TapTable(taps_file(tmp / "taps.json")), fmt=fmt_name, grace=0)
        t0 = time.process_time()
        run_offline(agent, src)
        cpu = time.process_time() - t0
        n = sum(s.packets for s in agent.sinks.values())
        print(fmt(f"demon-capture --read ({fmt_name})", n, nbytes, cpu))
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    for name, flt in FILTERS.items():
        subprocess.run(["tcpdump", "-r", str(src), "-w", str(tmp / f"td-{name}.pcap"), flt],
                       check=True, capture_output=True)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    print(fmt("tcpdump -r -w (per tap)", len(data), nbytes, cpu))


# -- live capture side by side ------------------------------------------------------------------
class Capturer:
    """One capture process on an interface (in a host's namespace via ``popen``)."""

    def __init__(self, name: str, argv: list[str], popen: Any, ready: Any) -> None:
        self.name = name
        self.proc = popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        deadline = time.monotonic() + 15
        while not ready():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"{name} did not start: {self.proc.stderr.read().decode()[-500:]}")
            time.sleep(0.05)
        time.sleep(0.3)
        self.cpu0 = proc_cpu(self.proc.pid)
        self.cpu = 0.0
        self.err = ""

    def mark(self) -> None:
        self.cpu = proc_cpu(self.proc.pid) - self.cpu0

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGINT if self.name != "demon-capture" else signal.SIGTERM)
        try:
            _out, err = self.proc.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            _out, err = self.proc.communicate()
        self.err = err.decode(errors="replace")


def start_capturers(interface: str, tmp: Path, popen: Any, which: tuple[str, ...], fmt_name: str = "pcapng",
                    ) -> list[tuple[Capturer, Path]]:
    out: list[tuple[Capturer, Path]] = []
    if "demon-capture" in which:
        d = tmp / "agent"
        shutil.rmtree(d, ignore_errors=True)
        d.mkdir(parents=True)
        argv = [PY, "-m", "demon.capture.agent", "-i", interface, "-o", str(d), "--taps",
                str(taps_file(tmp / "taps.json")), "--format", fmt_name, "--metrics-listen", "127.0.0.1:0",
                "--rotate-bytes", "0", "--grace", "1"]
        out.append((Capturer("demon-capture", argv, popen, (d / "agent.json").exists), d))
    if "dumpcap" in which:
        f = tmp / "dumpcap.pcapng"
        f.unlink(missing_ok=True)
        argv = ["dumpcap", "-i", interface, "-q", "-B", "32", "-f", BOTH, "-w", str(f)]
        out.append((Capturer("dumpcap", argv, popen, f.exists), f))
    if "tcpdump" in which:
        f = tmp / "tcpdump.pcap"
        f.unlink(missing_ok=True)
        argv = ["tcpdump", "-i", interface, "-Q", "in", "-B", "32768", "-w", str(f), BOTH]
        out.append((Capturer("tcpdump", argv, popen, f.exists), f))
    return out


def report(capturers: list[tuple[Capturer, Path]]) -> dict[str, Any]:
    results: dict[str, Any] = {}
    for cap, where in capturers:
        if cap.name == "demon-capture":
            st = json.loads((where / "agent.json").read_text())
            n = sum(t["packets"] for k, t in st["taps"].items() if k != "unmatched")
            b = sum(t["bytes"] for k, t in st["taps"].items() if k != "unmatched")
            drops: Any = st.get("kernel_drops")
        else:
            pk = list(iter_packets(where))
            n, b = len(pk), sum(p.orig_len for p in pk)
            m = re.search(r"(\d+) (?:packets )?dropped by kernel", cap.err) or \
                re.search(r"dropped on interface '[^']*': \d+/(\d+)", cap.err) or \
                re.search(r"Packets received/dropped on interface '[^']*': \d+/(\d+)", cap.err)
            drops = int(m.group(1)) if m else "?"
        print(fmt(cap.name, n, b, cap.cpu, drops))
        results[cap.name] = {"frames": n, "bytes": b, "cpu": cap.cpu, "drops": drops}
    return results


SENDER = r"""
import socket, sys, time, pickle
frames = pickle.load(open(sys.argv[2], "rb"))
s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW)
s.bind((sys.argv[1], 0))
t0 = time.monotonic()
send = s.send
for f in frames:
    while True:
        try:
            send(f)
            break
        except BlockingIOError:
            time.sleep(0.0001)
print(len(frames), time.monotonic() - t0, flush=True)
"""


def bench_veth(tmp: Path, frames: int) -> None:
    import pickle

    a, b = "dcbench0", "dcbench1"
    subprocess.run(["ip", "link", "del", a], capture_output=True)
    subprocess.run(["ip", "link", "add", a, "type", "veth", "peer", "name", b], check=True)
    try:
        for dev in (a, b):
            subprocess.run(["sysctl", "-qw", f"net.ipv6.conf.{dev}.disable_ipv6=1"], check=True)
            subprocess.run(["ip", "link", "set", dev, "up"], check=True)
        for mix, (ne, nf) in (("elephant (1514 B)", (frames, 0)), ("64-byte flood", (0, frames))):
            data = traffic(ne, nf)
            pk = tmp / "frames.pickle"
            pk.write_bytes(pickle.dumps(data))
            caps = start_capturers(a, tmp, subprocess.Popen, ("demon-capture", "dumpcap", "tcpdump"))
            t0 = time.monotonic()
            sent = subprocess.run([PY, "-c", SENDER, b, str(pk)], capture_output=True, text=True, check=True)
            took = time.monotonic() - t0
            time.sleep(0.5)
            for cap, _ in caps:
                cap.mark()
            for cap, _ in caps:
                cap.stop()
            print(f"veth, {mix}: {sent.stdout.split()[0]} frames sent in {took:.2f}s "
                  f"({len(data) / took / 1e3:.0f}k frames/s), captured at once by:")
            report(caps)
    finally:
        subprocess.run(["ip", "link", "del", a], capture_output=True)


# -- the lab -------------------------------------------------------------------------------------
def bench_lab(tmp: Path, runs: int, seconds: float, rate: str = "") -> None:
    from tests.conftest import held_lab_lock
    from topo.seed import build_seed

    with held_lab_lock(), build_seed(controller_port=None) as lab:
        of = lab.ofctl
        of("add-flow", "s1", "priority=10,in_port=1,actions=output:2")
        of("add-flow", "s1", "priority=10,in_port=2,actions=output:1")
        of("add-flow", "s3", "priority=10,in_port=1,actions=output:11")
        mirror = ("cookie=0x77,priority=100,tcp,nw_src=10.0.0.1,nw_dst=10.0.0.2,tp_src=41500,tp_dst=5201,"
                  "actions=output:2,output:6")
        h1, h2, h11 = lab.host("h1"), lab.host("h2"), lab.host("h11")

        def elephant() -> float:
            srv = h2.popen(["iperf3", "-s", "-1", "-p", "5201"], stdout=subprocess.DEVNULL,
                           stderr=subprocess.DEVNULL)
            time.sleep(0.3)
            cli = h1.popen(["iperf3", "-c", "10.0.0.2", "-p", "5201", "--cport", "41500", "-t", str(seconds),
                            "-J"] + (["-b", rate] if rate else []), stdout=subprocess.PIPE,
                           stderr=subprocess.PIPE)
            out, _err = cli.communicate(timeout=seconds + 30)
            srv.wait(10)
            rep = json.loads(out)
            return rep["end"]["sum_received"]["bits_per_second"] / 1e6

        def tapped(on: bool) -> None:
            if on:
                of("add-flow", "s1", mirror)
            else:
                of("del-flows", "s1", "cookie=0x77/-1")

        results: dict[str, list[float]] = {"untapped": [], "tapped, agent on h11": [], "tapped, copy alone": []}
        order = list(results)
        for r in range(runs):
            for kind in order[r % 3:] + order[:r % 3]:
                tapped(kind != "untapped")
                caps = []
                if kind == "tapped, agent on h11":
                    caps = start_capturers("h11-eth0", tmp, h11.popen, ("demon-capture",))
                mbps = elephant()
                for cap, _ in caps:
                    cap.stop()
                results[kind].append(mbps)
                print(f"  round {r + 1}: {kind:<22} {mbps:7.1f} Mbit/s", flush=True)
        base = statistics.median(results["untapped"])
        asked = f"at most {rate}bit/s" if rate else "as fast as it goes"
        print(f"lab production cost of a tap (iperf3 h1->h2 {asked}, {seconds:g}s, median of {runs} "
              f"alternating runs):")
        for kind, vals in results.items():
            med = statistics.median(vals)
            print(f"  {kind:<22} {med:7.1f} Mbit/s  = {med / base:.3f} of untapped   runs {[round(v) for v in vals]}")
        # what the agent itself adds, apart from the switch's copy (the anchor of the same run)
        agent, copy = (statistics.median(results[k]) for k in ("tapped, agent on h11", "tapped, copy alone"))
        print(f"  the agent's own share: tapped with the agent = {agent / copy:.3f} of the copy alone")
        print("lab live capture of the tapped elephant on h11, three capturers at once:")
        tapped(True)
        caps = start_capturers("h11-eth0", tmp, h11.popen, ("demon-capture", "dumpcap", "tcpdump"))
        mbps = elephant()
        time.sleep(0.5)
        for cap, _ in caps:
            cap.mark()
        for cap, _ in caps:
            cap.stop()
        print(f"  elephant at {mbps:.0f} Mbit/s")
        report(caps)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--mode", choices=("offline", "veth", "lab", "all"), default="all")
    ap.add_argument("--frames", type=int, default=200_000, help="frames per offline/veth run")
    ap.add_argument("--runs", type=int, default=5, help="lab rounds (each: untapped, agent, copy alone)")
    ap.add_argument("--seconds", type=float, default=8, help="lab elephant length")
    ap.add_argument("--rate", default="", help="lab elephant's rate for iperf3 -b (e.g. 200M); "
                    "default: as fast as it goes")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="capture-bench-") as t:
        tmp = Path(t)
        if args.mode in ("offline", "all"):
            bench_offline(tmp, args.frames)
        if args.mode in ("veth", "all"):
            bench_veth(tmp, args.frames)
        if args.mode in ("lab", "all"):
            bench_lab(tmp, args.runs, args.seconds, args.rate)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
