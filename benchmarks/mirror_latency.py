"""Mirror latency and cost on the real seed topology (root + Open vSwitch + Mininet).

    .venv/bin/python benchmarks/mirror_latency.py [--installs 20] [--bytes 30000000]

For each component (os-ken; POX too when its checkout is there: scripts/setup puts it
beside the venv, POX_HOME overrides) prints, measured in one run:

* latency: ``install_mirror`` RPC call → first mirrored packet captured on h11, while
  h1 sends a steady UDP stream (one packet every 0.25 ms) to h2: median, p95, max
  over ``--installs`` installs (each removed again before the next);
* anchor: the same with ``ovs-ofctl add-flow`` instead of the RPC (no controller in
  the path; the process start is part of it, as for any script that shells out);
* throughput: the tapped TCP flow h1 → h3 without and with its mirror, side by side
  (median of 3 transfers each).

Takes the machine-wide lab lock (``/tmp/pytapdemon-lab.lock``) for the whole run.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import os
import select
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Iterator

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from demon.controller.poxhome import pox_home  # noqa: E402
from demon.controller.spec import cookie_for_tap  # noqa: E402
from demon.rpc.client import RpcClient  # noqa: E402

PY = "/usr/bin/python3"
UDP_PORTS = (47000, 9000)
UDP_SENDER = r"""
import socket, sys, time
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind(("0.0.0.0", int(sys.argv[2])))
gap, nxt, seq = float(sys.argv[4]), time.monotonic(), 0
while True:
    s.sendto(seq.to_bytes(8, "big") + b"u" * 56, (sys.argv[1], int(sys.argv[3])))
    seq += 1
    nxt += gap
    d = nxt - time.monotonic()
    if d > 0:
        time.sleep(d)
"""
TCP_RECEIVER = r"""
import socket, sys, time
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("0.0.0.0", int(sys.argv[1]))); s.listen(1); print("ready", flush=True)
c, _ = s.accept(); n = 0; t0 = None
while True:
    d = c.recv(262144)
    if not d: break
    if t0 is None: t0 = time.monotonic()
    n += len(d)
print(n, time.monotonic() - t0, flush=True)
"""
TCP_SENDER = r"""
import socket, sys
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("0.0.0.0", int(sys.argv[2]))); s.connect((sys.argv[1], int(sys.argv[3])))
block = b"x" * 65536; left = int(sys.argv[4])
while left > 0:
    s.sendall(block[:left]); left -= min(left, len(block))
