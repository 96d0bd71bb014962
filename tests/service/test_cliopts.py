"""The options every command shares (``sflow.cliopts``), on the real commands' parsers."""

from __future__ import annotations

import argparse
import importlib
import io
import json
import logging
import os
import socket
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from sflow import cliopts

REPO = Path(__file__).resolve().parents[2]

# command -> (module, parser builder): every console script of setup.cfg.
COMMANDS = {
    "demon-watch": ("demon.cli", "build_parser"),
    "demon-tap": ("demon.tapctl", "build_parser"),
    "demon-controller": ("demon.controller.launcher", "build_parser"),
    "demon-netcheck": ("demon.controller.netcheck", "build_parser"),
    "demon-capture": ("demon.capture.agent", "build_parser"),
    "demon-traffic": ("topo.traffic", "build_parser"),
    "demon-lab": ("topo.lab", "build_parser"),
}


def console_scripts() -> dict[str, str]:
    text = (REPO / "setup.cfg").read_text()
    block = text.split("console_scripts =", 1)[1].split("\n\n", 1)[0]
    out = {}
    for line in block.strip().splitlines():
        name, _, target = line.partition("=")
        out[name.strip()] = target.strip()
    return out


def test_every_console_script_is_covered() -> None:
    assert set(console_scripts()) == set(COMMANDS) | {"demon-sflow"}


def serve_parser() -> argparse.ArgumentParser:
    """demon-sflow builds its serving parser inside _serve: capture it."""
    import sflow.cli

    captured: dict[str, argparse.ArgumentParser] = {}
    real = cliopts.parse_args

    def grab(parser: argparse.ArgumentParser, argv: object = None, **kw: object) -> object:
        captured["parser"] = parser
        raise SystemExit(0)

    cliopts.parse_args = grab  # type: ignore[assignment]
    try:
        with pytest.raises(SystemExit):
            sflow.cli.main([])
    finally:
        cliopts.parse_args = real  # type: ignore[assignment]
    return captured["parser"]


def parsers() -> dict[str, argparse.ArgumentParser]:
    out = {name: getattr(importlib.import_module(mod), fn)() for name, (mod, fn) in COMMANDS.items()}
    out["demon-sflow"] = serve_parser()
    return out


@pytest.mark.parametrize("name", sorted(set(COMMANDS) | {"demon-sflow"}))
def test_common_options_and_exit_statuses_in_help(name: str) -> None:
    parser = parsers()[name]
    flags = {s for a in parser._actions for s in a.option_strings}
    assert {"--version", "--log-format", "--log-level", "--config"} <= flags
    text = parser.format_help()
    assert "exit statuses:" in text
    exits = parser._demon_exits  # type: ignore[attr-defined]
    assert 0 in exits and 2 in exits
    for code, what in exits.items():
        assert f"  {code:<3} {what.split()[0]}" in text


@pytest.mark.parametrize("name", sorted(set(COMMANDS) | {"demon-sflow"}))
def test_version_is_the_distribution_version(name: str, capsys: pytest.CaptureFixture[str]) -> None:
    import demon

    with pytest.raises(SystemExit) as exc:
        cliopts.parse_args(parsers()[name], ["--version"])
    assert exc.value.code == 0
    assert capsys.readouterr().out.strip() == f"{name} {demon.__version__}"


def test_log_level_any_case_and_json_format() -> None:
    stream = io.StringIO()
    parser = argparse.ArgumentParser(prog="demon-x")
    cliopts.add_common(parser, exits={0: "ok", 2: "usage"})
    args = cliopts.parse_args(parser, ["--log-level", "WARNING", "--log-format", "json"],
                              log_stream=stream)
    assert args.log_level == "warning"
    logging.getLogger("demon.test").warning("hello %s", "there")
    logging.getLogger("demon.test").info("not shown")
    lines = [json.loads(line) for line in stream.getvalue().splitlines()]
    assert [(r["level"], r["msg"]) for r in lines] == [("warning", "hello there")]


def test_legacy_logging_module_still_imports() -> None:
    from demon.logging_setup import setup_logging
    from sflow.logsetup import setup_logging as moved

    assert setup_logging is moved


def test_entry_modules_carry_the_completion_marker() -> None:
    from importlib.util import find_spec

    for target in console_scripts().values():
        spec = find_spec(target.split(":")[0])
        assert spec is not None and spec.origin is not None
        assert "PYTHON_ARGCOMPLETE_OK" in Path(spec.origin).read_text()[:1024], spec.origin


def test_completion_offers_the_commands_options(tmp_path: Path) -> None:
    """argcomplete's protocol: _ARGCOMPLETE set, the line in COMP_LINE, answers on fd 8."""
    line = "demon-watch --log-f"
    env = dict(os.environ, _ARGCOMPLETE="1", _ARGCOMPLETE_IFS="\n", COMP_LINE=line,
               COMP_POINT=str(len(line)), OUT=str(tmp_path / "answer"), PY=sys.executable)
    code = "import sys; from demon.cli import main; sys.argv = ['demon-watch']; main()"
    proc = subprocess.run(["bash", "-c", f'"$PY" -c "{code}" 8>"$OUT"'], env=env, cwd=REPO,
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "answer").read_text().split() == ["--log-format"]


