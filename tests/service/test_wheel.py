"""The package on its own: the README's first try, run as written from an unpacked
sdist into a fresh venv without --system-site-packages (so no mininet), then every
command's --help/--version, a backtest and the topology tools from the installed
files only. Needs PyPI (or pip's cache) for the dependencies: slow."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

from tests.conftest import REPO

pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(not (REPO / "demon" / "__init__.py").is_file(),
                                 reason="builds the distribution: needs the source tree")]

COMMANDS = ("demon-watch", "demon-sflow", "demon-lab", "demon-tap", "demon-controller",
            "demon-netcheck", "demon-capture", "demon-traffic")


def first_try_command() -> str:
    """The README's first-try line (in a sh block, on the first screen)."""
    text = (REPO / "README.md").read_text()
    first_screen = text.split("\n## ", 1)[0]
    lines = [line for block in re.findall(r"```sh\n(.*?)```", first_screen, re.S)
             for line in block.splitlines() if "demon-watch --demo" in line]
    assert len(lines) == 1, "the README's first screen must hold one first-try command"
    return lines[0]


def clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if k not in ("PYTHONPATH", "VIRTUAL_ENV", "PYTHONHOME", "NOTIFY_SOCKET")}
    env.update(extra)
    return env


def run(cmd: list[str] | str, cwd: Path, timeout: float = 120, **kw: object) -> \
        subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=timeout,
                          env=clean_env(), shell=isinstance(cmd, str), **kw)  # type: ignore[call-overload]


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, subprocess.CompletedProcess[str]]:
    """The README's first try, from an unpacked sdist, into a venv of our own."""
    work = tmp_path_factory.mktemp("wheel")
    dist = work / "dist"
    built = subprocess.run(
        [sys.executable, "-c", "import sys, setuptools.build_meta as b; "
                               "print(b.build_sdist(sys.argv[1]))", str(dist)],
        cwd=REPO, capture_output=True, text=True, timeout=300)
    assert built.returncode == 0, built.stderr[-3000:]
    sdist = dist / built.stdout.strip().splitlines()[-1]
    with tarfile.open(sdist) as tar:
        tar.extractall(work, filter="data") if sys.version_info >= (3, 12) else tar.extractall(work)
    src = work / sdist.name.removesuffix(".tar.gz")
    venv = work / "venv"
    command = first_try_command().replace("/tmp/demon-try", str(venv))
    command = command.replace("python3 -m venv", f"{getattr(sys, '_base_executable', 'python3')} -m venv")
    result = run(command, src, timeout=900)
    assert result.returncode == 0, (command, result.stderr[-3000:])
    return venv, result


def test_first_try_from_the_readme(installed: tuple[Path, subprocess.CompletedProcess[str]]) -> None:
    _, result = installed
    out = result.stdout
    assert "3 tap(s):" in out and "why:" in out and "policy cap reached" in out
    assert out.count(" tapped ") == 3
    assert "elephant_tcp.1: elephant_tcp tapped 10.0.0.5,10.0.0.2,51794,5203 on event" in out


def test_the_venv_has_no_mininet(installed: tuple[Path, subprocess.CompletedProcess[str]],
                                 tmp_path: Path) -> None:
    venv, _ = installed
    probe = run([str(venv / "bin" / "python"), "-c", "import mininet"], tmp_path)
    assert probe.returncode != 0 and "No module named 'mininet'" in probe.stderr


@pytest.mark.parametrize("command", COMMANDS)
def test_every_command_help_and_version(installed: tuple[Path, subprocess.CompletedProcess[str]],
                                        tmp_path: Path, command: str) -> None:
    venv, _ = installed
    helped = run([str(venv / "bin" / command), "--help"], tmp_path)
    assert helped.returncode == 0, helped.stderr
    assert "exit statuses:" in helped.stdout and "--config" in helped.stdout
    version = run([str(venv / "bin" / command), "--version"], tmp_path)
    assert version.returncode == 0
    import demon

    assert version.stdout.strip() == f"{command} {demon.__version__}"


def test_commands_that_need_mininet_say_so_in_one_line(
        installed: tuple[Path, subprocess.CompletedProcess[str]], tmp_path: Path) -> None:
    venv, _ = installed
    for cmd in ([str(venv / "bin" / "demon-lab")],
                [str(venv / "bin" / "python"), "-m", "topo.seed"],
                [str(venv / "bin" / "python"), "-m", "topo.patchpanel"]):
        result = run(cmd, tmp_path)
        assert result.returncode == 2, (cmd, result.stderr)
        assert len(result.stderr.strip().splitlines()) == 1 and "needs Mininet" in result.stderr


def test_backtest_and_topology_tools_from_the_installed_files(
        installed: tuple[Path, subprocess.CompletedProcess[str]], tmp_path: Path) -> None:
    venv, _ = installed
    bin_ = venv / "bin"
    share = dict(line.split(None, 1) for line in
                 run([str(bin_ / "python"), "-m", "demon.share"], tmp_path).stdout.splitlines())
    assert all(str(venv) in path for path in share.values())  # nothing from the checkout
    assert run([str(bin_ / "demon-watch"), "--init-policies", "pol"], tmp_path).returncode == 0
    replay = run([str(bin_ / "demon-watch"), "--policies", "pol", "--replay",
                  str(Path(share["recordings"].strip()) / "lab-over-cap.pcap")], tmp_path)
    assert replay.returncode == 0, replay.stderr
    assert "of raw sFlow" in replay.stdout and "3 tap(s):" in replay.stdout
    fabric = run([str(bin_ / "python"), "-m", "topo.fabricgen", "-o", "fabric.json"], tmp_path)
    assert fabric.returncode == 0 and (tmp_path / "fabric.json").is_file()
    drawn = run([str(bin_ / "python"), "-m", "topo.render", "x.dot", "--fabric", "fabric.json",
                 "--mirror", "1:1:6", "--title", 'a "quoted" title'], tmp_path)
    assert drawn.returncode == 0, drawn.stderr
    assert "dpkt" not in run([str(bin_ / "python"), "-c", "import dpkt"], tmp_path).stderr
    assert run([str(bin_ / "demon-traffic"), "ping", "--help"], tmp_path).returncode == 0


def test_license_and_docs_in_the_distribution(
        installed: tuple[Path, subprocess.CompletedProcess[str]]) -> None:
    venv, _ = installed
    licenses = list(venv.glob("lib/python*/site-packages/pytapdemon-*.dist-info/licenses/LICENSE"))
    assert licenses and "Apache License" in licenses[0].read_text()
    share = next(venv.glob("lib/python*/site-packages/demon/share"))
    for part in ("docs/fabric.md", "contrib/config.example.yaml",
                 "contrib/systemd/pytapdemon-watch.service", "policies/_global.yaml"):
        assert (share / part).is_file(), part
