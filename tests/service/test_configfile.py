"""``--config FILE``: sections per command, keys from each parser, CLI flags win."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from demon.capture.agent import build_parser as capture_parser
from demon.cli import build_parser as watch_parser
from demon.cli import main as watch_main
from demon.controller.launcher import build_parser as controller_parser
from sflow import cliopts
from sflow.configfile import ConfigError, load_section

REPO = Path(__file__).resolve().parents[2]
EXAMPLE = REPO / "contrib" / "config.example.yaml"


def write(tmp_path: Path, text: str, name: str = "demon.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def errors_of(path: Path, parser: argparse.ArgumentParser) -> list[str]:
    with pytest.raises(ConfigError) as exc:
        load_section(path, parser)
    return exc.value.errors


def test_file_values_stand_in_for_defaults(tmp_path: Path) -> None:
    cfg = write(tmp_path, """
watch:
  policies: /etc/pytapdemon/policies
  rpc-timeout: 2.5
  on-exit: remove
  dry_run: true
""")
    args = cliopts.parse_args(watch_parser(), ["--config", str(cfg)], logs=False)
    assert args.policies == "/etc/pytapdemon/policies"  # required on the command line, set here
    assert args.rpc_timeout == 2.5 and args.on_exit == "remove" and args.dry_run is True
    assert args.sflow_rt is None  # untouched options keep their defaults


def test_command_line_overrides_the_file(tmp_path: Path) -> None:
    cfg = write(tmp_path, "common:\n  log-level: debug\nwatch:\n  policies: a\n  rpc-timeout: 2\n"
                          "  log-level: warning\n")
    args = cliopts.parse_args(watch_parser(), ["--config", str(cfg), "--policies", "b",
                                               "--rpc-timeout", "9"], logs=False)
    assert (args.policies, args.rpc_timeout) == ("b", 9.0)
    assert args.log_level == "warning"  # the command's section beats common
    args = cliopts.parse_args(watch_parser(), ["--log-level", "error", "--config", str(cfg)],
                              logs=False)
    assert args.log_level == "error"


def test_exclusive_options_command_line_replaces_the_files_choice(tmp_path: Path) -> None:
    cfg = write(tmp_path, "capture:\n  read: in.pcap\n  out: /srv/captures\n  taps: t.json\n")
    args = cliopts.parse_args(capture_parser(), ["--config", str(cfg)], logs=False)
    assert (str(args.read), args.interface, str(args.out)) == ("in.pcap", None, "/srv/captures")
    args = cliopts.parse_args(capture_parser(), ["--config", str(cfg), "-i", "eth1",
                                                 "--store", "s.sqlite"], logs=False)
    assert (args.read, args.interface, args.taps, str(args.store)) == \
        (None, "eth1", None, "s.sqlite")
    assert isinstance(args.out, Path)  # converted by the option's own type


def test_appended_options_from_the_command_line_replace_the_files(tmp_path: Path) -> None:
    parser = argparse.ArgumentParser(prog="demon-netcheck")
    parser.add_argument("--switch", action="append", type=int)
    cliopts.add_common(parser, exits={0: "ok"})
    cfg = write(tmp_path, "netcheck:\n  switch: [1, 2]\n")
    assert cliopts.parse_args(parser, ["--config", str(cfg)], logs=False).switch == [1, 2]
    assert cliopts.parse_args(parser, ["--config", str(cfg), "--switch", "3"],
                              logs=False).switch == [3]


def test_an_option_added_to_a_parser_is_accepted_at_once(tmp_path: Path) -> None:
    parser = controller_parser()
    parser.add_argument("--added-later", default="127.0.0.1:8735")
    cfg = write(tmp_path, "controller:\n  fabric: f.json\n  added-later: 0.0.0.0:9100\n")
    args = cliopts.parse_args(parser, ["--config", str(cfg)], logs=False)
    assert (args.fabric, args.added_later) == ("f.json", "0.0.0.0:9100")
    assert "controller.added-later: unknown option" in \
        errors_of(cfg, controller_parser())[0]


def test_errors_name_the_file_and_field_one_line_each(tmp_path: Path) -> None:
    cfg = write(tmp_path, """
