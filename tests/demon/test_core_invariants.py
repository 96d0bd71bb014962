"""Decision core under random input sequences: the promises hold after every step.

Caps, capture budget, one tap per flow, one mirror per match, no install for a
tap that is not pending, no call sent twice while one is in flight, and every
transition recorded: whatever the order of events, answers, outages and
operator actions.
"""

from __future__ import annotations

from collections import Counter

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from demon.model import (ControllerStatus, InstallMirror, InstallResult, MirrorRemoved,
                         OperatorRelease, OperatorTap, PausePolicy, Reconcile, RemoveMirror, RemoveResult,
                         ResumePolicy, State, ThresholdEvent, Tick, TopFlows)
from demon.policy import GlobalLimits
from demon.tapindex import TapIndex

from .core_harness import AGENT, Harness, flow, policy

CAP_BPS = 1e9
RATE_MBPS = [120, 300, 80, 450, 60, 200, 90, 700]  # fixed per flow, so the budget is exact


def rate(n: int) -> float:
    return RATE_MBPS[n % len(RATE_MBPS)]


ops = st.one_of(
    st.tuples(st.just("event"), st.integers(0, 11), st.sampled_from(["a", "b"])),
    st.tuples(st.just("top"), st.lists(st.integers(0, 11), max_size=4), st.sampled_from(["a", "b"]),
              st.sampled_from([1.0, 1.0, 0.5, 1.5])),
    st.tuples(st.just("tick"), st.floats(0.1, 40)),
    st.tuples(st.just("answer"), st.sampled_from(["ok", "fail", "unreachable"]), st.integers(0, 50)),
    st.tuples(st.just("switch_removed"), st.integers(0, 50), st.sampled_from(["idle_timeout", "delete"])),
    st.tuples(st.just("controller"), st.booleans()),
    st.tuples(st.just("reconcile"), st.booleans()),
    st.tuples(st.just("release"), st.integers(0, 50)),
    st.tuples(st.just("optap"), st.integers(0, 11), st.sampled_from(["a", "b"]),
              st.sampled_from([5.0, 60.0, 600.0])),
    st.tuples(st.just("pause"), st.sampled_from(["a", "b"]), st.booleans()),
)


class Switch:
    """What the controller holds, and the calls the core is waiting on."""

    def __init__(self) -> None:
        self.held: set[str] = set()
        self.waiting: list = []  # commands not answered yet


def check(h: Harness, out: list, rates_fixed: bool) -> None:
    live = h.live()
    assert len(live) <= h.ctx.limits.max_taps
    per_policy = Counter(t.policy for t in live)
    for name, count in per_policy.items():
        assert count <= h.ctx.policies[name].max_taps
    if rates_fixed:  # a flow that speeds up after it was tapped may overrun the budget
        assert sum(t.rate_bps for t in live) <= CAP_BPS + 1e-6
    keys = Counter((t.policy, t.flow_key) for t in live)
    assert max(keys.values(), default=0) <= 1
    mirrors = Counter((t.dpid, tuple(sorted((k, v) for k, v in t.match.items() if k != "in_port")))
                      for t in live)
    assert max(mirrors.values(), default=0) <= 1
    sent = Counter()
    for cmd in out:
        if isinstance(cmd, InstallMirror):
            tap = h.state.taps[cmd.tap.tap_id]
            assert tap.state in ("pending", "expiring") and tap.inflight == "install"
            assert cmd.hard_timeout > 0
            sent[cmd.tap.tap_id] += 1
        elif isinstance(cmd, RemoveMirror):
            sent[cmd.tap_id] += 1
    assert max(sent.values(), default=0) <= 1
    for tap in h.state.taps.values():
        assert tap.state in ("pending", "active", "expiring", "removed", "failed")
        if tap.state == "active":
            assert tap.inflight is None
    assert State(**{f: getattr(h.state, f) for f in State.__dataclass_fields__}) == h.state
    # the incrementally kept index equals one rebuilt from scratch
    kept = h.state.index[2]
    fresh = TapIndex.build(h.state.taps.values(), h.state.watch.values())
    assert (kept.by_flow, kept.by_mirror, kept.per_policy, kept.live, kept.waiting) == \
        (fresh.by_flow, fresh.by_mirror, fresh.per_policy, fresh.live, fresh.waiting)
    assert kept.used_bps == pytest.approx(fresh.used_bps, abs=1e-3)
    assert kept.uplinks.keys() == fresh.uplinks.keys()
    for key, (bps, count) in kept.uplinks.items():
        assert count == fresh.uplinks[key][1] and bps == pytest.approx(fresh.uplinks[key][0], abs=1e-3)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(ops, min_size=1, max_size=60))
