# PYTHON_ARGCOMPLETE_OK
"""``demon-capture``: the capture host's agent. One capture file series per tap,
with manifests.

It runs on the capture host (in the lab: inside h11's namespace). Frames
arriving on the capture interface reach it through memory-mapped kernel
rings, already told apart by tap by a BPF program compiled from the tap table
(:mod:`demon.capture.ring`, :mod:`demon.capture.bpf`); frames of taps not
known yet wait ``--grace`` seconds for the tap table, then go to
``unmatched/``.

Where taps come from (one tap table, :mod:`demon.capture.taptable`):
``--daemon URL`` (the daemon API's transition stream, resumed from the last
transition applied), ``--taps FILE`` (a JSON table, re-read when it changes)
or ``--store FILE`` (a local daemon's state file, read-only).

Output layout (``--out DIR``)::

    DIR/<tap_id>/<tap_id>-0001.pcapng + <tap_id>-0001.json (manifest per file)
    DIR/<tap_id>/tap.json              the tap's record: figures, switch counter, difference
    DIR/unmatched/unmatched-0001.pcapng
    DIR/agent.json                     status: counters, kernel drops, per-tap totals
    DIR/daemon-cursor.json             with --daemon: the last transition applied

``--read FILE`` (pcap or pcapng) files an existing capture the same way, offline.

Exit status: 0 done; 2 bad input (options, files, taps), one line on stderr.
"""

from __future__ import annotations

import argparse
import logging
import os
import re
import signal
import sys
import time
from pathlib import Path
from typing import Any, Iterator, NoReturn

from demon.capture.budget import DiskBudget
from demon.capture.files import FORMATS
from demon.capture.filer import CaptureAgent
from demon.capture.packetsocket import PacketSocket  # noqa: F401  (demon-traffic sniff uses it)
from demon.capture.taptable import STOP_SLACK, StoreTapTable, TapTable, TapTableError
from sflow import cliopts
from sflow.logsetup import setup_logging
from sflow.pcap import LINKTYPE_ETHERNET, PcapError, iter_packets

log = logging.getLogger("demon.capture")

EXIT_OK, EXIT_FAIL, EXIT_USAGE = 0, 1, 2
DEFAULT_METRICS = "127.0.0.1:8736"
_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kKmMgGtT]i?)?[bB]?\s*$")
_UNITS = {"": 1, "k": 10**3, "m": 10**6, "g": 10**9, "t": 10**12,
          "ki": 2**10, "mi": 2**20, "gi": 2**30, "ti": 2**40}


class UsageError(Exception):
    """A bad option or input file: one line, exit status 2."""


def parse_size(text: str) -> int:
    """``100M`` → 100,000,000 bytes; ``1Gi`` → 2**30; a plain number is bytes."""
    m = _SIZE.match(str(text))
    if not m:
        raise argparse.ArgumentTypeError(f"expected a size such as 100M or 2G, got {text!r}")
    return int(float(m.group(1)) * _UNITS[(m.group(2) or "").lower()])


class Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:  # one line, exit 2 (argparse prints usage too)
        self.exit(EXIT_USAGE, f"{self.prog}: {message}\n")