s.close()
"""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextlib.contextmanager
def lab_lock() -> Iterator[None]:
    with open(os.environ.get("DEMON_LAB_LOCK", "/tmp/pytapdemon-lab.lock"), "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        yield


@contextlib.contextmanager
def component(kind: str, workdir: Path, fabric: Path) -> Iterator[tuple[RpcClient, int]]:
    of_port, rpc_port = free_port(), free_port()
    token_file = workdir / f"{kind}.token"
    rpc = f"tcp:127.0.0.1:{rpc_port}"
    if kind == "pox":
        cmd = [sys.executable, str(Path(str(pox_home())) / "pox.py"), "openflow.of_01",
               "--address=127.0.0.1", f"--port={of_port}", "demon.controller.pox_tap", f"--rpc={rpc}",
               f"--token-file={token_file}", f"--fabric={fabric}", "--metrics-listen="]
    else:
        cmd = [str(Path(sys.executable).parent / "demon-controller"), "--of-port", str(of_port), "--rpc", rpc,
               "--token-file", str(token_file), "--fabric", str(fabric), "--log-level", "warning",
               "--metrics-listen", ""]
    log = open(workdir / f"{kind}.log", "w")
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=dict(os.environ, PYTHONPATH=str(REPO)))
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                client = RpcClient(rpc, token_file.read_text().strip(), timeout=15)
                client.hello()
                break
            except Exception:  # noqa: BLE001 — not up yet
                if time.monotonic() > deadline or proc.poll() is not None:
                    raise RuntimeError(f"{kind} did not start; see {workdir / (kind + '.log')}") from None
                time.sleep(0.1)
        yield client, of_port
    finally:
        proc.terminate()
        proc.wait(timeout=10)
        log.close()


@contextlib.contextmanager
def seed_network(of_port: int, of_version: int) -> Iterator[Any]:
    from topo.seed import build_seed

    lab = build_seed(of_port, of_version=of_version)  # start_lab enlarges the port buffers
    try:
        yield lab
    finally:
        lab.stop()


class FirstPacket:
    """tcpdump on h11 printing one epoch-stamped line per mirrored UDP packet of the stream."""

    def __init__(self, lab: Any) -> None:
        bpf = f"udp and src port {UDP_PORTS[0]} and dst port {UDP_PORTS[1]}"
        self.proc = lab.host("h11").popen(
            ["tcpdump", "-i", "h11-eth0", "-Q", "in", "-nn", "-l", "--immediate-mode", "-tt", *bpf.split()],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        line = ""
        while "listening on" not in line:
            line = self.proc.stderr.readline().decode()
            if not line:
                raise RuntimeError("tcpdump on h11 did not start")

    def drain(self, quiet: float = 0.15) -> None:
        """Discard lines until none arrived for ``quiet`` seconds."""
        while select.select([self.proc.stdout], [], [], quiet)[0]:
            os.read(self.proc.stdout.fileno(), 65536)

    def wait_first(self, timeout: float = 5.0) -> float:
        """Epoch timestamp of the next captured packet."""
        buf = b""
        deadline = time.monotonic() + timeout
        while b"\n" not in buf:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([self.proc.stdout], [], [], left)[0]:
                raise TimeoutError("no mirrored packet")
            buf += os.read(self.proc.stdout.fileno(), 65536)
        return float(buf.split(b" ", 1)[0])

    def close(self) -> None:
        self.proc.terminate()
        self.proc.wait(timeout=5)


def summary(samples: list[float]) -> str:
    ms = sorted(s * 1000 for s in samples)
    p95 = ms[min(len(ms) - 1, int(round(0.95 * (len(ms) - 1))))]
    return f"median {statistics.median(ms):6.2f} ms  p95 {p95:6.2f} ms  max {ms[-1]:6.2f} ms  (n={len(ms)})"


def measure_latency(lab: Any, client: RpcClient, installs: int, ofctl_version: str) -> tuple[list[float], list[float]]:
    match = {"ipv4_src": "10.0.0.1", "ipv4_dst": "10.0.0.2", "udp_src": UDP_PORTS[0], "udp_dst": UDP_PORTS[1]}
    sender = lab.host("h1").popen([PY, "-c", UDP_SENDER, "10.0.0.2", str(UDP_PORTS[0]), str(UDP_PORTS[1]),
                                   "0.00025"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    cap = FirstPacket(lab)
    rpc_samples: list[float] = []
    ofctl_samples: list[float] = []
    try:
        time.sleep(0.5)
        for i in range(installs):
            cap.drain()
            t0 = time.time()
            client.install_mirror(f"bench-{i}", 1, match, 6, idle_timeout=0, hard_timeout=60)
            rpc_samples.append(cap.wait_first() - t0)
            client.remove_mirror(f"bench-{i}")
        cookie = cookie_for_tap("bench-ofctl")
        spec = (f"priority=40000,udp,nw_src=10.0.0.1,nw_dst=10.0.0.2,tp_src={UDP_PORTS[0]},"
                f"tp_dst={UDP_PORTS[1]}")
        for _ in range(installs):
            cap.drain()
            t0 = time.time()
            subprocess.run(["ovs-ofctl", "-O", ofctl_version, "add-flow", "s1",
                            f"cookie={cookie:#x},hard_timeout=60,{spec},actions=NORMAL,output:6"], check=True)
            ofctl_samples.append(cap.wait_first() - t0)
            subprocess.run(["ovs-ofctl", "-O", ofctl_version, "--strict", "del-flows", "s1", spec], check=True)
    finally:
        cap.close()
        sender.terminate()
        sender.wait(timeout=5)
    return rpc_samples, ofctl_samples


def transfer(lab: Any, nbytes: int, sport: int) -> float:
    """Mbit/s of one TCP transfer h1 → h3, timed by the receiver."""
    recv = lab.host("h3").popen([PY, "-c", TCP_RECEIVER, "5900"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    assert recv.stdout.readline().strip() == b"ready"
    send = lab.host("h1").popen([PY, "-c", TCP_SENDER, "10.0.0.3", str(sport), "5900", str(nbytes)])
    send.wait(timeout=120)
    out, _ = recv.communicate(timeout=120)
    got, seconds = out.split()
    assert int(got) == nbytes, f"receiver got {got} of {nbytes} bytes"
    return nbytes * 8 / float(seconds) / 1e6


def measure_throughput(lab: Any, client: RpcClient, nbytes: int) -> tuple[float, float]:
    plain, tapped = [], []
    for i in range(3):
        plain.append(transfer(lab, nbytes, 46000 + 2 * i))
        sport = 46001 + 2 * i
        client.install_mirror("bench-tput", 1, {"ipv4_src": "10.0.0.1", "ipv4_dst": "10.0.0.3",
                                                "tcp_src": sport, "tcp_dst": 5900}, 6,
                              idle_timeout=0, hard_timeout=120)
        tapped.append(transfer(lab, nbytes, sport))
        client.remove_mirror("bench-tput")
    return statistics.median(plain), statistics.median(tapped)


def run(kind: str, args: argparse.Namespace, workdir: Path) -> None:
    from topo.fabricgen import seed_fabric, write_fabric

    fabric = write_fabric(workdir / "fabric.json", seed_fabric())
    of_version = 10 if kind == "pox" else 13
    with component(kind, workdir, fabric) as (client, of_port), seed_network(of_port, of_version) as lab:
        deadline = time.monotonic() + 30
        while len(client.list_switches()) < 3:
            if time.monotonic() > deadline:
                raise RuntimeError("switches did not connect")
            time.sleep(0.1)
        lab.host("h1").cmd("ping -c1 -W1 10.0.0.2; ping -c1 -W1 10.0.0.3")
        rpc_s, ofctl_s = measure_latency(lab, client, args.installs,
                                         "OpenFlow10" if of_version == 10 else "OpenFlow13")
        plain, tapped = measure_throughput(lab, client, args.bytes)
    print(f"[{kind}] install_mirror RPC → first copy at h11:  {summary(rpc_s)}")
    print(f"[{kind}] anchor: ovs-ofctl add-flow → first copy: {summary(ofctl_s)}")
    print(f"[{kind}] TCP h1→h3 throughput ({args.bytes / 1e6:.0f} MB, median of 3): "
          f"without mirror {plain:7.1f} Mbit/s   with mirror {tapped:7.1f} Mbit/s "
          f"({(tapped / plain - 1) * 100:+.1f} %)")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--installs", type=int, default=20)
    parser.add_argument("--bytes", type=int, default=30_000_000)
    parser.add_argument("--component", choices=("os-ken", "pox", "all"), default="all")
    args = parser.parse_args()
    if os.geteuid() != 0:
        print("mirror_latency: needs root (Open vSwitch + Mininet)", file=sys.stderr)
        return 2
    kinds = ["os-ken", "pox"] if args.component == "all" else [args.component]
    if "pox" in kinds and pox_home() is None:
        print("[pox] skipped: no POX checkout (run scripts/setup or set POX_HOME)")
        kinds.remove("pox")
    with lab_lock(), tempfile.TemporaryDirectory(prefix="mirror-latency-") as tmp:
        for kind in kinds:
            run(kind, args, Path(tmp))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
