"""``demon-watch`` and ``demon-tap`` command lines: --check, exit statuses with
actionable one-line errors, and the operator commands over a real state file."""

from __future__ import annotations

import io
import json
import signal
import socket
import threading
import time
from pathlib import Path

import pytest
import responses

from demon import cli, tapctl
from demon.model import HistoryEntry, State
from demon.store import Store
from tests.conftest import REPO
from tests.demon.fakes import TOKEN, FakeController, ScriptedEngine
from tests.demon.test_store_sqlite import make_tap


def run(main, argv: list[str]) -> tuple[int, str, str]:
    if main is cli.main and "--listen" not in argv:
        argv = [*argv, "--listen", "127.0.0.1:0"]  # never the fixed default port in tests
    out, err = io.StringIO(), io.StringIO()
    status = main(argv, stdout=out, stderr=err)
    return status, out.getvalue(), err.getvalue()


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture
def token_file(tmp_path: Path) -> Path:
    path = tmp_path / "rpc.token"
    path.write_text(TOKEN + "\n")
    path.chmod(0o600)
    return path


# -- --check -------------------------------------------------------------------------


@pytest.mark.parametrize("directory", ["policies", "policies/lab"])
def test_check_passes_on_the_shipped_policies(directory: str) -> None:
    status, out, err = run(cli.main, ["--policies", str(REPO / directory), "--check"])
    assert status == 0, err
    assert "OK" in out and err == ""


def test_check_names_file_policy_and_field_for_every_error(tmp_path: Path) -> None:
    (tmp_path / "a.yaml").write_text(
        "name: big\nkind: elephant\nkeys: ipsource,ipdestination\nthreshold: lots\n")
    (tmp_path / "b.yaml").write_text(
        "name: top\nkind: top_talkers\nkeys: ipsource\ncolour: red\n")
    status, out, err = run(cli.main, ["--policies", str(tmp_path), "--check"])
    assert status == cli.EXIT_CONFIG
    lines = err.strip().splitlines()
    threshold = [line for line in lines if "a.yaml" in line]
    colour = [line for line in lines if "b.yaml" in line]
    assert threshold and "'big'" in threshold[0] and "threshold" in threshold[0]
    assert colour and "'top'" in colour[0] and "colour" in colour[0]
    assert out == ""


# -- start-up failures -----------------------------------------------------------------


def test_missing_token_file_is_a_config_error(tmp_path: Path) -> None:
    status, _, err = run(cli.main, ["--policies", str(REPO / "policies"), "--token-file",
                                    str(tmp_path / "nope"), "--sflow-rt", "http://x:1"])
    assert status == cli.EXIT_CONFIG
    assert "nope" in err and "does not exist" in err and len(err.strip().splitlines()) == 1


def test_unreachable_engine_exits_3(tmp_path: Path, token_file: Path) -> None:
    url = f"http://127.0.0.1:{closed_port()}"
    status, _, err = run(cli.main, ["--policies", str(REPO / "policies"), "--sflow-rt", url,
                                    "--token-file", str(token_file), "--state",
                                    str(tmp_path / "s.sqlite"), "--log-level", "error"])
    assert status == cli.EXIT_ENGINE
    assert f"cannot reach the analytics engine at {url}" in err


def test_unreachable_controller_exits_4_with_a_hint(tmp_path: Path, token_file: Path) -> None:
    address = f"tcp:127.0.0.1:{closed_port()}"
    with responses.RequestsMock(assert_all_requests_are_fired=False) as mock:
        engine = ScriptedEngine().register(mock)
        status, _, err = run(cli.main, ["--policies", str(REPO / "policies"), "--sflow-rt",
                                        engine.base_url, "--controller", address,
                                        "--token-file", str(token_file), "--state",
                                        str(tmp_path / "s.sqlite"), "--log-level", "error"])
    assert status == cli.EXIT_CONTROLLER
    assert f"cannot reach the controller at {address}" in err
    assert "is demon-controller running?" in err


def test_wrong_token_exits_4(tmp_path: Path) -> None:
    wrong = tmp_path / "wrong.token"
    wrong.write_text("not-the-token-at-all\n")
    wrong.chmod(0o600)
    with FakeController() as controller, \
            responses.RequestsMock(assert_all_requests_are_fired=False) as mock:
        engine = ScriptedEngine().register(mock)
        status, _, err = run(cli.main, ["--policies", str(REPO / "policies"), "--sflow-rt",
                                        engine.base_url, "--controller", controller.address,
                                        "--token-file", str(wrong), "--state",
                                        str(tmp_path / "s.sqlite"), "--log-level", "error"])
    assert status == cli.EXIT_CONTROLLER
    assert "--token-file" in err