def build_parser() -> argparse.ArgumentParser:
    p = Parser(prog="demon-capture", description="capture host agent: one capture file series per tap")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("-i", "--interface", help="capture port to capture on (inbound frames only)")
    src.add_argument("--read", type=Path, metavar="FILE", help="file an existing pcap or pcapng instead (offline)")
    p.add_argument("-o", "--out", type=Path, required=True, help="output directory")
    taps = p.add_mutually_exclusive_group()
    taps.add_argument("--daemon", metavar="URL", help="learn taps from the daemon API's transition stream")
    taps.add_argument("--taps", type=Path, help="tap table JSON (re-read when it changes)")
    taps.add_argument("--store", type=Path, help="a local daemon's state file (demon-watch --state), read-only")
    p.add_argument("--token-file", type=Path, help="with --daemon: the API token (name:secret or a bare secret)")
    p.add_argument("--format", choices=FORMATS, default="pcapng",
                   help="pcapng (default; the tap's metadata in the section header) or classic pcap")
    p.add_argument("--snaplen", type=int, default=262144, help="bytes kept of each frame (default 262144)")
    p.add_argument("--rotate-bytes", type=int, default=100_000_000,
                   help="a new file above this many bytes (default 100000000; 0 = never)")
    p.add_argument("--rotate-seconds", type=float, default=0, help="a new file after this age (0 = never)")
    p.add_argument("--budget", type=parse_size, default=0,
                   help="disk budget for all captures (oldest ended captures removed first; 0 = none)")
    p.add_argument("--tap-budget", type=parse_size, default=0, help="disk budget per tap (0 = none)")
    p.add_argument("--grace", type=float, default=3.0,
                   help="seconds a frame of no known tap waits for its tap before going to unmatched/")
    p.add_argument("--stop-slack", type=float, default=STOP_SLACK,
                   help=f"seconds after a tap's stop its late copies are still its own (default {STOP_SLACK})")
    p.add_argument("--keep-noise", action="store_true", help="keep IPv6 link-local chatter")
    p.add_argument("--ring-mb", type=int, default=64,
                   help="kernel ring per tap, MiB (default 64: about 0.5 s of 1 Gbit/s if the agent is held up)")
    p.add_argument("--catchall-mb", type=int, default=32,
                   help="kernel ring for frames of no known tap, MiB (default 32)")
    p.add_argument("--block-timeout-ms", type=int, default=20,
                   help="the kernel hands over a ring block at the latest after this (default 20)")
    p.add_argument("--max-rings", type=int, default=64, help="rings at most (taps beyond: the Python path)")
    p.add_argument("--metrics-listen", default=DEFAULT_METRICS, metavar="HOST:PORT",
                   help=f"Prometheus metrics (default {DEFAULT_METRICS}; '' = off)")
    p.add_argument("-v", "--verbose", action="store_true", help="same as --log-level debug")
    return cliopts.add_common(p, exits={0: "stopped by SIGTERM/SIGINT, or --read filed the whole capture",
                                        2: "bad input: options, --read file, tap table, token file, "
                                           "interface, output directory (one line on stderr)"})


def check_args(args: argparse.Namespace) -> None:
    for name in ("rotate_bytes", "rotate_seconds", "grace", "budget", "tap_budget", "stop_slack"):
        if getattr(args, name) < 0:
            raise UsageError(f"--{name.replace('_', '-')}: must be >= 0")
    if not 1 <= args.snaplen <= 262144:
        raise UsageError(f"--snaplen: must be 1..262144, got {args.snaplen}")
    for name in ("ring_mb", "catchall_mb", "block_timeout_ms"):
        if getattr(args, name) < 1:
            raise UsageError(f"--{name.replace('_', '-')}: must be >= 1")
    if args.max_rings < 1:
        raise UsageError("--max-rings: must be >= 1")
    if args.token_file and not args.daemon:
        raise UsageError("--token-file: only with --daemon")
    if args.tap_budget and args.rotate_bytes and args.rotate_bytes > args.tap_budget:
        raise UsageError(f"--rotate-bytes {args.rotate_bytes} exceeds --tap-budget {args.tap_budget}: "
                         "a tap could never keep one whole file")
    if args.budget and args.rotate_bytes and args.rotate_bytes > args.budget:
        raise UsageError(f"--rotate-bytes {args.rotate_bytes} exceeds --budget {args.budget}")
    out: Path = args.out
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UsageError(f"--out {out}: {exc.strerror or exc}") from None
    if not os.access(out, os.W_OK | os.X_OK):
        raise UsageError(f"--out {out}: not writable")


def make_table(args: argparse.Namespace) -> TapTable:
    if args.store:
        if not args.store.is_file():
            raise UsageError(f"--store {args.store}: no such file")
        table: TapTable = StoreTapTable(args.store, args.stop_slack)
        table.reload_if_changed()
        if table.last_error and not table.taps:
            raise UsageError(f"--store {table.last_error}")
        return table
    table = TapTable(args.taps, args.stop_slack)
    try:
        table.check()
    except TapTableError as exc:
        raise UsageError(f"--taps {exc}") from None
    return table


def offline_packets(path: Path) -> Iterator[tuple[int, bytes, int]]:
    """``(ts_ns, frame, orig_len)`` of an Ethernet capture; bad files raise UsageError."""
    if not path.exists():
        raise UsageError(f"--read {path}: no such file")
    try:
        for pkt in iter_packets(path):
            if pkt.linktype != LINKTYPE_ETHERNET:
                raise UsageError(f"--read {path}: link type {pkt.linktype} is not Ethernet")
            yield pkt.ts_ns, pkt.frame, pkt.orig_len
    except PcapError as exc:
        raise UsageError(f"--read {exc}") from None
    except IsADirectoryError:
        raise UsageError(f"--read {path}: is a directory") from None
    except OSError as exc:
        raise UsageError(f"--read {path}: {exc.strerror or exc}") from None


