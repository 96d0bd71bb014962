# PYTHON_ARGCOMPLETE_OK
"""``demon-traffic``: lab traffic, run inside a Mininet host (``h1.popen([...])``).

Subcommands:

* ``elephant``  iperf3 TCP or UDP at a set rate, fixed client port (a known 5-tuple);
  ``serve`` runs the matching one-shot iperf3 server;
* ``udp``       an exact number of UDP datagrams at a set rate (IPv4 or IPv6),
  the tool for tests that count packets (``sink`` counts them);
* ``tcp``       exactly N bytes over one TCP connection at a set rate (``tcpsink``
  counts what arrived: "the receiver got every byte");
* ``mice``      many small UDP flows, each from its own source port;
* ``ping``      raw-socket ICMP echo built with dpkt (the prototype's B11 tool);
* ``sniff``     what reaches this host (B12): one line per inbound frame.

Every subcommand prints one JSON summary line at the end (``sniff`` one per frame).
"""

from __future__ import annotations

import argparse
import ipaddress
import json
import os
import random
import select
import shutil
import signal
import socket
import subprocess
import sys
import time
from typing import Any, Sequence

from sflow import cliopts

RATE_UNITS = {"": 1, "k": 10**3, "K": 10**3, "m": 10**6, "M": 10**6, "g": 10**9, "G": 10**9}


def parse_rate(text: str) -> int:
    """'200M' -> 200_000_000 bit/s."""
    text = text.strip()
    unit = text[-1] if text and text[-1] in RATE_UNITS else ""
    number = text[: len(text) - len(unit)]
    try:
        value = float(number) * RATE_UNITS[unit]
    except ValueError:
        raise argparse.ArgumentTypeError(f"rate: expected e.g. 200M, got {text!r}") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"rate: must be > 0, got {text!r}")
    return int(value)


def _emit(doc: dict[str, Any]) -> None:
    print(json.dumps(doc), flush=True)


# -- iperf3 -------------------------------------------------------------------------
def iperf_server_cmd(port: int, bind: str | None = None) -> list[str]:
    cmd = ["iperf3", "-s", "-1", "-p", str(port), "-J"]
    return cmd + (["-B", bind] if bind else [])


def iperf_client_cmd(dst: str, port: int, rate_bps: int, seconds: float, udp: bool = False,
                     cport: int | None = None, length: int | None = None) -> list[str]:
    cmd = ["iperf3", "-c", dst, "-p", str(port), "-b", str(rate_bps), "-t", str(seconds), "-J"]
    if udp:
        cmd += ["-u", "-l", str(length or 1400)]
    elif length:
        cmd += ["-M", str(length)]
    if cport:
        cmd += ["--cport", str(cport)]
    return cmd


def summarise_iperf(report: dict[str, Any]) -> dict[str, Any]:
    """Bytes and rates from an iperf3 -J report (client or server side)."""
    end = report.get("end", {})
    start = report.get("start", {})
    conn = (start.get("connected") or [{}])[0]
    out: dict[str, Any] = {"local": f"{conn.get('local_host')}:{conn.get('local_port')}",
                           "remote": f"{conn.get('remote_host')}:{conn.get('remote_port')}",
                           "protocol": start.get("test_start", {}).get("protocol")}
    if "sum_sent" in end:
        out["bytes_sent"] = end["sum_sent"].get("bytes")
        out["bytes_received"] = end.get("sum_received", {}).get("bytes")
        out["bps_sent"] = end["sum_sent"].get("bits_per_second")
    elif "sum" in end:  # UDP
        out["bytes_sent"] = end["sum"].get("bytes")
        out["packets"] = end["sum"].get("packets")
        out["lost_packets"] = end["sum"].get("lost_packets")
        out["bps_sent"] = end["sum"].get("bits_per_second")
    if "error" in report:
        out["error"] = report["error"]
    return out


def run_child(cmd: list[str], timeout: float) -> tuple[int, str, str]:
    """Run ``cmd`` to its end, bounded by ``timeout``; SIGTERM to us ends it too
    (an iperf3 left behind in a vanished namespace spins forever)."""
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)

    def forward(signum: int, _frame: Any) -> None:
        proc.terminate()

    previous = signal.signal(signal.SIGTERM, forward)
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, err = proc.communicate()
        err += f"\nkilled after {timeout:g}s"
    finally:
        signal.signal(signal.SIGTERM, previous)
    return proc.returncode, out, err


