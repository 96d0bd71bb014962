"""What every pytapdemon command shares on its command line.

Each command builds its own ``argparse`` parser, then::

    cliopts.add_common(parser, exits={0: "stopped cleanly", 2: "usage or configuration error"})
    args = cliopts.parse_args(parser, argv)

which gives it ``--version``, ``--log-format text|json``, ``--log-level``,
``--config FILE`` (:mod:`sflow.configfile`: the command's section of the YAML
file, command-line flags overriding it), shell completion (``argcomplete``:
``eval "$(register-python-argcomplete demon-watch)"``) and a ``--help`` that
ends with the command's exit statuses; ``parse_args`` also sets up logging.

Long-running commands call :func:`notify_ready` once they really serve (systemd
``Type=notify``); long offline work wraps its loop in :func:`progress`.

It lives in ``sflow/`` because ``demon-sflow`` imports nothing from ``demon/``;
``demon/`` and ``topo/`` import it from here.
"""

from __future__ import annotations

import argparse
import logging
import os
import socket
import sys
import textwrap
import threading
import time
from typing import IO, Any, Iterable, Iterator, Mapping, Sequence, TypeVar

from sflow.configfile import ConfigError, load_section
from sflow.logsetup import LOG_FORMATS, LOG_LEVELS, setup_logging

__all__ = ["add_common", "parse_args", "version", "notify_ready", "notify_stopping",
           "notify_ready_when_listening", "sd_notify", "progress", "missing_module",
           "autocomplete", "completing"]

log = logging.getLogger(__name__)
T = TypeVar("T")
DISTRIBUTION = "pytapdemon"
# Captured at import: os-ken's eventlet patches time.sleep later in demon-controller,
# and the readiness watcher below runs on a plain thread.
_sleep = time.sleep


def version() -> str:
    """The installed distribution's version (one for every command)."""
    from importlib.metadata import PackageNotFoundError
    from importlib.metadata import version as dist_version

    try:
        return dist_version(DISTRIBUTION)
    except PackageNotFoundError:  # run from a checkout that was never installed
        return "0+unknown"


class CommonHelpFormatter(argparse.HelpFormatter):
    """Wraps prose as usual but keeps indented lines (tables of exit statuses) as written."""

    def _fill_text(self, text: str, width: int, indent: str) -> str:
        out = []
        for para in textwrap.dedent(text).strip("\n").split("\n\n"):
            lines = para.split("\n")
            if any(line.startswith(" ") for line in lines[1:]):
                out.append("\n".join(indent + line for line in lines))
            else:
                out.append(textwrap.fill(" ".join(para.split()), width, initial_indent=indent,
                                         subsequent_indent=indent))
        return "\n\n".join(out)


def exit_table(exits: Mapping[int, str]) -> str:
    return "exit statuses:\n" + "\n".join(f"  {code:<3} {what}" for code, what in
                                         sorted(exits.items()))


def add_common(parser: argparse.ArgumentParser, *, exits: Mapping[int, str],
               config: bool = True, log_level: str = "info") -> argparse.ArgumentParser:
    """Add the shared options to ``parser`` and its exit statuses to its ``--help``.

    ``config=False`` for commands that take no ``--config`` (one-shot subcommand
    parsers such as ``demon-sflow decode``); ``log_level="warning"`` for commands
    whose stderr is for their own one-line messages (operator clients).
    """
    group = parser.add_argument_group("common options")
    group.add_argument("--version", action="version", version=f"%(prog)s {version()}")
    group.add_argument("--log-format", choices=LOG_FORMATS, default="text",
                       help="text (default) or json: one object a line")
    group.add_argument("--log-level", choices=LOG_LEVELS, default=log_level, type=str.lower,
                       help=f"debug, info, warning or error (default {log_level})")
    if config:
        group.add_argument("--config", metavar="FILE",
                           help="YAML configuration file: this command's section; options "
                                "given here override it (see contrib/config.example.yaml)")
    parser.epilog = "\n\n".join(p for p in (parser.epilog, exit_table(exits)) if p)
    if parser.formatter_class in (argparse.HelpFormatter, argparse.RawDescriptionHelpFormatter):
        parser.formatter_class = CommonHelpFormatter
    parser._demon_exits = dict(exits)  # type: ignore[attr-defined]  # read by tests
    return parser


