"""RPC round trips against an in-process server, beside a raw socket echo of the same lines.

    .venv/bin/python benchmarks/rpc_roundtrip.py [--calls 5000] [--address tcp:127.0.0.1:0]

Prints calls/s and p50/p95/p99 latency for ``RpcClient.call`` against ``RpcServer``
with a trivial handler, and the same figures for the anchor: one thread echoing
each line back on a plain TCP (or Unix) socket, driven the same way (send one
line, read one line). The gap is what the protocol costs (JSON, token check,
one worker thread per request).
"""

from __future__ import annotations

import argparse
import os
import socket
import statistics
import sys
import tempfile
import threading
import time
from typing import Callable

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from demon.rpc import protocol as p  # noqa: E402
from demon.rpc.client import RpcClient  # noqa: E402
from demon.rpc.server import RpcServer  # noqa: E402

TOKEN = "b" * 64


class Trivial:
    def methods(self) -> set[str]:
        return {"hello"}

    def call(self, method: str, params: dict) -> dict:
        return {"protocol": p.PROTOCOL_VERSION, "component": "bench"}


def echo_server(address: str) -> tuple[str, Callable[[], None]]:
    kind, where = p.parse_address(address)
    if kind == "unix":
        listener = socket.socket(socket.AF_UNIX)
        listener.bind(where)
    else:
        listener = socket.socket()
        listener.bind(where)
    listener.listen(1)

    def serve() -> None:
        conn, _ = listener.accept()
        if kind == "tcp":
            conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        reader = conn.makefile("rb")
        for line in reader:
            conn.sendall(line)
        conn.close()

    threading.Thread(target=serve, daemon=True).start()
    bound = p.format_address(kind, listener.getsockname()) if kind == "tcp" else address
    return bound, listener.close


def measure(fn: Callable[[], object], calls: int) -> list[float]:
    for _ in range(min(200, calls)):  # warm-up
        fn()
    out = []
    for _ in range(calls):
        started = time.perf_counter()
        fn()
        out.append(time.perf_counter() - started)
    return out


def report(name: str, samples: list[float]) -> None:
    q = statistics.quantiles(samples, n=100)
    print(f"{name:<28} {len(samples) / sum(samples):>9.0f} calls/s   p50 {q[49] * 1e6:>7.1f} µs"
          f"   p95 {q[94] * 1e6:>7.1f} µs   p99 {q[98] * 1e6:>7.1f} µs")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=5000)
    parser.add_argument("--address", default="tcp:127.0.0.1:0", help="tcp:127.0.0.1:0 or unix:/path")
    args = parser.parse_args()
    if args.address.startswith("unix:"):
        tmp = tempfile.mkdtemp()
        rpc_address, echo_address = f"unix:{tmp}/rpc.sock", f"unix:{tmp}/echo.sock"
    else:
        rpc_address = echo_address = args.address

    line = p.encode_request(1, "hello", {}, TOKEN)
    bound, stop_echo = echo_server(echo_address)
    kind, where = p.parse_address(bound)
    raw = socket.socket(socket.AF_UNIX if kind == "unix" else socket.AF_INET)
    raw.connect(where)
    if kind == "tcp":
        raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    reader = raw.makefile("rb")

    def echo_once() -> None:
        raw.sendall(line)
        reader.readline()

    print(f"python {sys.version.split()[0]}, {args.calls} sequential calls, {kind} loopback, "
          f"{len(line)}-byte request line")
    report("anchor: raw socket echo", measure(echo_once, args.calls))
    raw.close()
    stop_echo()

    with RpcServer(rpc_address, TOKEN, Trivial()) as server:
        client = RpcClient(server.address, TOKEN)
        report("RpcClient.call('hello')", measure(client.hello, args.calls))
        client.close()


if __name__ == "__main__":
    main()