def cmd_serve(args: argparse.Namespace) -> int:
    code, out, err = run_child(iperf_server_cmd(args.port, args.bind) + ["--idle-timeout", str(int(args.timeout))],
                               args.timeout + 5)
    try:
        _emit({"role": "server", **summarise_iperf(json.loads(out))})
    except ValueError:
        _emit({"role": "server", "error": err.strip() or "no iperf3 report"})
        return 1
    return code


def cmd_elephant(args: argparse.Namespace) -> int:
    if shutil.which("iperf3") is None:
        _emit({"error": "iperf3 not installed (run: bash scripts/setup)"})
        return 1
    cmd = iperf_client_cmd(args.dst, args.port, args.rate, args.time, args.udp, args.cport, args.length)
    code, out, err = run_child(cmd + ["--connect-timeout", "3000"], args.time + 20)
    try:
        report = json.loads(out)
    except ValueError:
        _emit({"role": "client", "error": err.strip() or "no iperf3 report"})
        return 1
    _emit({"role": "client", **summarise_iperf(report)})
    return code


# -- plain UDP ------------------------------------------------------------------------
def send_udp(dst: str, dport: int, sport: int, count: int, size: int, pps: float,
             src: str | None = None) -> dict[str, Any]:
    """Send exactly ``count`` datagrams of ``size`` payload bytes at ``pps`` per second."""
    family = socket.AF_INET6 if ipaddress.ip_address(dst).version == 6 else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_DGRAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((src or ("::" if family == socket.AF_INET6 else "0.0.0.0"), sport))
    sport = sock.getsockname()[1]
    payload = bytearray(os.urandom(size))
    started = time.monotonic()
    sent = 0
    errors = 0
    while sent < count:
        payload[:8] = sent.to_bytes(8, "big")  # sequence number: receivers can check order
        try:
            sock.sendto(payload, (dst, dport))
            sent += 1
        except OSError:
            errors += 1  # an unresolved neighbour (ARP/ND) fails the first sends: retry later
            if errors > 100 * count:
                break
            time.sleep(0.001)
            continue
        due = started + sent / pps
        delay = due - time.monotonic()
        if delay > 0:
            time.sleep(delay)
    sock.close()
    return {"dst": dst, "dport": dport, "sport": sport, "sent": sent, "bytes_payload": sent * size,
            "seconds": round(time.monotonic() - started, 3), "send_errors": errors}


def cmd_udp(args: argparse.Namespace) -> int:
    result = send_udp(args.dst, args.dport, args.sport, args.count, args.size, args.pps, args.src)
    _emit({"role": "udp", **result})
    return 0 if result["sent"] == args.count else 1


def cmd_udp_sink(args: argparse.Namespace) -> int:
    """Count datagrams on a UDP port until ``--idle`` seconds pass without one."""
    family = socket.AF_INET6 if ":" in args.bind else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_DGRAM)
    sock.bind((args.bind, args.port))
    print(json.dumps({"role": "sink", "listening": args.port}), flush=True)
    packets = 0
    nbytes = 0
    deadline = time.monotonic() + args.max_time
    last = time.monotonic()
    while time.monotonic() < deadline:
        ready, _, _ = select.select([sock], [], [], 0.1)
        if ready:
            data = sock.recv(65535)
            packets += 1
            nbytes += len(data)
            last = time.monotonic()
        elif packets and time.monotonic() - last > args.idle:
            break
    _emit({"role": "sink", "port": args.port, "packets": packets, "bytes_payload": nbytes})
    return 0


def cmd_mice(args: argparse.Namespace) -> int:
    """``flows`` small flows: each ``packets`` datagrams from its own source port."""
    rng = random.Random(args.seed)
    results = []
    for i in range(args.flows):
        sport = args.first_sport + i
        dport = rng.randint(20000, 30000)
        results.append(send_udp(args.dst, dport, sport, args.packets, args.size, args.pps))
    _emit({"role": "mice", "flows": len(results), "sent": sum(r["sent"] for r in results),
           "dst": args.dst})
    return 0


# -- plain TCP (exact byte counts) -------------------------------------------------------
def send_tcp(dst: str, dport: int, sport: int, nbytes: int, rate_bps: int,
             chunk: int = 65536) -> dict[str, Any]:
    """Send exactly ``nbytes`` over one TCP connection from ``sport``, paced at ``rate_bps``."""
    family = socket.AF_INET6 if ipaddress.ip_address(dst).version == 6 else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if sport:
        sock.bind(("::" if family == socket.AF_INET6 else "0.0.0.0", sport))
    sock.settimeout(10)
    sock.connect((dst, dport))
    sport = sock.getsockname()[1]
    block = os.urandom(chunk)
    started = time.monotonic()
    sent = 0
    while sent < nbytes:
        n = min(chunk, nbytes - sent)
        sock.sendall(block[:n])
        sent += n
        delay = started + sent * 8 / rate_bps - time.monotonic()
        if delay > 0:
            time.sleep(delay)
    sock.shutdown(socket.SHUT_WR)
    sock.recv(1)  # wait for the receiver's close: every byte arrived
    sock.close()
    return {"dst": dst, "dport": dport, "sport": sport, "bytes_sent": sent,
            "seconds": round(time.monotonic() - started, 3)}