def _config_path(argv: Sequence[str]) -> str | None:
    if any(a in ("-h", "--help", "--version") for a in argv):
        return None
    pre = argparse.ArgumentParser(add_help=False, allow_abbrev=False)
    pre.add_argument("--config")
    known, _ = pre.parse_known_args(list(argv))
    return known.config


def completing() -> bool:
    """The shell's completion hook runs the command (argcomplete's protocol)."""
    return "_ARGCOMPLETE" in os.environ


def autocomplete(parser: argparse.ArgumentParser) -> None:
    """Answer the shell's completion request from ``parser`` and exit, when there is
    one (:func:`completing`); otherwise do nothing."""
    try:
        import argcomplete
    except ImportError:  # completion is a convenience: never a reason not to run
        return
    argcomplete.autocomplete(parser)


def parse_args(parser: argparse.ArgumentParser, argv: Sequence[str] | None = None, *,
               log_stream: IO[str] | None = None, logs: bool = True) -> argparse.Namespace:
    """Parse like ``parser.parse_args``, with completion, ``--config`` and logging.

    Values from the configuration file stand in for defaults: an option given on
    the command line wins, and a required option set in the file is no longer
    required here. A bad file prints one line per error and exits with status 2.
    """
    autocomplete(parser)
    args_list = list(sys.argv[1:] if argv is None else argv)
    path = _config_path(args_list) if any(a.dest == "config" for a in parser._actions) else None
    values: dict[str, Any] = {}
    if path:
        try:
            values = load_section(path, parser).values
        except ConfigError as exc:
            prog = parser.prog
            parser.exit(2, "".join(f"{prog}: {line}\n" for line in exc.errors))
    args = _parse_with(parser, args_list, values)
    if logs and hasattr(args, "log_level"):
        setup_logging(args.log_level, args.log_format, log_stream)
    return args


def _parse_with(parser: argparse.ArgumentParser, argv: list[str],
                values: Mapping[str, Any]) -> argparse.Namespace:
    """Parse ``argv`` over the file's ``values`` (which stand in for defaults)."""
    if not values:
        return parser.parse_args(argv)
    given = _given_on_command_line(parser, argv)
    namespace = argparse.Namespace(**values)  # argparse leaves attributes already set alone
    relaxed: list[Any] = []
    for action in parser._actions:
        if action.required and action.dest in values:
            action.required = False
            relaxed.append(action)
    for group in parser._mutually_exclusive_groups:
        if group.required and any(a.dest in values for a in group._group_actions):
            group.required = False
            relaxed.append(group)
    try:
        parser.parse_args(argv, namespace)
    finally:
        for item in relaxed:
            item.required = True
    # An appended option given on the command line replaces the file's list.
    for action in parser._actions:
        if isinstance(action, argparse._AppendAction) and action.dest in given and \
                isinstance(values.get(action.dest), list):
            setattr(namespace, action.dest,
                    getattr(namespace, action.dest)[len(values[action.dest]):])
    # A member of an exclusive group on the command line replaces the file's choice.
    for group in parser._mutually_exclusive_groups:
        if any(a.dest in given for a in group._group_actions):
            for action in group._group_actions:
                if action.dest in values and action.dest not in given:
                    setattr(namespace, action.dest, action.default)
    return namespace