def test_unusable_state_file_exits_5(tmp_path: Path, token_file: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    status, _, err = run(cli.main, ["--policies", str(REPO / "policies"), "--sflow-rt",
                                    "http://127.0.0.1:1", "--token-file", str(token_file),
                                    "--state", str(blocker / "state.sqlite")])
    assert status == cli.EXIT_STATE
    assert "state file" in err and len(err.strip().splitlines()) == 1


def test_bad_policy_set_refuses_to_start(tmp_path: Path, token_file: Path) -> None:
    (tmp_path / "p").mkdir()
    (tmp_path / "p" / "x.yaml").write_text("name: x\nkind: nonsense\n")
    status, _, err = run(cli.main, ["--policies", str(tmp_path / "p"), "--sflow-rt",
                                    "http://127.0.0.1:1", "--token-file", str(token_file)])
    assert status == cli.EXIT_CONFIG
    assert "x.yaml" in err


def test_watch_runs_until_stopped_and_dry_run_sends_no_writes(tmp_path: Path,
                                                              token_file: Path) -> None:
    """--dry-run end to end: decides (the decision is logged) but installs nothing."""
    pol = tmp_path / "p"
    pol.mkdir()
    (pol / "e.yaml").write_text(
        "name: e\nkind: elephant\nkeys: ipsource,ipdestination,ipprotocol\nthreshold: 1Mbps\n")
    with FakeController() as controller, \
            responses.RequestsMock(assert_all_requests_are_fired=False) as mock:
        engine = ScriptedEngine().register(mock)
        engine.fire("demon_e", "10.0.0.1,10.0.0.2,6")
        err = io.StringIO()
        argv = ["--policies", str(pol), "--sflow-rt", engine.base_url, "--controller",
                controller.address, "--token-file", str(token_file), "--dry-run",
                "--listen", "127.0.0.1:0", "--log-format", "json"]
        # Handlers are installed by the main thread (main() restores them on return):
        # run there, stop with a signal from a timer.
        stopper = threading.Timer(2.0, lambda: signal.raise_signal(signal.SIGTERM))
        stopper.start()
        result = [cli.main(argv, stdout=io.StringIO(), stderr=err)]
        stopper.join()
        assert result == [0]
        assert [m for m, _ in controller.calls if m in FakeController.WRITES] == []
        lines = [json.loads(line) for line in err.getvalue().splitlines() if line.startswith("{")]
        assert any(line.get("kind") == "created" for line in lines), err.getvalue()[-2000:]
        assert any("dry run: would install mirror" in line["msg"] for line in lines)
        assert "demon_e" not in engine.flows  # definitions removed on a clean exit


def test_watch_starts_the_embedded_engine_by_default(tmp_path: Path, token_file: Path) -> None:
    err = io.StringIO()
    # Python's default handler, or SIG_IGN when the test run itself was started in the
    # background by a non-interactive shell (then SIGINT is ignored from the start)
    before = signal.getsignal(signal.SIGINT)
    with FakeController() as controller:
        stopper = threading.Timer(1.5, lambda: signal.raise_signal(signal.SIGINT))
        stopper.start()
        status = cli.main(["--policies", str(REPO / "policies"), "--sflow-listen",
                           "127.0.0.1:0", "--listen", "127.0.0.1:0", "--controller", controller.address, "--token-file", str(token_file),
                           "--state", str(tmp_path / "s.sqlite")], stdout=io.StringIO(),
                          stderr=err)
        stopper.join()
    assert status == 0, err.getvalue()
    log = err.getvalue()
    assert "embedded engine: sFlow on 127.0.0.1:" in log and "API at http://127.0.0.1:" in log
    assert "embedded engine: sFlow on 127.0.0.1:0," not in log  # the bound port is shown
    assert "API at http://127.0.0.1:" in log and "/api/v1/ (loopback" in log
    assert "stopping: SIGINT" in log
    assert signal.getsignal(signal.SIGINT) is before  # restored


# -- demon-tap -------------------------------------------------------------------------


@pytest.fixture
def state_file(tmp_path: Path) -> Path:
    path = tmp_path / "state.sqlite"
    with Store(path) as store:
        live = make_tap("elephant.1", "active", created_at=1_764_000_000.0)
        gone = make_tap("elephant.2", "removed", created_at=1_764_000_100.0,
                        ended_at=1_764_000_200.0, packets=42, bytes=6300)
        store.save(State(taps={live.tap_id: live, gone.tap_id: gone}), [
            HistoryEntry("elephant.2", 1_764_000_100.0, "created",
                         {"cause": "event 7: demon_elephant 4Mbps > 1Mbps", "event_id": 7}),
            HistoryEntry("elephant.2", 1_764_000_200.0, "removed",
                         {"cause": "released by alice"}),
        ])
    return path


def test_tap_list_shows_only_live_taps(state_file: Path) -> None:
    status, out, _ = run(tapctl.main, ["--state", str(state_file), "list"])
    assert status == 0
    lines = out.strip().splitlines()
    assert lines[0].split()[:3] == ["TAP", "POLICY", "FLOW"]
    assert len(lines) == 2 and lines[1].startswith("elephant.1") and "1/1" in lines[1]
    status, out, _ = run(tapctl.main, ["--state", str(state_file), "--json", "list"])
    assert [t["tap_id"] for t in json.loads(out)] == ["elephant.1"]


def test_tap_show_tells_the_whole_story(state_file: Path) -> None:
    status, out, _ = run(tapctl.main, ["--state", str(state_file), "show", "elephant.2"])
    assert status == 0
    assert "42 packets, 6300 bytes" in out
    assert "event 7: demon_elephant" in out and "released by alice" in out
    status, out, _ = run(tapctl.main, ["--state", str(state_file), "--json", "show",
                                       "elephant.2"])
    story = json.loads(out)
    assert [e["kind"] for e in story["history"]] == ["created", "removed"]
    status, _, err = run(tapctl.main, ["--state", str(state_file), "show", "nope.1"])
    assert status == tapctl.EXIT_REFUSED and "nope.1" in err


def test_tap_history_since(state_file: Path) -> None:
    status, out, _ = run(tapctl.main, ["--state", str(state_file), "--json", "history",
                                       "--since", "2025-11-24T16:02:00"])
    assert status == 0
    assert [json.loads(line)["kind"] for line in out.splitlines()] == ["removed"]
    status, _, err = run(tapctl.main, ["--state", str(state_file), "history", "--since",
                                       "yesterday-ish"])
    assert status == tapctl.EXIT_USAGE and "--since" in err


def test_tap_release_without_a_daemon_says_so_and_leaves_nothing_queued(state_file: Path) -> None:
    """Issue 8: a request for a daemon that is down must not wait in the file for a
    daemon started much later."""
    status, _, err = run(tapctl.main, ["--state", str(state_file), "release", "elephant.1",
                                       "--wait", "0.3"])
    assert status == tapctl.EXIT_NO_ANSWER
    assert "is demon-watch running" in err and "withdrawn: nothing will be done" in err
    assert len(err.strip().splitlines()) == 1
    with Store(state_file) as store:
        assert store.pending_requests(now=time.time() - 3600) == []
        [request] = store.requests()
        assert request.code == "cancelled" and request.done_at is not None


def test_a_queued_request_expires_and_can_be_listed_and_cancelled(state_file: Path) -> None:
    status, out, _ = run(tapctl.main, ["--state", str(state_file), "pause", "elephant",
                                       "--wait", "0"])
    assert status == 0 and "queued as request 1 (expires in 60s" in out
    status, out, _ = run(tapctl.main, ["--state", str(state_file), "release", "elephant.1",
                                       "--wait", "0"])
    status, out, _ = run(tapctl.main, ["--state", str(state_file), "requests"])
    lines = out.strip().splitlines()
    assert lines[0].split()[:4] == ["ID", "KIND", "TARGET", "WHO"]
    assert [line.split()[:3] for line in lines[1:]] == [["1", "pause", "elephant"],
                                                         ["2", "release", "elephant.1"]]
    status, out, _ = run(tapctl.main, ["--state", str(state_file), "requests", "--cancel", "1"])
    assert status == 0 and "request 1: cancelled" in out
    status, _, err = run(tapctl.main, ["--state", str(state_file), "requests", "--cancel", "1"])
    assert status == tapctl.EXIT_REFUSED and "not pending" in err
    status, out, _ = run(tapctl.main, ["--state", str(state_file), "--json", "requests"])
    assert [r["id"] for r in json.loads(out)] == [2]
    with Store(state_file) as store:  # a minute later, nobody has taken it: it is gone
        assert store.pending_requests(now=time.time() + 61) == []
        assert store.expire_requests(now=time.time() + 61) == 1
        assert store.request(2).code == "expired"


def test_tap_never_creates_a_state_file(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere" / "state.sqlite"
    for argv in (["release", "x.1", "--wait", "0"], ["pause", "p"], ["requests"],
                 ["tap", "p", "10.0.0.1,10.0.0.2,6,1,2"], ["list"]):
        status, _, err = run(tapctl.main, ["--state", str(missing), *argv])
        assert status == tapctl.EXIT_STATE and "does not exist" in err, argv
    assert not missing.parent.exists()


def test_tap_pause_gets_the_daemons_answer(state_file: Path) -> None:
    def daemon() -> None:  # what the runtime does each second, by hand
        with Store(state_file) as store:
            deadline = time.monotonic() + 5
            while time.monotonic() < deadline:
                pending = store.pending_requests()
                if pending:
                    store.load()
                    store.save(State(paused=frozenset({"elephant"})),
                               answered=[(pending[0].id, "paused")])
                    return
                time.sleep(0.05)

    helper = threading.Thread(target=daemon)
    helper.start()
    status, out, _ = run(tapctl.main, ["--state", str(state_file), "pause", "elephant"])
    helper.join()
    assert status == 0 and "paused" in out


def test_tap_on_a_missing_state_file(tmp_path: Path) -> None:
    status, _, err = run(tapctl.main, ["--state", str(tmp_path / "none.sqlite"), "list"])
    assert status == tapctl.EXIT_STATE and "does not exist" in err


def test_watch_serves_its_api_and_the_engines_metrics_on_one_page(tmp_path: Path,
                                                                   token_file: Path) -> None:
    import re
    import urllib.request

    err = io.StringIO()
    seen: dict[str, str] = {}

    def probe() -> None:
        try:
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline:
                found = re.search(r"API at (http://127\.0\.0\.1:\d+)/api/v1/", err.getvalue())
                if found and "started:" in err.getvalue():
                    url = found.group(1)
                    with urllib.request.urlopen(f"{url}/metrics", timeout=5) as resp:
                        seen["metrics"] = resp.read().decode()
                    with urllib.request.urlopen(f"{url}/api/v1/status", timeout=5) as resp:
                        seen["status"] = resp.read().decode()
                    return
                time.sleep(0.05)
        finally:
            signal.raise_signal(signal.SIGINT)

    with FakeController() as controller:
        prober = threading.Thread(target=probe)
        prober.start()
        status = cli.main(["--policies", str(REPO / "policies"), "--sflow-listen", "127.0.0.1:0",
                           "--listen", "127.0.0.1:0", "--controller", controller.address,
                           "--token-file", str(token_file), "--state",
                           str(tmp_path / "s.sqlite")], stdout=io.StringIO(), stderr=err)
        prober.join()
    assert status == 0, err.getvalue()
    assert "pytapdemon_daemon_controller_up 1.0" in seen["metrics"]
    assert "pytapdemon_engine_" in seen["metrics"]  # the embedded engine's own registry
    body = json.loads(seen["status"])
    assert body["engine"]["embedded"] is True and body["engine"]["sflow_listen"].startswith(
        "127.0.0.1:")


def test_an_engine_that_asks_writes_for_a_token_gets_the_daemons(tmp_path: Path) -> None:
    """The embedded engine bound beyond loopback takes writes only with a token:
    demon-watch makes one for itself and its runtime sends it with every write."""
    from demon.rpc.client import RpcClient
    from demon.runtime import Runtime, RuntimeOptions, StartupError
    from sflow.auth import Tokens
    from sflow.embedded import EmbeddedEngine

    secret = "engine-secret-0123456789abcdef"
    engine = EmbeddedEngine(sflow_addr=("127.0.0.1", 0), http_addr=("127.0.0.1", 0),
                            tokens=Tokens({"demon-watch": secret})).start()
    try:
        with FakeController() as controller:
            for token, ok in ((None, False), (secret, True)):
                store = Store(tmp_path / f"{ok}.sqlite")
                runtime = Runtime(REPO / "policies", engine.url,
                                  RpcClient(controller.address, token=TOKEN), store,
                                  RuntimeOptions(), engine_token=token)
                try:
                    runtime.start()
                except StartupError as exc:
                    assert not ok and exc.status == cli.EXIT_ENGINE and "refused" in str(exc)
                else:
                    assert ok and "demon_elephant_tcp" in engine.engine.flows()
                    runtime.request_stop("test over")
                    runtime.run()
                store.close()
    finally:
        engine.stop()