def cmd_tcp(args: argparse.Namespace) -> int:
    _emit({"role": "tcp", **send_tcp(args.dst, args.dport, args.sport, args.bytes, args.rate)})
    return 0


def cmd_tcp_sink(args: argparse.Namespace) -> int:
    """Accept one TCP connection and count its bytes until the sender closes."""
    family = socket.AF_INET6 if ":" in args.bind else socket.AF_INET
    srv = socket.socket(family, socket.SOCK_STREAM)
    srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    srv.bind((args.bind, args.port))
    srv.listen(1)
    srv.settimeout(args.max_time)
    print(json.dumps({"role": "tcpsink", "listening": args.port}), flush=True)
    conn, peer = srv.accept()
    conn.settimeout(args.max_time)
    received = 0
    while True:
        data = conn.recv(1 << 20)
        if not data:
            break
        received += len(data)
    conn.close()
    srv.close()
    _emit({"role": "tcpsink", "port": args.port, "peer": f"{peer[0]}:{peer[1]}", "bytes_received": received})
    return 0


# -- ICMP echo (B11) ------------------------------------------------------------------
def ping_once(dst: str, timeout: float = 1.0, payload: bytes = b"hello world") -> dict[str, Any]:
    """One ICMP echo over a raw socket, built and parsed with dpkt (the prototype's tool)."""
    import dpkt

    ident, seq = random.randint(0, 0xFFFF), random.randint(0, 0xFFFF)
    echo = dpkt.icmp.ICMP(type=dpkt.icmp.ICMP_ECHO, data=dpkt.icmp.ICMP.Echo(id=ident, seq=seq, data=payload))
    sock = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP)
    try:
        sent_at = time.monotonic()
        sock.sendto(bytes(echo), (dst, 0))
        deadline = sent_at + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                return {"dst": dst, "reply": False, "id": ident, "seq": seq}
            ready, _, _ = select.select([sock], [], [], left)
            if not ready:
                continue
            data, addr = sock.recvfrom(65535)
            ip = dpkt.ip.IP(data)
            icmp = ip.data
            if (isinstance(icmp, dpkt.icmp.ICMP) and icmp.type == dpkt.icmp.ICMP_ECHOREPLY
                    and icmp.data.id == ident and icmp.data.seq == seq):
                return {"dst": dst, "reply": True, "from": addr[0], "id": ident, "seq": seq,
                        "rtt_ms": round((time.monotonic() - sent_at) * 1000, 3),
                        "payload": bytes(icmp.data.data).decode("ascii", "replace")}
    finally:
        sock.close()


def cmd_ping(args: argparse.Namespace) -> int:
    replies = 0
    for _ in range(args.count):
        result = ping_once(args.dst, args.timeout)
        replies += result["reply"]
        if args.verbose:
            _emit(result)
    _emit({"role": "ping", "dst": args.dst, "sent": args.count, "replies": replies})
    return 0 if replies else 1