def test_promises_hold_for_any_sequence(sequence):
    a = policy(name="a", max_taps=3, priority=100, interval="5s", holddown="5s")
    b = policy(name="b", max_taps=4, priority=300, interval="5s", holddown="5s",
               bidirectional=True)
    h = Harness([a, b], limits=GlobalLimits(max_taps=5, capture_capacity="1Gbps"),
                auto=False)
    assert h.ctx.limits.capture_capacity == CAP_BPS
    switch = Switch()
    seq = 0
    rates_fixed = True

    def feed(inp):
        out = h.feed(inp)
        for cmd in out:
            if isinstance(cmd, (InstallMirror, RemoveMirror)):
                tap_id = cmd.tap.tap_id if isinstance(cmd, InstallMirror) else cmd.tap_id
                outstanding = {c.tap.tap_id if isinstance(c, InstallMirror) else c.tap_id
                               for c in switch.waiting}
                assert tap_id not in outstanding, f"second call for {tap_id} while one is in flight"
                switch.waiting.append(cmd)
            elif cmd.entry.detail.get("superseded_by"):
                winner = h.ctx.policies[cmd.entry.detail["superseded_by"]]
                assert h.state.taps[cmd.entry.tap_id].priority < winner.priority
        check(h, out, rates_fixed)

    for op in sequence:
        kind = op[0]
        if kind == "event":
            seq += 1
            n = op[1]
            feed(ThresholdEvent(seq, f"demon_{op[2]}", op[2], AGENT, str(101 + n % 5), flow(n),
                                rate(n) * 1e6 / 8, 50e6 / 8, h.now))
        elif kind == "top":
            rates_fixed = rates_fixed and op[3] == 1.0
            feed(TopFlows(op[2], [(flow(n), op[3] * rate(n) * 1e6 / 8, AGENT, str(101 + n % 5))
                                  for n in op[1]]))
        elif kind == "tick":
            h.now += op[1]
            feed(Tick())
        elif kind == "answer" and switch.waiting:
            cmd = switch.waiting.pop(op[2] % len(switch.waiting))
            if isinstance(cmd, InstallMirror):
                tap_id = cmd.tap.tap_id
                if op[1] == "ok":
                    switch.held.add(tap_id)
                feed(InstallResult(tap_id, ok=op[1] == "ok", error=None if op[1] == "ok" else "x",
                                   unreachable=op[1] == "unreachable"))
            else:
                ok = op[1] == "ok"
                if ok:
                    switch.held.discard(cmd.tap_id)
                feed(RemoveResult(cmd.tap_id, ok=ok, error=None if ok else "x",
                                  unreachable=op[1] == "unreachable"))
        elif kind == "switch_removed" and switch.held:
            tap_id = sorted(switch.held)[op[1] % len(switch.held)]
            switch.held.discard(tap_id)
            feed(MirrorRemoved(tap_id, reason=op[2]))
        elif kind == "controller":
            if not op[1]:
                switch.waiting.clear()  # answers lost with the connection
            feed(ControllerStatus(up=op[1]))
        elif kind == "reconcile":
            switch.waiting.clear()
            feed(Reconcile(mirrors=[{"tap_id": t, "dpid": 1} for t in sorted(switch.held)]))
            if op[1]:
                feed(ControllerStatus(up=True))
        elif kind == "release" and h.state.taps:
            tap_id = sorted(h.state.taps)[op[1] % len(h.state.taps)]
            feed(OperatorRelease(tap_id, who="op"))
        elif kind == "optap":
            n = op[1]
            feed(OperatorTap(op[2], flow(n), who="op", hold=op[3], agent=AGENT,
                             data_source=str(101 + n % 5), rate_bps=rate(n) * 1e6))
        elif kind == "pause":
            feed(PausePolicy(op[1], who="op") if op[2] else ResumePolicy(op[1], who="op"))
    # every tap that exists went through a recorded creation
    created = {r.tap_id for r in h.records("created")} | {r.tap_id for r in h.records("failed")}
    assert set(h.state.taps) <= created
