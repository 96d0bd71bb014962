"""Notifications: a command and a webhook get every transition once, in order,
with retries and a record of failures, and never hold up the decision loop."""

from __future__ import annotations

import http.server
import json
import sys
import threading
import time
from pathlib import Path
from typing import Any, Callable, Iterator

import pytest
import responses

from demon.notify import SinkConfig
from tests.demon.fakes import ELEPHANT, FLOW_A, FLOW_B, FakeController, Harness, ScriptedEngine, \
    wait_for

pytestmark = pytest.mark.replay


class Receiver:
    """A webhook receiver on 127.0.0.1:0: keeps every body; ``fail`` answers 500."""

    def __init__(self) -> None:
        self.bodies: list[dict[str, Any]] = []
        self.fail = 0
        self.delay = 0.0
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802
                body = self.rfile.read(int(self.headers["Content-Length"]))
                time.sleep(outer.delay)
                if outer.fail > 0:
                    outer.fail -= 1
                    self.send_response(500)
                    self.end_headers()
                    return
                outer.bodies.append(json.loads(body))
                self.send_response(204)
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def receiver(mock: responses.RequestsMock) -> Iterator[Receiver]:
    mock.add_passthru("http://127.0.0.1")
    r = Receiver()
    yield r
    r.close()


def command(tmp_path: Path, name: str = "notified.jsonl", *, fail_first: int = 0,
            sleep: float = 0.0) -> tuple[SinkConfig, Path]:
    """A notify command that appends ``KIND TAP_ID <stdin>`` to a file."""
    out = tmp_path / name
    script = tmp_path / f"{name}.py"
    script.write_text(f"""\
import json, os, sys, time
time.sleep({sleep})
counter = {str(out)!r} + ".tries"
tries = int(open(counter).read()) if os.path.exists(counter) else 0
open(counter, "w").write(str(tries + 1))
if tries < {fail_first}:
    sys.exit(7)
record = json.load(sys.stdin)
assert record["id"] == int(os.environ["DEMON_TRANSITION_ID"])
with open({str(out)!r}, "a") as fh:
    fh.write(json.dumps({{"argv": sys.argv[1:], "record": record}}) + "\\n")
""")
    return SinkConfig("command", f"{sys.executable} {script}", timeout=10, retries=3,
                      backoff=0.05), out


