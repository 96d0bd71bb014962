# PYTHON_ARGCOMPLETE_OK
"""``demon-sflow``: the embedded sFlow-RT-compatible engine on its own.

    demon-sflow [--sflow-host H] [--sflow-port 6343] [--http-host H] [--http-port 8008]
                [--readonly] [--max-flows N] [--ingest fast|full] [--log-level info]
                [--record-sflow DIR [--record-sflow-size 1GB] [--record-sflow-age 6h]]
    demon-sflow decode FILE.pcap [...]        datagrams as JSON lines (sflow.jsonview)
    demon-sflow replay FILE.pcap [--to HOST:PORT] [--speed X]

Serving, it prints one JSON line on stdout once both sockets are bound:
``{"sflow": ["127.0.0.1", 6343], "http": "http://127.0.0.1:8008"}`` (useful
with port 0), then runs until SIGINT/SIGTERM.
"""

from __future__ import annotations

import argparse
import json
import logging
import signal
import sys
import threading
from typing import Sequence

from sflow import cliopts, rolling

__all__ = ["main"]

SERVE_EXITS = {0: "stopped by SIGINT/SIGTERM", 1: "unexpected internal error",
               2: "usage or configuration error, or a listener cannot be bound"}
REPLAY_EXITS = {0: "every datagram sent", 1: "unexpected internal error",
                2: "usage error, or the capture cannot be read"}


def _serve(argv: Sequence[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="demon-sflow",
        description="Embedded sFlow-RT-compatible engine: sFlow v5 on UDP, the sFlow-RT "
                    "REST API on HTTP. Subcommands: decode FILE.pcap, replay FILE.pcap.")
    parser.add_argument("--sflow-host", default="127.0.0.1", help="UDP address (default %(default)s)")
    parser.add_argument("--sflow-port", type=int, default=6343, help="UDP port, 0 = any (default %(default)s)")
    parser.add_argument("--http-host", default="127.0.0.1", help="HTTP address (default %(default)s)")
    parser.add_argument("--http-port", type=int, default=8008, help="HTTP port, 0 = any (default %(default)s)")
    parser.add_argument("--readonly", action="store_true", help="refuse PUT/DELETE (HTTP 403)")
    parser.add_argument("--max-flows", type=int, default=100_000,
                        help="flows tracked per flow definition (default %(default)s)")
    parser.add_argument("--ingest", default="fast", choices=["fast", "full"],
                        help="fast: common datagrams (compact flow samples with a sampled "
                             "header) skip the full decoder; full: decode everything "
                             "(same results, slower; default %(default)s)")
    rolling.add_arguments(parser)
    cliopts.add_common(parser, exits=SERVE_EXITS)
    args = cliopts.parse_args(parser, argv)
    from sflow.embedded import EmbeddedEngine

    try:
        recorder = rolling.from_args(args)
    except OSError as exc:
        print(f"demon-sflow: --record-sflow {args.record_sflow}: {exc}", file=sys.stderr)
        return 2
    service = EmbeddedEngine((args.sflow_host, args.sflow_port), (args.http_host, args.http_port),
                             readonly=args.readonly, max_flows=args.max_flows,
                             fast_path=args.ingest == "fast", recorder=recorder)
    try:
        service.start()
    except OSError as exc:
        print(f"demon-sflow: cannot bind: {exc}", file=sys.stderr)
        return 2
    done = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: done.set())
    host, port = service.sflow_address
    print(json.dumps({"sflow": [host, port], "http": service.url}), flush=True)
    cliopts.notify_ready(f"sFlow on udp {host}:{port}, API on {service.url}")
    logging.getLogger("sflow").info("sFlow on udp %s:%d, API on %s (UDP buffer %d bytes)",
                                    host, port, service.url, service.collector.rcvbuf
                                    if service.collector else 0)
    # A bounded wait: a SIGTERM taken by one of the server's threads only sets a flag that
    # the main thread must come back to Python to act on (systemctl stop would hang).
    while not done.wait(0.5):
        pass
    service.stop()
    return 0


def _replay(argv: Sequence[str]) -> int:
    parser = argparse.ArgumentParser(prog="demon-sflow replay",
                                     description="Send a capture's sFlow datagrams over UDP.")
    parser.add_argument("file", help="pcap or pcapng capture")
    parser.add_argument("--to", default="127.0.0.1:6343", help="HOST:PORT (default %(default)s)")
    parser.add_argument("--speed", type=float, default=None,
                        help="original timing divided by this factor (default: back to back)")
    cliopts.add_common(parser, exits=REPLAY_EXITS, config=False)
    args = cliopts.parse_args(parser, argv)
    host, _, port = args.to.rpartition(":")
    if not host or not port.isdigit():
        parser.error(f"--to: expected HOST:PORT, got {args.to!r}")
    from sflow.collector import replay_pcap

    from sflow.pcap import PcapError

    try:
        sent = replay_pcap(args.file, (host.strip("[]"), int(port)), speed=args.speed,
                           progress=cliopts.progress)
    except (OSError, PcapError) as exc:
        print(f"demon-sflow replay: {args.file}: {exc}", file=sys.stderr)
        return 2
    print(f"sent {sent} datagrams to {args.to}", file=sys.stderr)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if args and args[0] == "decode":
        from sflow.jsonview import main_decode
        return main_decode(args[1:])
    if args and args[0] == "replay":
        return _replay(args[1:])
    return _serve(args)


if __name__ == "__main__":
    sys.exit(main())
