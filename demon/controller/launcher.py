# PYTHON_ARGCOMPLETE_OK
"""``demon-controller``: run the os-ken component (os-ken 4.x ships no ``osken-manager``)."""

from __future__ import annotations

import argparse
import logging
import os
import signal
import socket
import sys
import threading
from pathlib import Path
from typing import Any, Callable

from demon.controller.fabric import FabricError, load_fabric, load_static
from demon.rpc.token import TokenError, ensure_token
from sflow import cliopts

DEFAULT_TOKEN_FILE = "/run/pytapdemon/rpc.token"
STOP_GRACE = 3.0  # seconds a clean stop may take before the process leaves anyway
EXITS = {0: "stopped by SIGTERM/SIGINT (switches keep their entries; mirrors time out)",
         1: "unexpected internal error",
         2: "usage or configuration error (fabric, static config, token file), or a listener "
            "cannot be bound"}


def _check_free(host: str, port: int) -> None:
    """os-ken listens on a thread of its own and only logs a busy port: check first."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError as exc:
            raise OSError(f"--of-host/--of-port {host}:{port}: {exc.strerror}") from None


def _on_stop_signals(opened: list[tuple[str, Callable[[], None]]]) -> None:
    """On SIGTERM/SIGINT: close ``opened`` (newest first), log that we stopped, exit 0.

    The process then leaves with ``os._exit``: os-ken's hub cannot stop its own
    threads, and the switches keep their entries (mirrors carry hard timeouts), so
    nothing is lost. A close that hangs does not hold the exit up past STOP_GRACE.
    """
    log = logging.getLogger("demon.controller")

    def give_up() -> None:
        log.warning("stopping took over %gs: exiting anyway", STOP_GRACE)
        logging.shutdown()
        os._exit(0)

    def stop(signum: int, _frame: Any) -> None:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)  # a second signal: no re-entry
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        log.info("signal %d: stopping", signum)
        cliopts.notify_stopping()
        watchdog = threading.Timer(STOP_GRACE, give_up)  # a real thread: hub.patch(thread=False)
        watchdog.daemon = True
        watchdog.start()
        for what, close in reversed(opened):
            try:
                close()
            except Exception as exc:  # noqa: BLE001  (one line, and carry on closing)
                log.warning("closing %s: %s: %s", what, type(exc).__name__, exc)
        log.info("stopped: %s closed", ", ".join(what for what, _ in reversed(opened)) or "nothing open")
        logging.shutdown()
        os._exit(0)

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="demon-controller",
        description="os-ken (OpenFlow 1.3) controller component: fabric roles, static mode, mirrors over RPC")
    parser.add_argument("--of-host", default="127.0.0.1", help="OpenFlow listen address (default 127.0.0.1)")
    parser.add_argument("--of-port", type=int, default=6653, help="OpenFlow listen port (default 6653)")
    parser.add_argument("--rpc", default="tcp:127.0.0.1:7733", help="RPC address, tcp:HOST:PORT or unix:/path")
    parser.add_argument("--token-file", default=DEFAULT_TOKEN_FILE,
                        help="shared RPC token; created 0600 with a random value if missing")
    parser.add_argument("--fabric", required=True, help="fabric description JSON (docs/fabric.md)")
    parser.add_argument("--static", help="static config: JSON (the fabric's static section) or mirrorPorts.txt")
    parser.add_argument("--state-file",
                        help="where the taps and their counters are remembered across restarts "
                             "(default: osken-taps.json beside the token file)")
    parser.add_argument("--barrier-timeout", type=float, default=5.0, help="seconds to wait for a switch")
    parser.add_argument("--metrics-listen", default="127.0.0.1:8735", metavar="HOST:PORT",
                        help="Prometheus metrics at GET /metrics (default 127.0.0.1:8735; '' = off)")
    return cliopts.add_common(parser, exits=EXITS)


def main(argv: list[str] | None = None) -> int:
    args = cliopts.parse_args(build_parser(), argv)
    try:
        fabric = load_fabric(args.fabric)
        static = load_static(args.static) if args.static else None
        token = ensure_token(args.token_file)
    except (FabricError, TokenError, OSError) as exc:
        print(f"demon-controller: {exc}", file=sys.stderr)
        return 2
    if not 0 < args.of_port < 65536:
        print("demon-controller: --of-port: must be 1..65535", file=sys.stderr)
        return 2

    # os-ken's import order matters: app_manager before controller (circular import otherwise).
    from os_ken.lib import hub

    hub.patch(thread=False)
    from os_ken import cfg
    from os_ken.base import app_manager
    from os_ken.controller import controller  # noqa: F401  (registers the ofp_* options)

    from demon.controller import osken_app

    cfg.CONF([], project="os_ken")
    cfg.CONF.set_override("ofp_listen_host", args.of_host)
    cfg.CONF.set_override("ofp_tcp_listen_port", args.of_port)

    from demon.controller.book import MirrorBook
    from demon.controller.service import TapService
    from demon.rpc.server import RpcServer

    state = Path(args.state_file) if args.state_file else Path(args.token_file).parent / "osken-taps.json"
    # From here on SIGTERM/SIGINT stop cleanly, even before os-ken runs (a supervisor may
    # stop us as soon as the ready line is out): close what was opened, then leave.
    opened: list[tuple[str, Callable[[], None]]] = []
    _on_stop_signals(opened)
    service = TapService(MirrorBook(fabric, "1.3", static), "os-ken", state_file=state,
                         collect_timeout=min(1.0, args.barrier_timeout))
    try:
        _check_free(args.of_host, args.of_port)
    except OSError as exc:
        print(f"demon-controller: cannot listen: {exc}", file=sys.stderr)
        return 2
    try:
        server = RpcServer(args.rpc, token, service).start()
    except (OSError, ValueError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        print(f"demon-controller: cannot listen: --rpc {args.rpc}: {reason}", file=sys.stderr)
        return 2
    opened.append(("the RPC listener", server.close))
    service.publish = server.publish
    metrics = ""
    if args.metrics_listen:
        from demon.controller import metrics as controller_metrics

        try:
            metrics_server = controller_metrics.serve(service, server, args.metrics_listen)
            opened.append(("the metrics listener", lambda: metrics_server.stop(timeout=1.0)))
            metrics = f" metrics {metrics_server.url}/metrics"
        except (OSError, ValueError) as exc:
            reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
            print(f"demon-controller: cannot listen: --metrics-listen {args.metrics_listen}: {reason}",
                  file=sys.stderr)
            server.close()
            return 2
    service.start()
    # closed first (opened is closed in reverse): the event worker stops, the state is written
    opened.insert(0, (f"the event worker (state written to {state})", service.close))
    osken_app.configure(service, args.barrier_timeout)
    print(f"demon-controller: openflow {args.of_host}:{args.of_port} rpc {server.address}{metrics}", flush=True)
    cliopts.notify_ready_when_listening(args.of_port, f"openflow {args.of_host}:{args.of_port} "
                                                      f"rpc {server.address}")
    app_manager.AppManager.run_apps(["demon.controller.osken_app"])
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