watch:
  polices: x
  sflow-port: abc
  on-exit: nope
  check: "yes"
""")
    errors = errors_of(cfg, watch_parser())
    assert len(errors) == 4
    assert all(e.startswith(f"{cfg}: watch.") and "\n" not in e for e in errors)
    text = "\n".join(errors)
    assert "watch.polices: unknown option (demon-watch has no --polices" in text
    assert "watch.sflow-port: Input should be a valid integer, got 'abc'" in text
    assert "watch.on-exit: must be one of leave, remove, got 'nope'" in text
    assert "watch.check: Input should be a valid boolean" in text


@pytest.mark.parametrize("text, expected", [
    ("wach:\n  policies: x\n", "unknown section 'wach'"),
    ("watch: [1, 2]\n", "watch: must be a mapping"),
    ("- 1\n", "must be a mapping of sections"),
    ("watch:\n  policies: [unclosed\n", "line 3: not valid YAML"),
    ("common:\n  policies: x\n", "common.policies: unknown option"),
    ("capture:\n  read: a.pcap\n  interface: eth0\n", "capture.read: not allowed with "
                                                        "capture.interface"),
    ("capture:\n  rotate-bytes: 1.5\n", "capture.rotate-bytes: Input should be a valid integer"),
    ("controller:\n  of-port: true\n", "controller.of-port: Input should be a valid integer"),
])
def test_bad_files(tmp_path: Path, text: str, expected: str) -> None:
    cfg = write(tmp_path, text)
    name = text.split(":")[0].strip("- \n")
    parser = {"capture": capture_parser, "controller": controller_parser}.get(name, watch_parser)()
    errors = errors_of(cfg, parser)
    assert any(expected in e and e.startswith(str(cfg)) for e in errors), errors


def test_unreadable_file(tmp_path: Path) -> None:
    errors = errors_of(tmp_path / "missing.yaml", watch_parser())
    assert errors == [f"{tmp_path / 'missing.yaml'}: cannot read: No such file or directory"]


def test_other_commands_sections_are_left_alone(tmp_path: Path) -> None:
    cfg = write(tmp_path, "watch:\n  policies: p\ncontroller:\n  no-such-option: 1\n")
    assert load_section(cfg, watch_parser()).values["policies"] == "p"


def test_bad_file_exits_2_with_one_line_per_error(tmp_path: Path,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    cfg = write(tmp_path, "watch:\n  policies: 3\n  rpc-timeout: soon\n  extra: 1\n")
    with pytest.raises(SystemExit) as exc:
        watch_main(["--config", str(cfg)])
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 2 and all(line.startswith(f"demon-watch: {cfg}: watch.") for line in err)


def test_check_runs_from_the_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cfg = write(tmp_path, f"watch:\n  policies: {REPO / 'policies'}\n  check: true\n")
    assert watch_main(["--config", str(cfg)]) == 0
    assert "OK" in capsys.readouterr().out


def test_the_shipped_example_is_valid_for_every_command_it_configures() -> None:
    import yaml

    from demon.controller.netcheck import build_parser as netcheck_parser
    from demon.tapctl import build_parser as tap_parser
    from tests.service.test_cliopts import serve_parser

    sections = yaml.safe_load(EXAMPLE.read_text())
    builders = {"watch": watch_parser, "controller": controller_parser,
                "capture": capture_parser, "sflow": serve_parser, "tap": tap_parser,
                "netcheck": netcheck_parser}
    assert {"watch", "sflow", "controller", "capture"} <= set(sections)
    for name in sections:
        if name == "common":
            continue
        section = load_section(EXAMPLE, builders[name]())
        assert section.values, name