def run_offline(agent: CaptureAgent, path: Path) -> None:
    packets = offline_packets(path)
    try:
        first = next(packets)  # a file that is no capture fails before anything is written
    except StopIteration:
        first = None
    try:
        if first is not None:
            agent.handle(first[1], first[0], first[2])
            # a bar on a terminal, nothing otherwise (the file's size is not known upfront)
            for ts_ns, frame, orig in cliopts.progress(packets, desc="filing", unit="frame"):
                agent.handle(frame, ts_ns, orig)
    finally:
        agent.close()
        agent.write_status({"stopped_at": time.time(), "read": str(path)})


def start_metrics(listen: str, agent: CaptureAgent, extra: Any) -> Any:
    if not listen:
        return None
    from demon.capture.metrics import registry_for, serve
    from sflow.webserve import ListenError, parse_listen

    try:
        host, port = parse_listen(listen, 8736)
    except ListenError as exc:
        raise UsageError(f"--metrics-listen {exc}") from None
    try:
        server = serve(registry_for(agent, extra), host, port)
    except OSError as exc:
        raise UsageError(f"--metrics-listen {listen}: {exc.strerror or exc}") from None
    log.info("metrics on %s/metrics", server.url)
    return server


def main(argv: list[str] | None = None) -> int:
    args = cliopts.parse_args(build_parser(), argv)
    if args.verbose:
        setup_logging("debug", args.log_format)
    try:
        return _main(args)
    except UsageError as exc:
        print(f"demon-capture: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        return EXIT_OK


def _main(args: argparse.Namespace) -> int:
    check_args(args)
    follower = None
    if args.daemon:
        from demon.capture.stream import StreamConfigError, TransitionFollower, check_url, read_token

        try:
            check_url(args.daemon)
            token = read_token(args.token_file) if args.token_file else None
        except StreamConfigError as exc:
            raise UsageError(str(exc)) from None
        table: TapTable = TapTable(None, args.stop_slack)
    else:
        table = make_table(args)
    budget = DiskBudget(total=args.budget, per_tap=args.tap_budget)
    agent = CaptureAgent(args.out, table, rotate_bytes=args.rotate_bytes, rotate_seconds=args.rotate_seconds,
                         grace=args.grace, keep_noise=args.keep_noise, fmt=args.format, snaplen=args.snaplen,
                         budget=budget, interface=args.interface or "")
    if args.read:
        if args.daemon:
            raise UsageError("--read: taps come from --taps or --store offline, not --daemon")
        run_offline(agent, args.read)
        return EXIT_OK

    from demon.capture.live import LiveCapture
    from demon.capture.ring import RingError

    try:
        live = LiveCapture(agent, args.interface, ring_mb=args.ring_mb, catchall_mb=args.catchall_mb,
                           block_timeout_ms=args.block_timeout_ms, max_rings=args.max_rings)
    except RingError as exc:
        raise UsageError(f"--interface {args.interface}: {exc.strerror or exc}") from None
    except PermissionError:
        raise UsageError(f"--interface {args.interface}: capturing needs root (or CAP_NET_RAW)") from None
    except OSError as exc:
        raise UsageError(f"--interface {args.interface}: {exc.strerror or exc}") from None
    before = None
    status: dict[str, Any] = {}

    def extra() -> dict[str, Any]:
        return {**live.status(), **(follower.status() if follower is not None else {}), **status}

    agent.status_extra = extra
    if args.daemon:
        follower = TransitionFollower(args.daemon, args.out, token=token, wake=live.wake).start()

        def before() -> None:
            follower.apply(agent.table, agent.note_transition)

    try:
        metrics = start_metrics(args.metrics_listen, agent, extra)
    except UsageError:
        live.close()
        if follower is not None:
            follower.stop()
        raise
    if metrics is not None:
        status["metrics"] = metrics.url
    stop = {"flag": False}

    def on_signal(_signum: int, _frame: Any) -> None:
        stop["flag"] = True

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    log.info("capturing on %s into %s (%s)", args.interface, args.out, args.format)
    cliopts.notify_ready(f"capturing on {args.interface} into {args.out}")
    try:
        live.run(lambda: stop["flag"], before)
    finally:
        live.close()
        if follower is not None:
            follower.stop()
        if metrics is not None:
            metrics.stop()
    return EXIT_OK


if __name__ == "__main__":
    raise SystemExit(main())