# -- sniffer (B12) ---------------------------------------------------------------------
def cmd_sniff(args: argparse.Namespace) -> int:
    from demon.capture.agent import PacketSocket
    from demon.capture.packet import FlowKey, is_ipv6_noise, parse_frame

    psock = PacketSocket(args.interface)
    seen = 0
    deadline = time.monotonic() + args.seconds if args.seconds else None
    try:
        while args.count == 0 or seen < args.count:
            left = None if deadline is None else deadline - time.monotonic()
            if left is not None and left <= 0:
                break
            ready, _, _ = select.select([psock], [], [], 0.2 if left is None else min(left, 0.2))
            if not ready:
                continue
            while (item := psock.recv()) is not None:
                frame, ts_ns, orig = item
                fields = parse_frame(frame)
                if not args.keep_noise and is_ipv6_noise(fields):
                    continue
                seen += 1
                _emit({"ts": ts_ns / 1e9, "eth_dst": frame[:6].hex(":"), "eth_src": frame[6:12].hex(":"),
                       "len": orig, "vlan": fields.get("vlan_vid"), "flow": str(FlowKey.of(fields))})
    except KeyboardInterrupt:
        pass
    finally:
        psock.close()
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="demon-traffic", description="lab traffic (run inside a Mininet host)")
    sub = p.add_subparsers(dest="cmd", required=True)

    s = sub.add_parser("serve", help="one-shot iperf3 server")
    s.add_argument("--port", type=int, default=5201)
    s.add_argument("--bind")
    s.add_argument("--timeout", type=float, default=60, help="give up when no client came/stayed this long")
    s.set_defaults(fn=cmd_serve)

    e = sub.add_parser("elephant", help="iperf3 client at a set rate")
    e.add_argument("--dst", required=True)
    e.add_argument("--port", type=int, default=5201)
    e.add_argument("--rate", type=parse_rate, default=parse_rate("200M"), help="e.g. 200M (bit/s)")
    e.add_argument("--time", type=float, default=8)
    e.add_argument("--udp", action="store_true")
    e.add_argument("--cport", type=int, help="client source port (a known 5-tuple)")
    e.add_argument("--length", type=int, help="UDP datagram size / TCP MSS")
    e.set_defaults(fn=cmd_elephant)

    u = sub.add_parser("udp", help="exactly COUNT datagrams at PPS")
    u.add_argument("--dst", required=True)
    u.add_argument("--dport", type=int, default=5001)
    u.add_argument("--sport", type=int, default=0)
    u.add_argument("--src")
    u.add_argument("--count", type=int, default=100)
    u.add_argument("--size", type=int, default=512)
    u.add_argument("--pps", type=float, default=1000)
    u.set_defaults(fn=cmd_udp)

    k = sub.add_parser("sink", help="count UDP datagrams on a port")
    k.add_argument("--port", type=int, default=5001)
    k.add_argument("--bind", default="0.0.0.0")
    k.add_argument("--idle", type=float, default=2.0)
    k.add_argument("--max-time", type=float, default=120)
    k.set_defaults(fn=cmd_udp_sink)

    t = sub.add_parser("tcp", help="exactly BYTES over one TCP connection at RATE")
    t.add_argument("--dst", required=True)
    t.add_argument("--dport", type=int, default=5201)
    t.add_argument("--sport", type=int, default=0)
    t.add_argument("--bytes", type=int, default=100_000_000)
    t.add_argument("--rate", type=parse_rate, default=parse_rate("200M"))
    t.set_defaults(fn=cmd_tcp)

    ts = sub.add_parser("tcpsink", help="count the bytes of one TCP connection")
    ts.add_argument("--port", type=int, default=5201)
    ts.add_argument("--bind", default="0.0.0.0")
    ts.add_argument("--max-time", type=float, default=120)
    ts.set_defaults(fn=cmd_tcp_sink)

    m = sub.add_parser("mice", help="many small UDP flows")
    m.add_argument("--dst", required=True)
    m.add_argument("--flows", type=int, default=20)
    m.add_argument("--packets", type=int, default=5)
    m.add_argument("--size", type=int, default=200)
    m.add_argument("--pps", type=float, default=200)
    m.add_argument("--first-sport", type=int, default=40000)
    m.add_argument("--seed", type=int, default=1)
    m.set_defaults(fn=cmd_mice)

    g = sub.add_parser("ping", help="raw-socket ICMP echo (dpkt)")
    g.add_argument("--dst", required=True)
    g.add_argument("--count", type=int, default=1)
    g.add_argument("--timeout", type=float, default=1.0)
    g.add_argument("-v", "--verbose", action="store_true")
    g.set_defaults(fn=cmd_ping)

    n = sub.add_parser("sniff", help="print frames arriving on an interface")
    n.add_argument("--interface", "-i", required=True)
    n.add_argument("--count", type=int, default=0, help="stop after N frames (0 = no limit)")
    n.add_argument("--seconds", type=float, default=0, help="stop after S seconds (0 = no limit)")
    n.add_argument("--keep-noise", action="store_true")
    n.set_defaults(fn=cmd_sniff)
    return cliopts.add_common(p, exits={0: "done (ping: at least one reply; sink/tcpsink: traffic arrived)",
                                        1: "the traffic did not get through (no reply, nothing received, "
                                           "iperf3 failed)",
                                        2: "usage error"})


def main(argv: Sequence[str] | None = None) -> int:
    args = cliopts.parse_args(build_parser(), argv)
    return int(args.fn(args))


if __name__ == "__main__":
    sys.exit(main())
