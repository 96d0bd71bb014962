# PYTHON_ARGCOMPLETE_OK
"""``demon-watch``: the tap daemon's command line.

Exit statuses (also in ``--help``):

    0  stopped cleanly (or --check / --replay succeeded)
    1  unexpected internal error
    2  usage or configuration error (bad flags, bad policy set, token file)
    3  the analytics engine is unreachable at start (or refused our definitions)
    4  the controller component is unreachable at start (or refused our token)
    5  the state file cannot be used
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
from typing import IO, Any

from sflow import cliopts, rolling
from demon.rpc.protocol import DEFAULT_ADDRESS, DEFAULT_TOKEN_FILE

log = logging.getLogger("demon.cli")

EXIT_OK, EXIT_INTERNAL, EXIT_CONFIG, EXIT_ENGINE, EXIT_CONTROLLER, EXIT_STATE = 0, 1, 2, 3, 4, 5
SYSTEM_STATE = "/var/lib/pytapdemon/state.sqlite"
DEFAULT_LISTEN = "127.0.0.1:8734"
DEFAULT_SFLOW_LISTEN = "127.0.0.1:6343"


def default_state_path() -> str:
    """``$DEMON_STATE``, else the system path when root, else ``./demon-state.sqlite``
    (``demon-tap`` uses the same rule, so both find the same file)."""
    env = os.environ.get("DEMON_STATE")
    if env:
        return env
    return SYSTEM_STATE if os.geteuid() == 0 else "demon-state.sqlite"


EXITS = {EXIT_OK: "stopped cleanly (or --check / --replay succeeded)",
         EXIT_INTERNAL: "unexpected internal error",
         EXIT_CONFIG: "usage or configuration error (flags, config file, policy set, token "
                      "file, a listen address that cannot be bound)",
         EXIT_ENGINE: "the analytics engine is unreachable at start (or refused our definitions)",
         EXIT_CONTROLLER: "the controller component is unreachable at start (or refused our token)",
         EXIT_STATE: "the state file cannot be used (missing directory, damaged file)"}
EPILOG = """signals: SIGHUP reloads the policies (a bad set is rejected whole, the old one keeps
running); SIGTERM/SIGINT stop cleanly (see --on-exit)."""


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        prog="demon-watch", epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Watch sFlow analytics and tap the flows your policies pick.")
    ap.add_argument("--policies", metavar="DIR",
                    help="directory of policy YAML files (and _global.yaml); required unless "
                         "--init-policies or --demo")
    ap.add_argument("--check", action="store_true",
                    help="validate the policies, print each error on one line, and exit")
    ap.add_argument("--sflow-rt", metavar="URL",
                    help="use this sFlow-RT (e.g. http://127.0.0.1:8008) instead of starting "
                         "the embedded engine")
    ap.add_argument("--sflow-listen", default=None, metavar="HOST:PORT",
                    help="where the embedded engine's collector takes sFlow from the switches "
                         f"(default {DEFAULT_SFLOW_LISTEN}; the address they export to)")
    ap.add_argument("--engine-listen", default=None, metavar="HOST:PORT",
                    help="the embedded engine's sFlow-RT API (default 127.0.0.1:0, an "
                         "ephemeral port: only the daemon needs it)")
    # Before --sflow-listen/--engine-listen (kept so that old command lines still work).
    ap.add_argument("--sflow-port", type=int, default=None, help=argparse.SUPPRESS)
    ap.add_argument("--engine-http-port", type=int, default=None, help=argparse.SUPPRESS)
    ap.add_argument("--listen", default=DEFAULT_LISTEN, metavar="HOST:PORT",
                    help=f"the daemon's HTTP API (default {DEFAULT_LISTEN}; '' turns it off). "
                         "Beyond loopback every request needs a token")
    ap.add_argument("--api-token-file", default=None, metavar="FILE",
                    help="API tokens, one 'name:secret' a line, mode 0600 (created with one "
                         "random 'operator' token when missing); without it the API is "
                         "read-only and loopback-only")
    ap.add_argument("--controller", default=DEFAULT_ADDRESS, metavar="ADDRESS",
                    help=f"controller component RPC address (default {DEFAULT_ADDRESS})")
    ap.add_argument("--token-file", default=DEFAULT_TOKEN_FILE, metavar="FILE",
                    help=f"shared RPC token (default {DEFAULT_TOKEN_FILE})")
    ap.add_argument("--notify-command", action="append", default=[], metavar="CMD",
                    help="run CMD KIND TAP_ID on every tap transition, its JSON on standard "
                         "input (repeatable)")
    ap.add_argument("--notify-webhook", action="append", default=[], metavar="URL",
                    help="POST every tap transition's JSON to URL (repeatable)")
    ap.add_argument("--notify-timeout", type=float, default=5.0, metavar="S",
                    help="seconds a notification may take (default 5)")
    ap.add_argument("--notify-retries", type=int, default=3, metavar="N",
                    help="retries of a failed notification before it is recorded as failed "
                         "(default 3)")
    ap.add_argument("--rpc-timeout", type=float, default=5.0, metavar="S",
                    help="seconds to wait for each controller call (default 5)")
    ap.add_argument("--state", metavar="FILE", default=None,
                    help=f"SQLite state file (default $DEMON_STATE, {SYSTEM_STATE} as root, "
                         "else ./demon-state.sqlite)")
    ap.add_argument("--dry-run", action="store_true",
                    help="decide and log only: no RPC writes (installs/removes), state kept "
                         "in memory; the engine still gets the policies' flow definitions")
    ap.add_argument("--on-exit", choices=("leave", "remove"), default="leave",
                    help="on SIGTERM/SIGINT leave taps to their hard timeouts (default) "
                         "or remove them")
    ap.add_argument("--replay", metavar="FILE",
                    help="backtest: run the policies over a recording, no network, and print "
                         "the taps they would have taken: raw sFlow (pcap/pcapng, or a "
                         "directory of the engine's rolling recording) or an engine session "
                         "(JSON lines, docs/recordings.md)")
    ap.add_argument("--compare", metavar="DIR",
                    help="with --replay: also backtest the policies of DIR on the same "
                         "recording and print the taps they gain and lose")
    ap.add_argument("--fabric", metavar="FILE",
                    help="with --replay: the fabric description giving the switches' roles "
                         "(default: <recording>.fabric.json)")
    ap.add_argument("--json", action="store_true", help="with --replay: JSON lines output")
    rolling.add_arguments(ap)
    first = ap.add_argument_group("getting started")
    first.add_argument("--init-policies", metavar="DIR",
                       help="write the example policy set into DIR (never overwrites) and exit")
    first.add_argument("--demo", action="store_true",
                       help="backtest the lab's policies on raw sFlow the project recorded in "
                            "its lab and print the taps they would have taken and why (no root, "
                            "no network)")
    return cliopts.add_common(ap, exits=EXITS)


def check(directory: str, out: IO[str], err: IO[str]) -> int:
    from demon.policy import PolicyError, load_policy_set

    try:
        loaded = load_policy_set(directory)
    except PolicyError as exc:
        for line in exc.errors:
            print(line, file=err)
        print(f"{len(exc.errors)} error(s) in {directory}", file=err)
        return EXIT_CONFIG
    names = ", ".join(sorted(loaded.policies)) or "none"
    print(f"{directory}: {len(loaded.policies)} polic"
          f"{'y' if len(loaded.policies) == 1 else 'ies'} OK ({names})", file=out)
    return EXIT_OK


def init_policies(directory: str, out: IO[str], err: IO[str]) -> int:
    """``--init-policies DIR``: the shipped example policies, to start from."""
    from pathlib import Path

    from demon.share import POLICIES, ShareError, copy_tree

    try:
        written = copy_tree(POLICIES, Path(directory))
    except (ShareError, OSError) as exc:
        return _fail(err, f"--init-policies: {exc}", EXIT_CONFIG)
    print(f"{directory}: {len(written)} file(s) written (README.md explains them); check them "
          f"with: demon-watch --policies {directory} --check", file=out)
    return EXIT_OK


DEMO_INTRO = ("Backtest of the lab's policy set on {name}: raw sFlow the project recorded in "
              "its lab (three TCP elephants on one switch, against a policy cap of two taps), "
              "re-run through the embedded engine on the recording's clock. Each line is a "
              "decision and its cause; the taps it would have taken follow, then why.")
DEMO_NEXT = ("On your own data: demon-watch --init-policies DIR writes the example policies; "
             "record your switches' sFlow (tcpdump -w FILE udp port 6343, or demon-sflow "
             "--record-sflow DIR) and run demon-watch --policies DIR --replay FILE --fabric "
             "FABRIC.json (docs/backtest.md).")


def demo(out: IO[str], err: IO[str], *, as_json: bool = False) -> int:
    """``--demo``: the backtest a newcomer runs first, from the installed files only."""
    import textwrap

    from demon.replay import backtest, write_json, write_text
    from demon.replay_core import ReplayError
    from demon.share import DEMO_POLICIES, RECORDING, RECORDING_FABRIC

    try:
        result = backtest(DEMO_POLICIES, RECORDING, RECORDING_FABRIC, progress=cliopts.progress)
    except ReplayError as exc:
        return _fail(err, str(exc), EXIT_CONFIG)
    if as_json:
        write_json(result, out)
        return EXIT_OK
    print(textwrap.fill(DEMO_INTRO.format(name=RECORDING.name), 88) + "\n", file=out)
    write_text(result, out)
    print("why:", file=out)
    for tap in sorted(result.taps.values(), key=lambda t: (t.created_at, t.tap_id)):
        cause = next((e.detail.get("cause", "") for e in result.timeline
                      if e.tap_id == tap.tap_id and e.kind == "created"), "")
        print(f"  {tap.tap_id}: {tap.policy} tapped {tap.flow_key} on {cause}", file=out)
    waits = sorted({e.detail.get("cause", "") for e in result.timeline if e.kind == "waiting"})
    for cause in waits:
        print(f"  a flow waited: {cause}", file=out)
    print("\n" + textwrap.fill(DEMO_NEXT, 88), file=out)
    return EXIT_OK


def main(argv: list[str] | None = None, *, stdout: IO[str] | None = None,
         stderr: IO[str] | None = None) -> int:
    out = stdout if stdout is not None else sys.stdout
    err = stderr if stderr is not None else sys.stderr
    parser = build_parser()
    args = cliopts.parse_args(parser, argv, log_stream=err)
    if args.init_policies:
        return init_policies(args.init_policies, out, err)
    if args.demo:
        return demo(out, err, as_json=args.json)
    if not args.policies:
        parser.error("the following arguments are required: --policies (or --init-policies DIR, "
                     "--demo)")
    if args.check:
        return check(args.policies, out, err)
    if args.record_sflow and (args.sflow_rt or args.replay):
        return _fail(err, "--record-sflow records the embedded engine's datagrams: not with "
                          "--sflow-rt or --replay", EXIT_CONFIG)
    if args.compare and not args.replay:
        return _fail(err, "--compare needs --replay FILE (the recording to compare on)",
                     EXIT_CONFIG)
    if args.replay:
        from demon.replay import replay_main
        from demon.replay_core import ReplayError
        from demon.replay_compare import compare_main
        try:
            if args.compare:
                return compare_main(args.policies, args.compare, args.replay,
                                    as_json=args.json, fabric=args.fabric, out=out)
            return replay_main(args.policies, args.replay, as_json=args.json,
                               fabric=args.fabric, out=out, progress=cliopts.progress)
        except ReplayError as exc:
            print(f"demon-watch: {exc}", file=err)
            return EXIT_CONFIG
        except BrokenPipeError:  # | head: the reader has seen enough
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            return EXIT_OK
    try:
        return _watch(args, err)
    except KeyboardInterrupt:
        return EXIT_OK
    except Exception as exc:  # the log has the traceback; the operator gets one line
        log.exception("internal error")
        return _fail(err, f"internal error: {type(exc).__name__}: {exc}", EXIT_INTERNAL)


def _fail(err: IO[str], message: str, status: int) -> int:
    print(f"demon-watch: {message}", file=err)
    return status


def _listens(args: argparse.Namespace) -> tuple[tuple[str, int] | None, tuple[str, int],
                                               tuple[str, int]]:
    """(API, sFlow collector, engine API) addresses; raises ``ListenError``."""
    from sflow.webserve import ListenError, parse_listen

    def one(flag: str, text: str, default_port: int) -> tuple[str, int]:
        try:
            return parse_listen(text, default_port)
        except ListenError as exc:
            raise ListenError(f"{flag}: {exc}") from None

    api = None if args.listen == "" else one("--listen", args.listen, 8734)
    sflow_text = args.sflow_listen or (f"127.0.0.1:{args.sflow_port}" if args.sflow_port
                                       is not None else DEFAULT_SFLOW_LISTEN)
    engine_text = args.engine_listen or f"127.0.0.1:{args.engine_http_port or 0}"
    return api, one("--sflow-listen", sflow_text, 6343), one("--engine-listen", engine_text, 0)


def _watch(args: argparse.Namespace, err: IO[str]) -> int:
    from demon.api.server import ApiServer
    from demon.rpc.client import RpcClient
    from demon.rpc.protocol import parse_address
    from demon.rpc.token import TokenError, ensure_api_tokens, read_token
    from demon.runtime import Runtime, RuntimeOptions, StartupError
    from demon.store import Store, StoreError
    from sflow.webserve import ListenError, format_listen, is_loopback

    try:
        parse_address(args.controller)
    except ValueError as exc:
        return _fail(err, f"--controller {args.controller!r}: {exc}", EXIT_CONFIG)
    try:
        api_addr, sflow_addr, engine_addr = _listens(args)
    except ListenError as exc:
        return _fail(err, str(exc), EXIT_CONFIG)
    try:
        token = read_token(args.token_file)
    except TokenError as exc:
        return _fail(err, f"{exc} (--token-file)", EXIT_CONFIG)
    api_tokens = None
    if args.api_token_file:
        try:
            api_tokens = ensure_api_tokens(args.api_token_file)
        except TokenError as exc:
            return _fail(err, f"{exc} (--api-token-file)", EXIT_CONFIG)
        except OSError as exc:
            return _fail(err, f"--api-token-file {args.api_token_file}: {exc.strerror or exc}",
                         EXIT_CONFIG)
    if api_addr is not None and not is_loopback(api_addr[0]) and not api_tokens:
        return _fail(err, f"--listen {format_listen(*api_addr)} is reachable from other "
                          "hosts: give --api-token-file (every request there needs a token)",
                     EXIT_CONFIG)
    from demon.notify import SinkConfig

    sinks = [SinkConfig(kind, target, args.notify_timeout, args.notify_retries)
             for kind, targets in (("command", args.notify_command),
                                   ("webhook", args.notify_webhook)) for target in targets]
    for sink in sinks:
        try:
            sink.check()
        except ValueError as exc:
            return _fail(err, str(exc), EXIT_CONFIG)
    state_path = ":memory:" if args.dry_run else (args.state or default_state_path())
    try:
        store = Store(state_path, check=True)
    except StoreError as exc:
        return _fail(err, str(exc), EXIT_STATE)
    engine: Any = None
    api: Any = None
    engine_token = None
    if not args.sflow_rt and not is_loopback(engine_addr[0]):
        import secrets

        # The embedded engine's API reachable from other hosts takes writes only with a
        # token: this process's own, never written anywhere.
        engine_token = secrets.token_hex(32)
    previous: dict[int, Any] = {}
    try:
        if args.sflow_rt:
            engine_url = args.sflow_rt
        else:
            try:
                recorder = rolling.from_args(args)
            except OSError as exc:
                return _fail(err, f"--record-sflow {args.record_sflow}: "
                                  f"{exc.strerror or exc}", EXIT_CONFIG)
            try:
                engine = _start_embedded(sflow_addr, engine_addr, recorder, engine_token)
            except OSError as exc:
                return _fail(err, f"cannot start the embedded engine (sFlow on "
                                  f"{format_listen(*sflow_addr)}, API on "
                                  f"{format_listen(*engine_addr)}): {exc.strerror or exc}",
                             EXIT_ENGINE)
            engine_url = engine.url
        controller = RpcClient(args.controller, token=token, timeout=args.rpc_timeout)
        runtime = Runtime(args.policies, engine_url, controller, store,
                          RuntimeOptions(on_exit=args.on_exit, dry_run=args.dry_run),
                          embedded_engine=engine is not None, notify=sinks,
                          engine_token=engine_token,
                          sflow_listen=None if engine is None else format_listen(
                              *engine.sflow_address))
        registry = None if engine is None else (getattr(engine, "metrics_registry", None)
                                                or getattr(engine.engine, "metrics_registry",
                                                           None))
        if registry is not None:  # the embedded engine's metrics on the same page
            runtime.metrics.extra.append(registry)
        if api_addr is not None:
            try:
                api = ApiServer(runtime, *api_addr, tokens=api_tokens).start()
            except OSError as exc:
                return _fail(err, f"--listen {format_listen(*api_addr)}: cannot listen: "
                                  f"{exc.strerror or exc}", EXIT_CONFIG)
        # Handlers only enqueue: the mutator thread acts on them once run() starts.
        # Installed before start() so that no signal finds the default action.
        previous = {sig: signal.getsignal(sig) for sig in (signal.SIGHUP, signal.SIGTERM,
                                                           signal.SIGINT)}
        signal.signal(signal.SIGHUP, lambda *_: runtime.request_reload())
        signal.signal(signal.SIGTERM, lambda *_: runtime.request_stop("SIGTERM"))
        signal.signal(signal.SIGINT, lambda *_: runtime.request_stop("SIGINT"))
        try:
            runtime.start()
        except StartupError as exc:
            return _fail(err, str(exc), exc.status)
        cliopts.notify_ready("watching")
        runtime.run()
        return EXIT_OK
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        if api is not None:
            api.stop()
        store.close()
        if engine is not None:
            engine.stop()


def _start_embedded(sflow_addr: tuple[str, int], http_addr: tuple[str, int],
                    recorder: Any = None, token: str | None = None) -> Any:
    from sflow.auth import Tokens
    from sflow.embedded import EmbeddedEngine
    from sflow.webserve import format_listen, is_loopback

    engine = EmbeddedEngine(sflow_addr=sflow_addr, http_addr=http_addr, recorder=recorder,
                            tokens=Tokens({"demon-watch": token}) if token else None)
    try:
        engine.start()
    except OSError:
        if recorder is not None:
            recorder.close()
        raise
    host, port = engine.sflow_address
    log.info("embedded engine: sFlow on %s, API at %s%s", format_listen(host, port), engine.url,
             f"; recording its datagrams in {recorder.directory}" if recorder else "")
    if not is_loopback(host):
        log.warning("embedded engine's sFlow collector exposed beyond loopback on %s (it takes "
                    "datagrams from any host that can reach it)", format_listen(host, port))
    if not is_loopback(http_addr[0]):
        log.warning("embedded engine's API exposed beyond loopback on %s (reads open to "
                    "sFlow-RT clients; writes only with the daemon's own token)",
                    format_listen(*http_addr))
    return engine


if __name__ == "__main__":
    sys.exit(main())