def _given_on_command_line(parser: argparse.ArgumentParser, argv: list[str]) -> set[str]:
    """The dests ``argv`` itself sets: a parse with every default suppressed."""
    saved = [(a, a.default, a.required) for a in parser._actions]
    groups = [(g, g.required) for g in parser._mutually_exclusive_groups]
    try:
        for action in parser._actions:
            action.default = argparse.SUPPRESS
            action.required = False
        for group, _ in groups:
            group.required = False
        seen, _ = parser.parse_known_args(argv)
    finally:
        for action, default, required in saved:
            action.default, action.required = default, required
        for group, required in groups:
            group.required = required
    return set(vars(seen))


# -- readiness (systemd Type=notify) -------------------------------------------------


def sd_notify(message: str) -> bool:
    """Send ``message`` to systemd's ``$NOTIFY_SOCKET`` (sd_notify(3)); False if none.

    A dozen lines of standard library rather than a dependency: the protocol is
    one datagram on a Unix socket, ``systemd-python`` needs libsystemd headers
    to build, and the pure-Python ``sdnotify`` package is unmaintained.
    """
    address = os.environ.get("NOTIFY_SOCKET")
    if not address:
        return False
    if address.startswith("@"):  # abstract namespace
        address = "\0" + address[1:]
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            sock.connect(address)
            sock.sendall(message.encode("utf-8"))
    except OSError as exc:
        log.warning("cannot notify systemd at %s: %s", address.lstrip("\0"), exc)
        return False
    return True


def notify_ready(status: str = "") -> bool:
    """Tell systemd the command is serving (call once its listeners are bound)."""
    lines = ["READY=1", f"MAINPID={os.getpid()}"]
    if status:
        lines.append("STATUS=" + " ".join(status.split()))
    return sd_notify("\n".join(lines))


def notify_stopping() -> bool:
    return sd_notify("STOPPING=1")


def _listening(port: int) -> bool:
    """Whether a TCP socket of this network namespace listens on ``port``."""
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            with open(table, encoding="ascii") as handle:
                next(handle, None)
                for line in handle:
                    fields = line.split()
                    if len(fields) > 3 and fields[3] == "0A" and \
                            int(fields[1].rsplit(":", 1)[1], 16) == port:
                        return True
        except OSError:
            continue
    return False


def notify_ready_when_listening(port: int, status: str = "", timeout: float = 120.0) -> None:
    """Notify readiness from a thread once something listens on TCP ``port``.

    For servers that open their socket inside a framework's run loop (os-ken's
    OpenFlow listener): the thread reads ``/proc/net/tcp*``, it never connects
    or binds, so it cannot disturb the server.
    """
    if not os.environ.get("NOTIFY_SOCKET"):
        return

    def wait() -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if _listening(port):
                notify_ready(status)
                return
            _sleep(0.05)
        log.warning("port %d did not start listening within %.0f s: systemd not notified",
                    port, timeout)

    threading.Thread(target=wait, name="sd-notify", daemon=True).start()


# -- progress on long offline work ---------------------------------------------------


def progress(iterable: Iterable[T], total: int | None = None, desc: str = "",
             unit: str = "it", stream: IO[str] | None = None) -> Iterator[T] | Iterable[T]:
    """``iterable`` with a progress bar on ``stream`` (stderr) when it is a terminal.

    Silent (the iterable itself) when the stream is not a terminal, when
    ``DEMON_NO_PROGRESS`` is set, or when ``tqdm`` is missing; the bar is
    cleared when the loop ends, so the command's own output stays clean.
    """
    stream = stream if stream is not None else sys.stderr
    if os.environ.get("DEMON_NO_PROGRESS") or not _is_terminal(stream):
        return iterable
    try:
        from tqdm import tqdm
    except ImportError:
        return iterable
    return tqdm(iterable, total=total, desc=desc or None, unit=unit, file=stream, leave=False,
                dynamic_ncols=True, mininterval=0.25)


def _is_terminal(stream: IO[str]) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False


# -- optional heavy dependencies -------------------------------------------------------


def missing_module(module: str) -> str | None:
    """The import error's one line if ``module`` cannot be imported, else None."""
    try:
        __import__(module)
    except ImportError as exc:
        return str(exc) or f"No module named {module!r}"
    return None