def lines(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def transition_ids(h: Harness) -> list[int]:
    return [t.id for t in h.runtime.view.transitions_after(0, 10_000)]


def in_order(got: list[int], h: Harness, start: int, want: list[int]) -> bool:
    """``got`` is every transition after ``start``, in order, once: at least ``want``
    (more may have come since: the scripted flows keep the runtime busy)."""
    every = [i for i in transition_ids(h) if i > start]
    return len(got) >= len(want) and got == every[:len(got)]


def drive(h: Harness) -> None:
    """Two taps, one released by hand: a handful of transitions."""
    h.engine.set_flows("demon_elephant", [(FLOW_A, 400_000.0, "101")])
    h.engine.fire("demon_elephant", FLOW_A)
    h.engine.fire("demon_elephant", FLOW_B, data_source="102")
    wait_for(lambda: len(h.controller.mirrors) == 2, what="two taps")
    h.runtime.submit(__import__("demon.model", fromlist=["OperatorRelease"]).OperatorRelease(
        "elephant.2", who="alice"))
    wait_for(lambda: len(h.controller.mirrors) == 1, what="release")


def test_command_and_webhook_each_get_every_transition_once_in_order(
        tmp_path: Path, make: Callable[..., Harness], receiver: Receiver) -> None:
    sink, out = command(tmp_path)
    h = make(notify=[sink, SinkConfig("webhook", receiver.url, timeout=5)])
    start = 0  # a new sink starts with what happens from its start on (a new file: all)
    drive(h)
    want = [i for i in transition_ids(h) if i > start]
    wait_for(lambda: in_order([r["record"]["id"] for r in lines(out)], h, start, want),
             what="command")
    wait_for(lambda: in_order([b["id"] for b in receiver.bodies], h, start, want),
             what="webhook")
    first = lines(out)[0]
    assert first["argv"] == [first["record"]["kind"], first["record"]["tap_id"] or "-"]
    assert {b["kind"] for b in receiver.bodies} >= {"created", "active", "expiring", "removed"}
    both = min(len(receiver.bodies), len(lines(out)))
    assert receiver.bodies[:both] == [r["record"] for r in lines(out)][:both]
    wait_for(lambda: all(s["delivered"] >= len(want) and s["failed"] == 0 for s in
                         h.runtime.view.snapshot().notifications.values()),
             what="status in the snapshot")


def test_failures_are_retried_then_recorded_and_the_sink_moves_on(
        tmp_path: Path, make: Callable[..., Harness], receiver: Receiver) -> None:
    receiver.fail = 2  # the first transition's first two attempts
    flaky, out = command(tmp_path, fail_first=2)
    dead = SinkConfig("webhook", "http://127.0.0.1:9/nobody", timeout=1, retries=1,
                      backoff=0.01)
    h = make(notify=[flaky, SinkConfig("webhook", receiver.url, retries=3, backoff=0.01), dead])
    start = 0
    drive(h)
    want = [i for i in transition_ids(h) if i > start]
    wait_for(lambda: in_order([r["record"]["id"] for r in lines(out)], h, start, want),
             what="command")
    wait_for(lambda: in_order([b["id"] for b in receiver.bodies], h, start, want),
             what="webhook")
    wait_for(lambda: h.runtime.notifier.status()[dead.name]["failed"] >= len(want),
             what="failures recorded")
    gone = h.runtime.notifier.status()[dead.name]
    assert gone["delivered"] == 0 and gone["failures"][-1]["attempts"] == 2
    assert "ConnectionError" in gone["last_error"]


def test_a_slow_notification_never_holds_up_the_decisions(
        tmp_path: Path, make: Callable[..., Harness], receiver: Receiver) -> None:
    slow, _ = command(tmp_path, sleep=3.0)
    receiver.delay = 3.0
    h = make(notify=[slow, SinkConfig("webhook", receiver.url, timeout=10)])
    began = time.monotonic()
    drive(h)  # four installs/removes and their transitions
    assert time.monotonic() - began < 3.0
    assert h.runtime.notifier.status()[slow.name]["behind"] > 0


def test_a_restarted_daemon_carries_on_where_its_sinks_stopped(
        tmp_path: Path, mock: responses.RequestsMock, receiver: Receiver) -> None:
    sink, out = command(tmp_path)
    hook = SinkConfig("webhook", receiver.url)
    engine, controller = ScriptedEngine().register(mock), FakeController().start()
    policies = {"elephant": ELEPHANT.format(max_taps=4)}
    try:
        first = Harness(tmp_path, mock, policies, controller=controller, engine=engine,
                        notify=[sink, hook]).start()
        start = 0
        engine.fire("demon_elephant", FLOW_A)
        wait_for(lambda: controller.mirrors, what="tap")
        wait_for(lambda: len(lines(out)) >= 2 and len(receiver.bodies) >= 2, what="delivered")
        first.stop()
        second = Harness(tmp_path, mock, policies, controller=controller, engine=engine,
                         notify=[sink, hook]).start()
        try:
            engine.fire("demon_elephant", FLOW_B, data_source="102")
            wait_for(lambda: len(controller.mirrors) == 2, what="second tap")
            want = [i for i in transition_ids(second) if i > start]
            wait_for(lambda: in_order([r["record"]["id"] for r in lines(out)], second, start,
                                      want), what="command")
            wait_for(lambda: in_order([b["id"] for b in receiver.bodies], second, start, want),
                     what="webhook")
        finally:
            second.stop()
    finally:
        controller.stop()


def test_bad_notification_settings_are_one_line_errors() -> None:
    for config, why in ((SinkConfig("webhook", "ftp://x"), "http:// or https://"),
                        (SinkConfig("command", "'unclosed"), "--notify-command"),
                        (SinkConfig("command", "x", timeout=0), "--notify-timeout")):
        with pytest.raises(ValueError, match=why):
            config.check()