def complete(tmp_path: Path, line: str, module: str, prog: str) -> list[str]:
    """What argcomplete offers for ``line`` (cursor at its end) from ``module.main``."""
    env = dict(os.environ, _ARGCOMPLETE="1", _ARGCOMPLETE_IFS="\n", COMP_LINE=line,
               COMP_POINT=str(len(line)), OUT=str(tmp_path / "answer"), PY=sys.executable)
    code = f"import sys; from {module} import main; sys.argv = ['{prog}']; main()"
    proc = subprocess.run(["bash", "-c", f'"$PY" -c "{code}" 8>"$OUT" 9>/dev/null'], env=env,
                          cwd=REPO, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    return (tmp_path / "answer").read_text().split()


@pytest.mark.parametrize("line, offered, not_offered", [
    # main() dispatches on the first word itself: completion needs the subcommands too
    ("demon-sflow ", {"decode", "replay", "--http-listen", "--sflow-listen"}, set()),
    ("demon-sflow re", {"replay"}, {"decode"}),
    ("demon-sflow decode --", {"--port", "--log-level"}, {"--http-listen", "--to"}),
    ("demon-sflow replay --s", {"--speed"}, {"--sflow-listen"}),
    ("demon-sflow --http-l", {"--http-listen"}, set())])
def test_demon_sflow_completes_its_subcommands_and_their_options(
        tmp_path: Path, line: str, offered: set[str], not_offered: set[str]) -> None:
    answer = set(complete(tmp_path, line, "sflow.cli", "demon-sflow"))
    assert offered <= answer, answer
    assert not (not_offered & answer), answer


def test_demon_sflow_completion_parser_parses_like_main() -> None:
    """The completion parser holds the very parsers main() uses (nothing drifts)."""
    from sflow.cli import completion_parser

    args = completion_parser().parse_args(["replay", "x.pcap", "--speed", "2"])
    assert (args.command, args.file, args.speed, args.to) == ("replay", "x.pcap", 2.0,
                                                             "127.0.0.1:6343")
    assert completion_parser().parse_args(["decode", "y.pcap"]).port == 6343


def test_notify_ready_sends_ready_to_notify_socket(tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "notify"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(str(path))
        monkeypatch.setenv("NOTIFY_SOCKET", str(path))
        assert cliopts.notify_ready("serving on 127.0.0.1:1")
        message = sock.recv(4096).decode()
    fields = dict(line.split("=", 1) for line in message.splitlines())
    assert fields["READY"] == "1" and fields["MAINPID"] == str(os.getpid())
    assert fields["STATUS"] == "serving on 127.0.0.1:1"


def test_notify_without_systemd_is_a_no_op(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    assert cliopts.notify_ready() is False


def test_notify_abstract_socket(monkeypatch: pytest.MonkeyPatch) -> None:
    name = f"pytapdemon-test-{os.getpid()}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind("\0" + name)
        monkeypatch.setenv("NOTIFY_SOCKET", "@" + name)
        assert cliopts.notify_stopping()
        assert sock.recv(100) == b"STOPPING=1"


def test_ready_only_once_the_port_listens(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "notify"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock, \
            socket.socket(socket.AF_INET, socket.SOCK_STREAM) as server:
        sock.bind(str(path))
        sock.settimeout(0.3)
        monkeypatch.setenv("NOTIFY_SOCKET", str(path))
        server.bind(("127.0.0.1", 0))
        port = server.getsockname()[1]
        cliopts.notify_ready_when_listening(port, "of up", timeout=20)
        with pytest.raises(socket.timeout):
            sock.recv(4096)  # bound, not listening: not ready
        server.listen()
        sock.settimeout(10)
        assert b"READY=1" in sock.recv(4096)


class FakeTerminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_progress_silent_off_a_terminal(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("DEMON_NO_PROGRESS", raising=False)
    items = [1, 2, 3]
    stream = io.StringIO()
    assert cliopts.progress(items, total=3, desc="x", stream=stream) is items
    assert list(cliopts.progress(iter(items), stream=stream)) == items
    assert stream.getvalue() == ""


def test_progress_bar_on_a_terminal(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("DEMON_NO_PROGRESS", raising=False)
    stream = FakeTerminal()
    assert list(cliopts.progress(range(50), total=50, desc="replay", stream=stream)) == \
        list(range(50))
    assert "replay" in stream.getvalue()
    monkeypatch.setenv("DEMON_NO_PROGRESS", "1")
    stream = FakeTerminal()
    list(cliopts.progress(range(5), stream=stream))
    assert stream.getvalue() == ""


def test_missing_module_names_it() -> None:
    assert cliopts.missing_module("json") is None
    assert "no_such_module_here" in (cliopts.missing_module("no_such_module_here") or "")


def test_threads_left_over_are_daemons() -> None:
    assert all(t.daemon for t in threading.enumerate() if t.name == "sd-notify")


@pytest.mark.parametrize("name", sorted(set(COMMANDS) | {"demon-sflow"}))
def test_every_main_reads_the_config_file(name: str, tmp_path: Path,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    """Each command's main parses through cliopts: a bad file stops it with status 2."""
    from sflow.configfile import SECTIONS

    cfg = tmp_path / "bad.yaml"
    cfg.write_text(f"{SECTIONS[name]}:\n  no-such-option: 1\n")
    module = importlib.import_module(COMMANDS.get(name, ("sflow.cli", ""))[0])
    with pytest.raises(SystemExit) as exc:
        module.main(["--config", str(cfg)])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert f"{name}: {cfg}: {SECTIONS[name]}.no-such-option: unknown option" in err
