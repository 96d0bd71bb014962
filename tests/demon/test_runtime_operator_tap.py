"""``demon-tap tap`` against the real runtime: the scripted engine (``responses``)
says where flows enter, the fake controller (the real RPC server) records what
is installed."""

from __future__ import annotations

import io
import threading
import time
from typing import Callable

import pytest

from demon import tapctl
from demon.tap_request import TapRequest, parse_at
from tests.demon.fakes import FLOW_A, FLOW_B, Harness, wait_for

pytestmark = pytest.mark.replay


def answered(h: Harness, request_id: int) -> str:
    return wait_for(lambda: h.store.request(request_id).outcome, timeout=10, what="the answer")


def test_a_flow_the_engine_knows_is_tapped_where_it_enters(make: Callable[..., Harness]) -> None:
    h = make()
    h.engine.set_flows("demon_elephant", [(FLOW_A, 1000.0, "103"), (FLOW_B, 50.0, "102")])
    rid = h.store.enqueue_request("tap", TapRequest("elephant", FLOW_B, hold=30.0).to_target(),
                                  "alice (demon-tap)")
    assert answered(h, rid).startswith("tapped elephant.1 at dpid 1 port 2")
    wait_for(lambda: h.controller.mirrors, what="install")  # sent after the answer is saved
    install = next(p for m, p in h.controller.calls if m == "install_mirror")
    assert install["match"]["tcp_src"] == 5002 and install["match"]["in_port"] == 2
    assert install["hard_timeout"] >= 30
    created = h.store.history("elephant.1")[0]
    assert created.kind == "created" and "operator alice (demon-tap)" in created.detail["cause"]


def test_a_flow_nobody_has_seen_is_refused_unless_its_ingress_is_named(
        make: Callable[..., Harness]) -> None:
    h = make()
    rid = h.store.enqueue_request("tap", TapRequest("elephant", FLOW_B).to_target(), "alice")
    outcome = answered(h, rid)
    assert outcome.startswith("not tapped: flow '10.0.0.3,10.0.0.4,6,5002,80' is not among the "
                              "active flows of demon_elephant")
    assert "--at DPID/PORT" in outcome and h.controller.mirrors == {}
    rid = h.store.enqueue_request("tap", TapRequest("elephant", FLOW_B, at=(2, 5)).to_target(),
                                  "alice")
    assert answered(h, rid).startswith("tapped elephant.1 at dpid 2 port 5")
    assert wait_for(lambda: list(h.controller.mirrors), what="install") == ["elephant.1"]


def test_bad_tap_requests_get_an_answer_naming_the_problem(make: Callable[..., Harness]) -> None:
    h = make()
    bad = {"{not json": "must be JSON",
           TapRequest("nope", FLOW_A, at=(1, 1)).to_target(): "no policy named 'nope'",
           '{"policy": "elephant", "flow": "x", "hold": -1}': "field 'hold'",
           TapRequest("elephant", "10.0.0.1,not-an-address,6,1,2", at=(1, 1)).to_target():
               "cannot build the match"}
    for target, why in bad.items():
        rid = h.store.enqueue_request("tap", target, "alice")
        outcome = answered(h, rid)
        assert outcome.startswith("not tapped: ") and why in outcome, outcome
    assert h.controller.mirrors == {}


def test_demon_tap_tap_waits_for_the_answer_and_exits_by_it(make: Callable[..., Harness]) -> None:
    h = make()
    h.engine.set_flows("demon_elephant", [(FLOW_A, 1000.0, "101")])
    results: dict[str, tuple[int, str, str]] = {}

    def run(name: str, argv: list[str]) -> None:
        out, err = io.StringIO(), io.StringIO()
        status = tapctl.main(["--state", str(h.state_path), *argv], stdout=out, stderr=err)
        results[name] = (status, out.getvalue(), err.getvalue())

    threads = [threading.Thread(target=run, args=("ok", ["tap", "elephant", FLOW_A, "--for", "2m"])),
               threading.Thread(target=run, args=("refused", ["tap", "elephant", FLOW_B]))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    status, out, _ = results["ok"]
    assert status == tapctl.EXIT_OK and f"tap elephant {FLOW_A}: tapped elephant." in out
    status, _, err = results["refused"]
    assert status == tapctl.EXIT_REFUSED and "not among the active flows" in err
    tap = h.store.tap(wait_for(lambda: next(iter(h.controller.mirrors), None), what="install"))
    assert tap.hold_until - tap.created_at == pytest.approx(120)


def test_demon_tap_tap_rejects_bad_options_before_queueing(tmp_path) -> None:
    for argv, why in ((["--at", "1-3"], "is not DPID/PORT"), (["--for", "soon"], "not a duration"),
                      (["--for", "0s"], "above 0")):
        err = io.StringIO()
        status = tapctl.main(["--state", str(tmp_path / "s.sqlite"), "tap", "p", FLOW_A, *argv],
                             stdout=io.StringIO(), stderr=err)
        assert status == tapctl.EXIT_USAGE and why in err.getvalue(), err.getvalue()
    assert not (tmp_path / "s.sqlite").exists()


def test_a_daemon_started_later_never_acts_on_an_expired_request(
        tmp_path, make: Callable[..., Harness]) -> None:
    """Issue 8: ``demon-tap pause`` pointed at a stopped daemon's file must not be
    carried out by the next daemon started on it, much later."""
    from demon.store import Store

    with Store(tmp_path / "state.sqlite") as store:
        old = store.enqueue_request("pause", "elephant", "alice", now=time.time() - 120, ttl=60)
        fresh = store.enqueue_request("tap", TapRequest("elephant", FLOW_A, at=(1, 1)).to_target(),
                                      "bob", ttl=60)
    h = make()
    assert answered(h, fresh).startswith("tapped elephant.1")
    assert wait_for(lambda: h.store.request(old).code, what="expiry") == "expired"
    assert h.runtime.state.paused == frozenset()
    assert not any(e.kind == "paused" for e in h.store.history())


@pytest.mark.parametrize("text, expected", [("1/3", (1, 3)), ("0x1/3", (1, 3)),
                                            ("0X00000000000000ff/48", (255, 48))])
def test_at_takes_a_dpid_and_a_port(text: str, expected: tuple[int, int]) -> None:
    assert parse_at(text) == expected


@pytest.mark.parametrize("text", ["1_0/1", " 1/2", "1 / 2", "1/2 ", "1/+2", "-1/2", "012/3", "1/",
                                  "/3", "1", "0x/3", "1/3/4", "0/3", "1/0"])
def test_at_refuses_what_is_not_dpid_slash_port_with_one_line(text: str) -> None:
    with pytest.raises(ValueError, match=r"^--at: ") as caught:
        parse_at(text)
    assert "\n" not in str(caught.value)
