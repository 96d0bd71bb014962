# PYTHON_ARGCOMPLETE_OK
"""``demon-sflow``: the embedded sFlow-RT-compatible engine on its own.

    demon-sflow [--sflow-listen HOST:PORT] [--http-listen HOST:PORT] [--token-file FILE]
                [--asn-file FILE] [--readonly] [--max-flows N] [--ingest compiled|python]
                [--record-sflow DIR [--record-sflow-size 1GB] [--record-sflow-age 6h]]
                [--config FILE] [--log-format text|json] [--log-level info] [--version]
    demon-sflow decode FILE.pcap [...]        datagrams as JSON lines (sflow.jsonview)
    demon-sflow replay FILE.pcap [--to HOST:PORT] [--speed X]

Listeners default to 127.0.0.1:6343 (sFlow, UDP) and 127.0.0.1:8008 (HTTP);
``--sflow-host/--sflow-port/--http-host/--http-port`` are kept as aliases.
When the HTTP API is bound beyond loopback, writes (PUT/POST/DELETE) need
``Authorization: Bearer <token>`` from ``--token-file`` (reads stay open, so
dashboards work) and the exposed listeners are printed on stderr at start.

Serving, it prints one JSON line on stdout once both sockets are bound:
``{"sflow": ["127.0.0.1", 6343], "http": "http://127.0.0.1:8008"}`` (useful
with port 0), then runs until SIGINT/SIGTERM. Exit status 2: bad option,
unusable token or data file, or a listener that cannot be bound.
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

__all__ = ["main", "exposure_lines", "completion_parser"]

_DEFAULT_SFLOW = "127.0.0.1:6343"
_DEFAULT_HTTP = "127.0.0.1:8008"
SERVE_EXITS = {0: "stopped by SIGINT/SIGTERM", 1: "unexpected internal error",
               2: "usage or configuration error, an unusable token or data file, or a "
                  "listener cannot be bound"}
REPLAY_EXITS = {0: "every datagram sent", 1: "unexpected internal error",
                2: "usage error, or the capture cannot be read"}


def _listen(value: str, default_port: int, flag: str, parser: argparse.ArgumentParser) -> tuple[str, int]:
    from sflow.webserve import ListenError, parse_listen
    try:
        return parse_listen(value, default_port)
    except ListenError as exc:
        parser.error(f"{flag}: {exc}")
        raise  # unreachable: parser.error exits


def exposure_lines(sflow: tuple[str, int], http_listen: str, http_host: str, has_tokens: bool,
                   token_file: str | None, readonly: bool) -> list[str]:
    """What to tell the operator about listeners reachable from other hosts."""
    from sflow.webserve import format_listen, is_loopback

    lines = []
    if not is_loopback(sflow[0]):
        lines.append(f"exposed: sFlow collector on udp {format_listen(*sflow)}")
    if not is_loopback(http_host):
        if readonly:
            guard = "read-only"
        elif has_tokens:
            guard = f"writes need a bearer token from {token_file}"
        else:
            guard = "no --token-file: every write is refused (401)"
        lines.append(f"exposed: HTTP API on {http_listen} (reads open; {guard})")
    return lines


def _serve_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="demon-sflow",
        description="Embedded sFlow-RT-compatible engine: sFlow v5 on UDP, the sFlow-RT "
                    "REST API on HTTP. Subcommands: decode FILE.pcap, replay FILE.pcap.")
    parser.add_argument("--sflow-listen", metavar="HOST:PORT", default=None,
                        help=f"sFlow UDP listener, port 0 = any (default {_DEFAULT_SFLOW})")
    parser.add_argument("--http-listen", metavar="HOST:PORT", default=None,
                        help=f"HTTP API listener, port 0 = any (default {_DEFAULT_HTTP})")
    parser.add_argument("--sflow-host", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--sflow-port", type=int, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--http-host", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--http-port", type=int, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--token-file", metavar="FILE", default=None,
                        help="bearer tokens for writes when the HTTP API is bound beyond "
                             "loopback (mode 0600; name:secret or a secret per line)")
    parser.add_argument("--asn-file", metavar="FILE", default=None,
                        help="IP ranges to AS number and country (ip2asn TSV, .gz ok) for "
                             "the country: and asn: key functions")
    parser.add_argument("--readonly", action="store_true", help="refuse PUT/DELETE (HTTP 403)")
    parser.add_argument("--max-flows", type=int, default=100_000,
                        help="flows tracked per flow definition (default %(default)s)")
    parser.add_argument("--ingest", default="compiled",
                        choices=["compiled", "python", "fast", "full"],
                        help="compiled: the C ingest kernel (sflow._ingest) for the common "
                             "datagrams when it was built, else Python; python: the "
                             "pure-Python path (same results, slower). fast/full: former "
                             "names of compiled/python (default %(default)s)")
    rolling.add_arguments(parser)
    return cliopts.add_common(parser, exits=SERVE_EXITS)


def _serve(argv: Sequence[str]) -> int:
    parser = _serve_parser()
    args = cliopts.parse_args(parser, argv)
    sflow_host, sflow_port = _listen(args.sflow_listen or _DEFAULT_SFLOW, 6343,
                                     "--sflow-listen", parser)
    http_host, http_port = _listen(args.http_listen or _DEFAULT_HTTP, 8008,
                                   "--http-listen", parser)
    # the old flags, kept as aliases: each overrides its half of the listen option
    sflow_host = args.sflow_host or sflow_host
    sflow_port = sflow_port if args.sflow_port is None else args.sflow_port
    http_host = args.http_host or http_host
    http_port = http_port if args.http_port is None else args.http_port
    from sflow.auth import TokenFileError, load_tokens
    from sflow.embedded import EmbeddedEngine
    from sflow.groups import AsnTable, GroupError
    from sflow.webserve import format_listen

    tokens = asn_table = None
    try:
        if args.token_file:
            tokens = load_tokens(args.token_file)
        if args.asn_file:
            asn_table = AsnTable.load(args.asn_file)
    except (TokenFileError, GroupError) as exc:
        print(f"demon-sflow: {exc}", file=sys.stderr)
        return 2
    try:
        recorder = rolling.from_args(args)
    except OSError as exc:
        print(f"demon-sflow: --record-sflow {args.record_sflow}: {exc}", file=sys.stderr)
        return 2
    service = EmbeddedEngine((sflow_host, sflow_port), (http_host, http_port),
                             readonly=args.readonly, max_flows=args.max_flows,
                             fast_path=args.ingest in ("compiled", "fast"), tokens=tokens,
                             asn_table=asn_table, recorder=recorder)
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
    for line in exposure_lines((host, port), service.http_listen, http_host, tokens is not None,
                               args.token_file, args.readonly):
        print(f"demon-sflow: {line}", file=sys.stderr, flush=True)
    cliopts.notify_ready(f"sFlow on udp {format_listen(host, port)}, API on {service.url}")
    logging.getLogger("sflow").info("sFlow on udp %s, API on %s (UDP buffer %d bytes)",
                                    format_listen(host, port), service.url,
                                    service.collector.rcvbuf if service.collector else 0)
    # A bounded wait: a SIGTERM taken by one of the server's threads only sets a flag that
    # the main thread must come back to Python to act on (systemctl stop would hang).
    while not done.wait(0.5):
        pass
    service.stop()
    return 0


def _replay_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="demon-sflow replay",
                                     description="Send a capture's sFlow datagrams over UDP.")
    parser.add_argument("file", help="pcap or pcapng capture")
    parser.add_argument("--to", default="127.0.0.1:6343", help="HOST:PORT (default %(default)s)")
    parser.add_argument("--speed", type=float, default=None,
                        help="original timing divided by this factor (default: back to back)")
    return cliopts.add_common(parser, exits=REPLAY_EXITS, config=False)


def _replay(argv: Sequence[str]) -> int:
    parser = _replay_parser()
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


def completion_parser() -> argparse.ArgumentParser:
    """The whole command line as one parser, for shell completion only: ``main``
    dispatches on the first word itself (serving takes no subcommand), so that the
    completer, which sees no argv, would otherwise know the serving options alone."""
    from sflow.jsonview import decode_parser

    parser = _serve_parser()
    sub = parser.add_subparsers(dest="command", metavar="{decode,replay}")
    for name, built in (("decode", decode_parser()), ("replay", _replay_parser())):
        # parents= copies the subcommand's own actions (its --help among them)
        sub.add_parser(name, parents=[built], add_help=False, help=built.description,
                       description=built.description)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    if cliopts.completing():
        cliopts.autocomplete(completion_parser())  # answers and exits
    args = list(sys.argv[1:] if argv is None else argv)
    if args and args[0] == "decode":
        from sflow.jsonview import main_decode
        return main_decode(args[1:])
    if args and args[0] == "replay":
        return _replay(args[1:])
    return _serve(args)


if __name__ == "__main__":
    sys.exit(main())
