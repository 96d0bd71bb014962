"""The pure decision core: ``step(state, ctx, input, now) -> (state, commands)``.

No I/O, no clock, no randomness: the runtime owns those, executes the returned
commands (``InstallMirror``/``RemoveMirror`` over RPC, ``Record`` into the
store) and feeds their results back as inputs. Data types: ``demon.model``.

The rules (each transition emits a ``Record`` naming its cause):

* **Trigger → tap.** A ``ThresholdEvent`` (elephants) or a row of ``TopFlows``
  (top talkers: the ``top`` largest above ``min_rate``; elephants: the rows
  above the threshold) is a *sighting* of (policy, flow key). A new flow
  becomes a ``Candidate``; once it has been seen for ``sustain`` seconds (0 =
  at once) it is placed (``Topology``), compiled to a match (``flowmatch``) and
  becomes a ``pending`` tap with an ``InstallMirror`` (not sent while the
  controller is down). Install OK → ``active``.
* **Extend, release.** Every later sighting of a tapped flow moves
  ``last_trigger_at`` to now (never a second tap). On ``Tick`` a tap is
  released when ``now >= last_trigger_at + duration`` (the condition cleared)
  or ``now >= expires_at = created_at + max_duration``: it goes ``expiring``
  with a ``RemoveMirror`` and, once the controller confirms (or the switch
  reports the entries gone), ``removed``. Hold-down: the same (policy, flow)
  is not tapped again before ``release + holddown``. A failed tap holds down
  for ``limits.failure_holddown``.
* **Placement.** A flow seen on a port the port map does not hold yet waits
  (re-tried every tick) up to ``limits.placement_wait``, then its tap fails.
* **One mirror per flow.** Within a policy, one tap per flow key. Across
  policies, taps with the same switch and match (``in_port`` aside) are one
  mirror: a higher-``priority`` policy supersedes a lower one's tap (that one
  is released; the new one waits until it is gone); an equal or lower one
  waits while the flow is already mirrored.
* **Caps and budget.** Live taps (pending, active, expiring) never exceed the
  policy's ``max_taps`` nor ``limits.max_taps``; the sum of their
  ``rate_bps`` never exceeds ``limits.capture_capacity``. A flow that does not
  fit *waits* (a candidate with the reason recorded once); a flow larger than
  the whole budget, or arriving when ``limits.max_waiting`` flows already
  wait, is *refused*. Active taps are never preempted for room (a capture in
  progress is worth more than a new one); when room frees, waiting flows are
  admitted in order of policy priority, then larger rate first, greedily (a
  smaller one may use room a larger one cannot). A waiting flow not seen
  again within ``policy.stale_after`` is dropped.
* **Failures.** A failed install is retried after ``retry_backoff * 2^(n-1)``
  (capped by ``retry_backoff_max``) up to ``limits.max_attempts`` failures,
  then the tap is ``failed``. ``unreachable`` results use no attempt: the call
  is sent again when the controller is back. A failed remove is retried
  forever; once the switch's own ``hard_timeout`` must have fired
  (``expires_at + 2 × hard_timeout_grace``) the tap is taken as removed.
* **Controller.** While down nothing is sent; taps still count against caps.
  When it is back, pending installs and expiring removes are sent (once each).
  ``Reconcile`` (the controller's ``list_mirrors``) starts a new controller
  session: calls in flight before it are forgotten; it removes orphan mirrors
  (tap unknown or ended; entries listed without a tap id through the tap id
  their cookie maps to, or recorded once when none does), re-installs live taps the switches lost, confirms
  pending taps the switches already hold, and expires overdue ones. On start-up
  and on every reconnect the runtime feeds ``Reconcile`` first, then
  ``ControllerStatus(up=True)``: each outstanding install/remove is then sent
  exactly once.
* **Operator.** ``OperatorTap`` taps a flow now (hold-down overridden, caps and
  budget not: a request that does not fit is refused with the reason, it does
  not wait) and keeps it at least ``hold`` seconds; on a tapped flow it extends
  the tap. ``OperatorRelease`` releases at once (hold-down applies, so the
  flow is not re-tapped straight away); ``PausePolicy`` stops a policy from
  tapping anything new (its taps run their course); ``ResumePolicy`` undoes it.
  A policy that disappears from the configuration has its taps released.

Terminal taps stay in ``State.taps`` for ``limits.retain`` seconds, then are
purged (the store keeps them).

Cost: a step costs what it changes, not what the state holds: lookups go
through ``demon.tapindex`` (carried from step to step in ``State.index``), and
state tables are copied on first write. Only ``Tick``, ``ControllerStatus`` and
``Reconcile`` walk every tap.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any, Mapping

from demon import budget
from demon.controller.spec import cookie_for_tap
from demon.flowmatch import FlowMatchError, flow_key_to_match
from demon.model import (BASE_OF_PRIORITY, Answer, Candidate, Command, ControllerStatus,
                         FlowSighting, HistoryEntry, Input, InstallMirror, InstallResult,
                         MirrorCounters, MirrorRemoved, OperatorRelease, OperatorTap, PausePolicy,
                         Reconcile, Record, RemoveMirror, RemoveResult, ResumePolicy, State, Tap,
                         ThresholdEvent, Tick, TopFlows)
from demon.tapindex import TapIndex, mirror_signature
from demon.topology import Location
from demon.schedule import format_window
from demon.units import format_rate

if TYPE_CHECKING:
    from demon.policy import GlobalLimits, Policy
    from demon.topology import Topology

DEFAULT_IDLE_TIMEOUT = 30
OFP_MAX_TIMEOUT = 65535


@dataclass(frozen=True)
class Context:
    """The configuration a step decides under (rebuilt by the runtime on reload
    or when the topology changes)."""

    policies: Mapping[str, "Policy"]
    topology: "Topology"
    limits: "GlobalLimits"


def step(state: State, ctx: Context, inp: Input, now: float) -> tuple[State, list[Command]]:
    """Apply one input at time ``now``; return the new state and the commands."""
    work = _Work(state, ctx, now)
    handler = _HANDLERS.get(type(inp))
    if handler is None:
        raise TypeError(f"not a core input: {type(inp).__name__}")
    handler(work, inp)
    return work.freeze(), work.commands


class _Work:
    """The state during one step: tables are shared with the input state and
    copied on first write (so the input state is never changed), with the
    derived index (``demon.tapindex``) kept up to date on every write."""

    def __init__(self, state: State, ctx: Context, now: float) -> None:
        self.ctx, self.now = ctx, now
        self.taps: Mapping[str, Tap] = state.taps
        self.holddown: Mapping[tuple[str, str], float] = state.holddown
        self.watch: Mapping[tuple[str, str], Candidate] = state.watch
        self.paused: set[str] = set(state.paused)
        self.controller_up = state.controller_up
        self.next_seq = state.next_seq
        self.observed = state.observed
        self.strays = state.strays
        self.commands: list[Command] = []
        # Why the last admission attempt did not tap (code, reason), for operator answers.
        self.refusal: tuple[str, str] | None = None
        cached = state.index
        if cached is not None and cached[0] is state.taps and cached[1] is state.watch:
            self.idx = cached[2].clone()
        else:
            self.idx = TapIndex.build(state.taps.values(), state.watch.values())
        self._owned: set[str] = set()

    def freeze(self) -> State:
        return State(taps=self.taps, holddown=self.holddown, paused=frozenset(self.paused),
                     controller_up=self.controller_up, watch=self.watch, next_seq=self.next_seq,
                     observed=self.observed, strays=self.strays,
                     index=(self.taps, self.watch, self.idx))

    def _own(self, name: str) -> dict:
        if name not in self._owned:
            setattr(self, name, dict(getattr(self, name)))
            self._owned.add(name)
        return getattr(self, name)

    # -- writes (the only ones) ------------------------------------------------------

    def set_tap(self, tap: Tap) -> None:
        old = self.taps.get(tap.tap_id)
        self._own("taps")[tap.tap_id] = tap
        self.idx.tap_changed(old, tap)

    def del_tap(self, tap_id: str) -> None:
        old = self.taps.get(tap_id)
        del self._own("taps")[tap_id]
        self.idx.tap_changed(old, None)

    def set_cand(self, cand: Candidate) -> None:
        key = (cand.policy, cand.flow_key)
        old = self.watch.get(key)
        self._own("watch")[key] = cand
        self.idx.candidate_changed(old, cand)

    def drop_cand(self, key: tuple[str, str]) -> None:
        old = self.watch.get(key)
        if old is not None:
            del self._own("watch")[key]
            self.idx.candidate_changed(old, None)

    def hold(self, policy: str, flow_key: str, seconds: float) -> None:
        until = self.now + seconds
        key = (policy, flow_key)
        if seconds > 0 and until > self.holddown.get(key, 0.0):
            self._own("holddown")[key] = until

    def unhold(self, key: tuple[str, str]) -> None:
        del self._own("holddown")[key]

    def put(self, tap: Tap, **changes: Any) -> Tap:
        tap = replace(tap, updated_at=self.now, **changes)
        self.set_tap(tap)
        return tap

    # -- reads ------------------------------------------------------------------------

    def record(self, tap_id: str | None, kind: str, cause: str, **detail: Any) -> None:
        entry = HistoryEntry(tap_id=tap_id, at=self.now, kind=kind,
                             detail={"cause": cause, **{k: v for k, v in detail.items() if v is not None}})
        self.commands.append(Record(entry))

    def record_tap(self, tap: Tap, kind: str, cause: str, **detail: Any) -> None:
        self.record(tap.tap_id, kind, cause, policy=tap.policy, flow_key=tap.flow_key,
                    state=tap.state, **detail)

    def answer(self, ref: str | None, code: str, outcome: str, message: str,
               tap_id: str | None = None) -> None:
        if ref is not None:
            self.commands.append(Answer(ref, code, outcome, message, tap_id))

    def policy(self, name: str) -> "Policy | None":
        return self.ctx.policies.get(name)

    def tap_of(self, policy: str, flow_key: str) -> Tap | None:
        tap_id = self.idx.by_flow.get((policy, flow_key))
        return self.taps[tap_id] if tap_id is not None else None


# -- sending ------------------------------------------------------------------------


def _install(w: _Work, tap: Tap) -> None:
    policy = w.policy(tap.policy)
    idle = int(policy.idle_timeout) if policy else DEFAULT_IDLE_TIMEOUT
    # 16 bits on the switch: the loader keeps policies within it; an operator's long
    # hold is cut there by the switch (a recorded "switch removed the mirror").
    hard = min(OFP_MAX_TIMEOUT,
               max(1, math.ceil(tap.expires_at - w.now + w.ctx.limits.hard_timeout_grace)))
    tap = w.put(tap, inflight="install", sent=True)
    w.commands.append(InstallMirror(tap=tap, idle_timeout=idle, hard_timeout=hard,
                                    of_priority=BASE_OF_PRIORITY + tap.priority))


def _remove(w: _Work, tap: Tap) -> None:
    w.put(tap, inflight="remove")
    w.commands.append(RemoveMirror(tap_id=tap.tap_id, reason=tap.reason))


def _end(w: _Work, tap: Tap, state: str, kind: str, cause: str, **detail: Any) -> Tap:
    tap = w.put(tap, state=state, inflight=None, ended_at=w.now,
                reason=tap.reason if state == "removed" and tap.reason else cause)
    detail.setdefault("limit", tap.limit or None)
    w.record_tap(tap, kind, cause, **detail)
    return tap


def _release(w: _Work, tap: Tap, cause: str, **detail: Any) -> None:
    """Start removing a pending/active tap; hold the flow down. ``detail["limit"]``
    names the limit that ended it, if one did (kept on the tap as ``limit``)."""
    policy = w.policy(tap.policy)
    w.hold(tap.policy, tap.flow_key, policy.holddown if policy else 0.0)
    if detail.get("limit"):
        tap = w.put(tap, limit=detail["limit"])
    if tap.state == "pending" and not tap.sent and tap.inflight is None:
        _end(w, w.put(tap, reason=cause), "removed", "removed",
             f"{cause} (never installed)", **detail)
        return
    tap = w.put(tap, state="expiring", reason=cause, attempts=0, next_attempt_at=0.0)
    w.record_tap(tap, "expiring", cause, **detail)
    # With an install in flight, the remove waits for its answer (so the two
    # calls never race); while the controller is down it waits for it.
    if tap.inflight is None and w.controller_up:
        _remove(w, tap)


def _retry_delay(w: _Work, attempts: int) -> float:
    limits = w.ctx.limits
    return min(limits.retry_backoff * 2 ** max(0, attempts - 1), limits.retry_backoff_max)


# -- sightings and admission ----------------------------------------------------------


def _sighting(w: _Work, policy: "Policy", s: FlowSighting, trigger: str,
              event_id: int | None = None) -> None:
    rate = policy.to_bps(s.value)
    tap = w.tap_of(policy.name, s.key)
    if tap is not None:
        if tap.state in ("pending", "active"):
            w.put(tap, last_trigger_at=w.now, rate_bps=rate)
        return
    loc = w.ctx.topology.locate(s.agent, s.data_source)
    if loc is not None and w.ctx.topology.is_copy(loc):
        return  # our own mirror copy, sampled on its way to the capture host
    if not policy.enabled or policy.name in w.paused:
        return
    key = (policy.name, s.key)
    if w.holddown.get(key, 0.0) > w.now:
        return
    cand = w.watch.get(key)
    if cand is None or w.now - cand.last_seen > policy.stale_after:
        cand = Candidate(policy=policy.name, flow_key=s.key, first_seen=w.now, last_seen=w.now,
                         value=s.value, rate_bps=rate, agent=s.agent,
                         data_source=str(s.data_source), trigger=trigger, event_id=event_id,
                         waiting=cand.waiting if cand else "")
    else:
        cand = replace(cand, last_seen=w.now, value=s.value, rate_bps=rate, agent=s.agent,
                       data_source=str(s.data_source), trigger=trigger,
                       event_id=event_id if event_id is not None else cand.event_id)
    w.set_cand(cand)
    _try_admit(w, policy, cand)


UNPLACED_PREFIX = "location unknown: "


def awaiting_placement(state: State) -> bool:
    """True while some flow waits for its port to appear in the port map (the
    runtime then re-reads the map every second instead of every few)."""
    return any(c.waiting.startswith(UNPLACED_PREFIX) for c in state.watch.values())


def _wait(w: _Work, cand: Candidate, reason: str) -> None:
    w.refusal = ("refused", reason)
    if cand.waiting != reason:
        w.record(None, "waiting", reason, policy=cand.policy, flow_key=cand.flow_key,
                 event_id=cand.event_id, trigger=cand.trigger)
    w.set_cand(replace(cand, waiting=reason))


def _refuse(w: _Work, policy: "Policy", cand: Candidate, reason: str) -> None:
    w.refusal = ("refused", reason)
    w.drop_cand((cand.policy, cand.flow_key))
    w.hold(cand.policy, cand.flow_key, policy.holddown)
    w.record(None, "refused", reason, policy=cand.policy, flow_key=cand.flow_key,
             event_id=cand.event_id, trigger=cand.trigger)


def _fail_unplaced(w: _Work, policy: "Policy", cand: Candidate, reason: str,
                   code: str = "refused") -> None:
    """A tap that cannot even be placed: recorded as a failed tap with the reason."""
    w.refusal = (code, reason)
    w.drop_cand((cand.policy, cand.flow_key))
    tap = _new_tap(w, policy, cand, dpid=0, in_port=0, copy_port=0, match={})
    w.hold(policy.name, cand.flow_key, w.ctx.limits.failure_holddown)
    _end(w, tap, "failed", "failed", reason, event_id=cand.event_id, trigger=cand.trigger,
         agent=cand.agent, data_source=cand.data_source)


def _new_tap(w: _Work, policy: "Policy", cand: Candidate, *, dpid: int, in_port: int,
             copy_port: int, match: dict[str, Any], until: float | None = None) -> Tap:
    tap_id = f"{policy.name}.{w.next_seq}"
    w.next_seq += 1
    expires = w.now + policy.max_duration
    tap = Tap(tap_id=tap_id, policy=policy.name, flow_key=cand.flow_key, match=match, dpid=dpid,
              in_port=in_port, copy_port=copy_port, vlan_tag=policy.vlan_tag,
              bidirectional=policy.bidirectional, state="pending", rate_bps=cand.rate_bps,
              priority=policy.priority, created_at=w.now, updated_at=w.now,
              expires_at=min(expires, until) if until is not None else expires,
              last_trigger_at=w.now, trigger=cand.trigger, agent=cand.agent,
              data_source=cand.data_source, max_packets=policy.max_packets,
              max_bytes=policy.max_bytes)
    w.set_tap(tap)
    return tap


def _try_admit(w: _Work, policy: "Policy", cand: Candidate, *, at: Location | None = None,
               hold: float = 0.0, until: float | None = None) -> bool:
    """Turn the candidate into a pending tap if every rule allows it now.

    ``at``: the ingress an operator or a schedule named (instead of locating the
    sighting; port 0: every port of that switch); ``hold``: an operator's minimum
    lifetime for the tap; ``until``: a schedule's window end, when it is released.
    """
    if cand.last_seen < cand.first_seen + policy.sustain_s:
        return False  # not yet seen at the end of its sustain window
    topo, limits = w.ctx.topology, w.ctx.limits
    loc = at or topo.locate(cand.agent, cand.data_source)
    if loc is None:
        where = f"agent {cand.agent} dataSource {cand.data_source}"
        waited = w.now - (cand.first_seen + policy.sustain_s)
        if waited < limits.placement_wait:
            # Agents announce a port with their counter records, up to a polling
            # interval after its first flow samples: wait for it, do not fail.
            _wait(w, cand, f"{UNPLACED_PREFIX}{where} is not in the port map yet")
            return False
        _fail_unplaced(w, policy, cand, f"unknown location: {where} is not in the port map "
                       f"(waited {waited:.3g}s)")
        return False
    problem = topo.ingress_problem(loc) if loc.in_port else topo.filter_switch_problem(loc.dpid)
    if problem and loc.dpid not in topo.switches and not w.controller_up:
        _wait(w, cand, f"switch dpid {loc.dpid} not known yet (controller down)")
        return False
    if problem:
        _fail_unplaced(w, policy, cand, f"cannot place the tap: {problem}")
        return False
    try:
        match = flow_key_to_match(cand.flow_key, policy.match_keys, policy.fs,
                                  resolve_ifindex=lambda i: topo.port_of(cand.agent, i))
    except FlowMatchError as exc:
        _fail_unplaced(w, policy, cand, f"cannot build the match: {exc}", code="invalid")
        return False
    if policy.pins_in_port and loc.in_port:
        match.setdefault("in_port", loc.in_port)
    other_id = w.idx.by_mirror.get(mirror_signature(loc.dpid, match))
    if other_id is not None:
        other = w.taps[other_id]
        if other.state == "expiring":
            _wait(w, cand, f"waiting for tap {other.tap_id} on the same flow to be removed")
        elif other.priority >= policy.priority:
            _wait(w, cand, f"flow already mirrored by tap {other.tap_id} "
                           f"(policy {other.policy}, priority {other.priority})")
        else:
            _release(w, other, f"superseded by policy {policy.name} (priority {policy.priority} "
                               f"> {other.priority})", superseded_by=policy.name)
            if not w.taps[other.tap_id].live:  # it was never installed: room is free now
                return _try_admit(w, policy, cand, at=at, hold=hold)
            _wait(w, cand, f"waiting for superseded tap {other.tap_id} to be removed")
        return False
    cap = limits.capture_capacity
    if cap is not None and cand.rate_bps > cap:
        _refuse(w, policy, cand, f"rate {format_rate(cand.rate_bps)} exceeds the whole capture "
                                 f"capacity {format_rate(cap)}")
        return False
    reason, idx = "", w.idx
    limit = getattr(policy, "new_taps_limit", None)
    if idx.per_policy.get(policy.name, 0) >= policy.max_taps:
        reason = f"policy cap reached ({policy.max_taps} taps)"
    elif limit and idx.created_since(policy.name, w.now - limit[1]) >= limit[0]:
        reason = f"rate limit: {limit[0]} new taps per {limit[1]:g}s reached"
    elif idx.live >= limits.max_taps:
        reason = f"global cap reached ({limits.max_taps} taps)"
    elif cap is not None and idx.used_bps + cand.rate_bps > cap:
        reason = (f"capture budget: {format_rate(idx.used_bps)} of {format_rate(cap)} in use, "
                  f"needs {format_rate(cand.rate_bps)}")
    if reason:
        if not cand.waiting:
            waiting = idx.waiting
            if waiting >= limits.max_waiting:
                _refuse(w, policy, cand, f"{reason}; {waiting} flows already wait")
                return False
        _wait(w, cand, reason)
        return False
    copy_port = topo.choose_uplink_by_load(loc.dpid, idx.uplinks)
    if copy_port is None:
        _fail_unplaced(w, policy, cand, f"switch dpid {loc.dpid} has no uplink")
        return False
    w.drop_cand((cand.policy, cand.flow_key))
    tap = _new_tap(w, policy, cand, dpid=loc.dpid, in_port=loc.in_port, copy_port=copy_port,
                   match=match, until=until)
    if until is not None:  # this window is served: no second tap in it, whatever ends this one
        w.hold(policy.name, cand.flow_key, until - w.now)
    if hold > 0:
        tap = w.put(tap, hold_until=w.now + hold,
                    expires_at=max(tap.expires_at, w.now + hold))
    w.record_tap(tap, "created", cand.trigger, event_id=cand.event_id, rate_bps=cand.rate_bps,
                 dpid=tap.dpid, in_port=tap.in_port, copy_port=copy_port,
                 waited=cand.waiting or None)
    if w.controller_up:
        _install(w, tap)
    return True


def _admit_waiting(w: _Work) -> None:
    """Offer free room to candidates: policy priority first, then larger rate."""
    order = []
    for cand in list(w.watch.values()):
        policy = w.policy(cand.policy)
        if policy is None or not policy.enabled or cand.policy in w.paused:
            w.drop_cand((cand.policy, cand.flow_key))
            continue
        if w.now - cand.last_seen > policy.stale_after:
            w.drop_cand((cand.policy, cand.flow_key))
            if cand.waiting:
                w.record(None, "dropped", f"not seen for {policy.stale_after:g}s while waiting "
                         f"({cand.waiting})", policy=cand.policy, flow_key=cand.flow_key)
            continue
        if getattr(policy, "window_at", None) is not None:
            continue  # a schedule's flow: offered again by _schedule on every tick
        order.append((policy, cand))
    order.sort(key=lambda pc: (-pc[0].priority, -pc[1].rate_bps, pc[1].first_seen))
    for policy, cand in order:
        current = w.watch.get((cand.policy, cand.flow_key))
        if current is not None:
            _try_admit(w, policy, current)


def _offer_room(w: _Work) -> None:
    """A tap ended: room may have freed for flows waiting for it."""
    if w.idx.waiting:
        _admit_waiting(w)


# -- handlers -------------------------------------------------------------------------


def _on_event(w: _Work, ev: ThresholdEvent) -> None:
    policy = w.policy(ev.policy)
    if policy is None or policy.threshold_spec() is None:
        return
    trigger = policy.event_trigger(ev.event_id, ev.value, ev.threshold,
                                   f"{ev.agent}/{ev.data_source}")
    _sighting(w, policy, FlowSighting(ev.flow_key, ev.value, ev.agent, str(ev.data_source)),
              trigger, ev.event_id)


def _as_sighting(row: Any) -> FlowSighting:
    """A tuple, an ``/activeflows`` JSON row, or the client's ``ActiveFlow``."""
    if isinstance(row, (tuple, list)):
        return FlowSighting(str(row[0]), float(row[1]), str(row[2]), str(row[3]))
    if isinstance(row, Mapping):
        return FlowSighting(str(row["key"]), float(row["value"]), str(row["agent"]),
                            str(row.get("dataSource", row.get("data_source"))))
    return FlowSighting(str(row.key), float(row.value), str(row.agent), str(row.data_source))


def _on_top(w: _Work, top: TopFlows) -> None:
    """A poll of the policy's ``/activeflows``: the kind says which rows are
    sightings (``Policy.sightings``: top N, above a threshold, a fan-in's sums…)."""
    policy = w.policy(top.policy)
    if policy is None:
        return
    if w.observed is not None and top.complete:
        w.observed = {**w.observed, policy.name: w.now}
    for row, trigger in policy.sightings([_as_sighting(row) for row in top.flows]):
        _sighting(w, policy, row, trigger)


def _sweep(w: _Work) -> None:
    """Expiry, retries and the hard-timeout assumption for every live tap."""
    grace = w.ctx.limits.hard_timeout_grace
    for tap in list(w.taps.values()):
        if not tap.live:
            continue
        policy = w.policy(tap.policy)
        if tap.state in ("pending", "active"):
            if policy is None:
                _release(w, tap, f"policy {tap.policy} removed from the configuration")
            elif w.now >= tap.expires_at:
                if tap.hold_until >= tap.expires_at:
                    _release(w, tap, "operator's hold over", limit="hold")
                elif not policy.condition_driven:
                    _release(w, tap, f"schedule window over ({tap.trigger})", limit="window")
                else:
                    _release(w, tap, f"max duration reached ({policy.max_duration:g}s)",
                             limit="max_duration")
            elif policy.condition_driven and _cleared(w, tap, policy):
                _release(w, tap, f"condition cleared: no trigger for {policy.duration:g}s"
                         + (" (operator's hold over)" if tap.hold_until else ""),
                         limit="duration")
            elif (tap.state == "pending" and tap.inflight is None and w.controller_up
                  and tap.next_attempt_at <= w.now):
                _install(w, tap)
        elif tap.state == "expiring" and tap.inflight is None:
            if w.now >= tap.expires_at + 2 * grace:
                _end(w, tap, "removed", "removed", "assumed removed: the switch's hard timeout "
                     "has expired", release_reason=tap.reason)
            elif not tap.sent:
                _end(w, tap, "removed", "removed", f"{tap.reason} (never installed)")
            elif w.controller_up and tap.next_attempt_at <= w.now:
                _remove(w, tap)


def _cleared(w: _Work, tap: Tap, policy: "Policy") -> bool:
    """The tap's trigger has not fired for ``duration`` (and the operator's hold is
    over). With ``State.observed`` kept (the runtime), a polled policy must also
    have been observed after that deadline: silence from an engine that is down,
    paused or still re-learning its rates is not a cleared condition."""
    deadline = max(tap.last_trigger_at + policy.duration, tap.hold_until)
    if w.now < deadline:
        return False
    if w.observed is None or float(getattr(policy, "interval", 0) or 0) <= 0:
        return True
    return w.observed.get(policy.name, float("-inf")) >= deadline


def _purge(w: _Work) -> None:
    for key, until in list(w.holddown.items()):
        if until <= w.now:
            w.unhold(key)
    retain = w.ctx.limits.retain
    for tap_id, tap in list(w.taps.items()):
        if not tap.live and tap.ended_at is not None and w.now - tap.ended_at >= retain:
            # a rate-limited policy counts its taps of the last window: keep them that long
            limit = getattr(w.policy(tap.policy), "new_taps_limit", None)
            if limit and w.now - tap.created_at < limit[1]:
                continue
            w.del_tap(tap_id)


def _on_tick(w: _Work, _tick: Tick) -> None:
    _sweep(w)
    _schedule(w)
    _admit_waiting(w)
    _purge(w)


def _schedule(w: _Work) -> None:
    """Scheduled policies: tap their flow when a window opens (or is open: a daemon
    started late serves the rest of it), once per window."""
    for policy in w.ctx.policies.values():
        window_at = getattr(policy, "window_at", None)
        if window_at is None or not policy.enabled or policy.name in w.paused:
            continue
        window = window_at(w.now)
        if window is None:
            continue
        start, end = window
        key = (policy.name, policy.flow)
        if w.tap_of(*key) is not None or w.holddown.get(key, 0.0) > w.now:
            continue
        cand = w.watch.get(key)
        if cand is None:
            rate = getattr(policy, "rate", 0.0)
            cand = Candidate(policy=policy.name, flow_key=policy.flow, first_seen=w.now,
                             last_seen=w.now, value=policy.from_bps(rate), rate_bps=rate,
                             agent="", data_source="",
                             trigger=f"schedule {policy.schedule.describe()}: window "
                                     f"{format_window(start, end, policy.timezone)}")
        else:
            cand = replace(cand, last_seen=w.now)
        w.set_cand(cand)
        dpid, port = policy.location
        _try_admit(w, policy, cand, at=Location(dpid, port or 0), until=end)


def _on_install(w: _Work, res: InstallResult) -> None:
    tap = w.taps.get(res.tap_id)
    if tap is None or not tap.live:
        return
    was_inflight = tap.inflight == "install"
    tap = w.put(tap, inflight=None if was_inflight else tap.inflight,
                cookie=res.cookie if res.cookie is not None else tap.cookie)
    if tap.state == "expiring":
        # released while the install was in flight: now it may be removed
        if tap.inflight is None and w.controller_up:
            _remove(w, tap)
        return
    if tap.state == "active":
        return
    if res.ok:
        tap = w.put(tap, state="active", attempts=0, next_attempt_at=0.0, reason="")
        if budget.has_budget(tap) and not tap.counters_at:
            packet_rate, byte_rate = budget.initial_rates(tap)
            tap = w.put(tap, counters_at=w.now, counted_at=w.now, packet_rate=packet_rate,
                        byte_rate=byte_rate)
        w.record_tap(tap, "active", "controller confirmed the install", cookie=res.cookie)
        return
    if res.unreachable:
        tap = w.put(tap, reason=f"controller unreachable: {res.error}",
                    next_attempt_at=w.now + w.ctx.limits.retry_backoff)
        w.record_tap(tap, "install_deferred", tap.reason, error=res.error)
        return
    attempts = tap.attempts + 1
    if attempts >= w.ctx.limits.max_attempts:
        tap = w.put(tap, attempts=attempts)
        w.hold(tap.policy, tap.flow_key, w.ctx.limits.failure_holddown)
        _end(w, tap, "failed", "failed", f"install failed {attempts} times: {res.error}",
             error=res.error)
        _offer_room(w)
        return
    delay = _retry_delay(w, attempts)
    tap = w.put(tap, attempts=attempts, reason=f"install failed: {res.error}",
                next_attempt_at=w.now + delay)
    w.record_tap(tap, "install_failed", f"install failed (attempt {attempts}), retry in {delay:g}s",
                 error=res.error)


def _on_remove(w: _Work, res: RemoveResult) -> None:
    tap = w.taps.get(res.tap_id)
    if tap is None:
        return
    counters = {"packets": max(tap.packets, res.packets), "bytes": max(tap.bytes, res.bytes)}
    if not tap.live:
        w.put(tap, **counters)
        return
    tap = w.put(tap, inflight=None if tap.inflight == "remove" else tap.inflight, **counters)
    if tap.state != "expiring":
        return
    if res.ok:
        _end(w, tap, "removed", "removed", f"controller removed the mirror ({tap.reason})",
             release_reason=tap.reason, packets=tap.packets, bytes=tap.bytes)
        _offer_room(w)
        return
    attempts = tap.attempts + (0 if res.unreachable else 1)
    delay = _retry_delay(w, max(1, attempts))
    tap = w.put(tap, attempts=attempts, next_attempt_at=w.now + delay)
    w.record_tap(tap, "remove_failed", f"remove failed, retry in {delay:g}s", error=res.error)


def _on_mirror_removed(w: _Work, ev: MirrorRemoved) -> None:
    tap = w.taps.get(ev.tap_id)
    if tap is None:
        return
    counters = {"packets": max(tap.packets, ev.packets), "bytes": max(tap.bytes, ev.bytes)}
    if not tap.live:
        w.put(tap, **counters)
        return
    tap = w.put(tap, **counters)
    if tap.state == "expiring":
        _end(w, tap, "removed", "removed", f"switch removed the mirror ({ev.reason})",
             switch_reason=ev.reason, release_reason=tap.reason)
    else:
        policy = w.policy(tap.policy)
        w.hold(tap.policy, tap.flow_key, policy.holddown if policy else 0.0)
        _end(w, tap, "removed", "removed", f"switch removed the mirror ({ev.reason})",
             switch_reason=ev.reason)
    _offer_room(w)


def _on_counters(w: _Work, read: MirrorCounters) -> None:
    """The switches' counters: kept on the taps (never going back: a re-installed
    entry starts from 0), and a tap whose budget they reach is released."""
    at = w.now if read.read_at is None else read.read_at
    seen = set()
    for tap_id, packets, octets in read.counters:
        tap = w.taps.get(tap_id)
        if tap is None:
            continue
        seen.add(tap_id)
        packets, octets = max(tap.packets, int(packets)), max(tap.bytes, int(octets))
        if tap.state != "active" or not budget.has_budget(tap):
            if (packets, octets) != (tap.packets, tap.bytes):
                w.put(tap, packets=packets, bytes=octets)
            continue
        refresh = w.ctx.limits.counter_refresh
        change = budget.changed(tap, packets, octets, at, refresh)
        if change is None:  # not moved: as stale as it was (or the flow paused)
            tap = w.put(tap, counters_at=max(at, tap.counters_at))
        elif budget.settles(tap, change[0], refresh):  # credit from before it was live
            tap = w.put(tap, packets=packets, bytes=octets, counters_at=max(at, tap.counters_at),
                        counted_at=change[0], base_packets=packets, base_bytes=octets)
        else:
            when, rates = change
            if rates is None:  # nothing to measure a rate over: only the counts move
                tap = w.put(tap, packets=packets, bytes=octets,
                            counters_at=max(at, tap.counters_at), counted_at=when)
            else:
                prior = {} if not tap.rate_measured else {
                    "prior_packets": tap.packets, "prior_bytes": tap.bytes,
                    "prior_at": tap.counted_at, "prior_packet_rate": tap.packet_rate,
                    "prior_byte_rate": tap.byte_rate}
                tap = w.put(tap, packets=packets, bytes=octets,
                            counters_at=max(at, tap.counters_at), counted_at=when,
                            packet_rate=rates[0], byte_rate=rates[1], rate_measured=True,
                            **prior)
        _check_budget(w, tap, at)
    for tap_id in list(w.idx.budgeted):
        tap = w.taps[tap_id]
        if tap_id not in seen and tap.state == "active" and at > tap.counters_at:
            # not on the switch (yet): read again, but not at once
            w.put(tap, counters_at=at + budget.READ_MIN - budget.READ_FLOOR)


def _check_budget(w: _Work, tap: Tap, at: float) -> None:
    hit = budget.reached(tap, at, w.ctx.limits.counter_refresh)
    if hit is not None and tap.state in ("pending", "active"):
        limit, cause = hit
        _release(w, tap, cause, limit=limit, packets=tap.packets, bytes=tap.bytes)


def counters_due(state: State, ctx: Context) -> float | None:
    """When the runtime must next read the mirrors' counters (``list_mirrors``) and
    feed them as ``MirrorCounters`` (None: no active tap has a budget)."""
    index = state.index[2] if state.index is not None and state.index[0] is state.taps \
        else TapIndex.build(state.taps.values(), ())
    return budget.reads_due((state.taps[tap_id] for tap_id in index.budgeted),
                            ctx.limits.counter_refresh)


def _on_controller(w: _Work, status: ControllerStatus) -> None:
    if status.up == w.controller_up:
        return
    w.controller_up = status.up
    w.record(None, "controller_up" if status.up else "controller_down",
             "controller connected" if status.up else "controller unreachable")
    for tap in list(w.taps.values()):
        if not tap.live:
            continue
        if not status.up:
            # answers to calls in flight may never come: send them again when it is back
            w.put(tap, inflight=None)
        elif tap.inflight is None:
            if tap.state == "pending":
                _install(w, w.put(tap, next_attempt_at=0.0))
            elif tap.state == "expiring" and tap.sent:
                _remove(w, tap)


def _on_release(w: _Work, op: OperatorRelease) -> None:
    tap = w.taps.get(op.tap_id)
    if tap is None or tap.state not in ("pending", "active"):
        state = tap.state if tap else "unknown"
        w.record(op.tap_id, "release_ignored", f"operator {op.who} asked to release a tap that "
                 f"is {state}", operator=op.who)
        if tap is None:
            w.answer(op.ref, "unknown_tap", "unknown", f"no live tap {op.tap_id!r}")
        else:  # asking twice is not an error: it is being (or has been) released
            w.answer(op.ref, "ok", "already_released",
                     f"tap {op.tap_id} is already {state}" + (f" ({tap.reason})" if tap.reason
                                                              else ""), op.tap_id)
        return
    _release(w, tap, f"released by operator {op.who}", operator=op.who)
    w.answer(op.ref, "ok", "releasing", "release requested", op.tap_id)


def _on_operator_tap(w: _Work, op: OperatorTap) -> None:
    """Tap a flow now for the operator, under every cap and the budget (an answer,
    never a wait: a request that does not fit is refused with the reason)."""
    policy = w.policy(op.policy)
    who = f"operator {op.who}"
    if policy is None:
        w.record(None, "operator_refused", f"{who}: no policy {op.policy!r}", policy=op.policy,
                 flow_key=op.flow_key, operator=op.who)
        w.answer(op.ref, "unknown_policy", "not_tapped", f"not tapped: no policy named "
                 f"{op.policy!r}")
        return
    tap = w.tap_of(policy.name, op.flow_key)
    if tap is not None and tap.state in ("pending", "active"):
        until = max(tap.hold_until, w.now + op.hold)
        longer = until > tap.expires_at
        tap = w.put(tap, last_trigger_at=w.now, hold_until=until,
                    expires_at=max(tap.expires_at, until))
        w.record_tap(tap, "extended", f"{who}: held for {op.hold:g}s", operator=op.who)
        w.answer(op.ref, "ok", "extended", f"extended {tap.tap_id}: {who}: held for "
                 f"{op.hold:g}s", tap.tap_id)
        if longer and tap.state == "active" and tap.inflight is None:
            # The switch's hard timeout would cut the hold short: install again (same
            # tap id: the controller replaces the entry) with the later one.
            tap = w.put(tap, state="pending", reason="re-installing with a later hard timeout")
            if w.controller_up:
                _install(w, tap)
        return
    if tap is not None:
        why = f"tap {tap.tap_id} of this flow is being removed; ask again once it is gone"
        w.record(None, "operator_refused", f"{who}: {why}", policy=policy.name,
                 flow_key=op.flow_key, operator=op.who)
        w.answer(op.ref, "conflict", "not_tapped", f"not tapped: {why}", tap.tap_id)
        return
    key = (policy.name, op.flow_key)
    if key in w.holddown:
        w.unhold(key)  # the operator's word overrides a hold-down
    w.drop_cand(key)
    cand = Candidate(policy=policy.name, flow_key=op.flow_key,
                     first_seen=w.now - policy.sustain_s, last_seen=w.now,
                     value=policy.from_bps(op.rate_bps), rate_bps=op.rate_bps, agent=op.agent,
                     data_source=op.data_source, trigger=f"{who}: tap for {op.hold:g}s")
    at = Location(op.dpid, op.in_port) if op.dpid is not None and op.in_port is not None else None
    if at is None and op.unlocated:
        # Nobody knows where it enters: the operator hears why, nothing waits.
        w.record(None, "operator_refused", f"{who}: not tapped: {op.unlocated}",
                 policy=policy.name, flow_key=op.flow_key, operator=op.who)
        w.answer(op.ref, "refused", "not_tapped", f"not tapped: {op.unlocated}")
        return
    w.refusal = None
    if _try_admit(w, policy, cand, at=at, hold=op.hold):
        tap = w.tap_of(policy.name, op.flow_key)
        assert tap is not None
        w.answer(op.ref, "ok", "tapped", f"tapped {tap.tap_id} at dpid {tap.dpid} port "
                 f"{tap.in_port}, copy up port {tap.copy_port}", tap.tap_id)
        return
    waiting = w.watch.get(key)
    if waiting is not None:  # no room now: the operator hears why, nothing waits
        w.drop_cand(key)
        w.record(None, "operator_refused", f"{who}: not tapped: {waiting.waiting}",
                 policy=policy.name, flow_key=op.flow_key, operator=op.who)
    code, reason = w.refusal or ("refused", "the core took no decision")
    w.answer(op.ref, code, "not_tapped", f"not tapped: {reason}")


def _on_pause(w: _Work, op: PausePolicy) -> None:
    known = op.name in w.ctx.policies
    if op.ref is not None:  # a request: answered, and only a known policy is paused
        if not known:
            w.answer(op.ref, "unknown_policy", "unknown", f"no policy named {op.name!r}")
            return
        if op.name in w.paused:
            w.answer(op.ref, "ok", "already_paused", "already paused")
            return
        w.answer(op.ref, "ok", "paused", "paused")
    w.paused.add(op.name)
    for key in [k for k in w.watch if k[0] == op.name]:
        w.drop_cand(key)
    w.record(None, "paused", f"policy {op.name} paused by {op.who}" + ("" if known else
             " (no such policy loaded)"), policy=op.name, operator=op.who)


def _on_resume(w: _Work, op: ResumePolicy) -> None:
    if op.ref is not None:
        if op.name not in w.ctx.policies and op.name not in w.paused:
            w.answer(op.ref, "unknown_policy", "unknown", f"no policy named {op.name!r}")
            return
        if op.name not in w.paused:
            w.answer(op.ref, "ok", "not_paused", "not paused")
            return
        w.answer(op.ref, "ok", "resumed", "resumed")
    w.paused.discard(op.name)
    w.record(None, "resumed", f"policy {op.name} resumed by {op.who}", policy=op.name,
             operator=op.who)


def _on_reconcile(w: _Work, rec: Reconcile) -> None:
    # A new controller session (start-up or reconnect): answers to calls sent
    # before it will never come, so nothing counts as in flight any more.
    for tap in list(w.taps.values()):
        if tap.live and tap.inflight is not None:
            w.put(tap, inflight=None)
    held: dict[str, Mapping[str, Any]] = {}
    strays: list[Mapping[str, Any]] = []
    for mirror in rec.mirrors:
        tap_id = mirror.get("tap_id")
        if tap_id is None or tap_id == "":
            strays.append(mirror)
        else:
            held[str(tap_id)] = mirror
    _reconcile_strays(w, strays, held)
    for tap_id, mirror in held.items():
        tap = w.taps.get(tap_id)
        counters = {"packets": max(tap.packets, int(mirror.get("packets") or 0)),
                    "bytes": max(tap.bytes, int(mirror.get("bytes") or 0))} if tap else {}
        if tap is None or not tap.live:
            why = "unknown to the daemon" if tap is None else f"tap is {tap.state}"
            w.commands.append(RemoveMirror(tap_id=tap_id, reason=f"orphan mirror ({why})"))
            w.record(tap_id, "orphan", f"reconcile: switch holds an orphan mirror ({why}), "
                     "removing it", dpid=mirror.get("dpid"))
            continue
        if (counters["packets"], counters["bytes"]) != (tap.packets, tap.bytes):
            counters["counted_at"] = w.now  # first seen now (the rates stay as measured)
        tap = w.put(tap, **counters)
        if tap.state == "active" and budget.has_budget(tap):
            _check_budget(w, tap, w.now)
            tap = w.taps[tap_id]
        if tap.state == "pending" and tap.inflight is None:
            tap = w.put(tap, state="active", sent=True, attempts=0, reason="",
                        cookie=mirror.get("cookie", tap.cookie))
            w.record_tap(tap, "active", "reconcile: the switch already holds the mirror")
        elif tap.state == "expiring" and tap.inflight is None:
            _remove(w, w.put(tap, sent=True))
    for tap in list(w.taps.values()):
        if not tap.live or tap.tap_id in held or tap.inflight is not None:
            continue
        if tap.state == "active":
            tap = w.put(tap, state="pending", reason="reconcile: missing on the switch")
            w.record_tap(tap, "reinstall", "reconcile: the switch lost the mirror, re-installing")
            if w.controller_up:
                _install(w, tap)
        elif tap.state == "expiring":
            _end(w, tap, "removed", "removed", "reconcile: already gone from the switch",
                 release_reason=tap.reason)
    _sweep(w)
    _admit_waiting(w)


def _reconcile_strays(w: _Work, strays: list[Mapping[str, Any]],
                      held: dict[str, Mapping[str, Any]]) -> None:
    """Mirror entries the component lists with ``"tap_id": null`` (it does not know
    them: it restarted without its state file). ``remove_mirror`` takes only a tap id
    and removes such entries by that id's deterministic cookie, so a stray whose
    cookie is the cookie of a tap we know is handled as that tap's mirror: an ended
    tap's is removed, a live tap's is left to its re-install (which adopts the
    entries). Any other stray cannot be removed over RPC: it is recorded once while
    it stays on its switch (its hard timeout ends it), never "removed" in a loop."""
    ours = {cookie_for_tap(tap_id): tap_id for tap_id in w.taps}
    reported: set[tuple[int, int]] = set()
    for mirror in strays:
        cookie, dpid = mirror.get("cookie"), mirror.get("dpid")
        tap_id = ours.get(cookie) if isinstance(cookie, int) else None
        if tap_id is not None:
            if not w.taps[tap_id].live:
                held.setdefault(tap_id, mirror)
            continue
        key = (int(dpid) if isinstance(dpid, int) else -1,
               cookie if isinstance(cookie, int) else -1)
        reported.add(key)
        if key in w.strays:
            continue
        shown = f"{cookie:#x}" if isinstance(cookie, int) else repr(cookie)
        w.record(None, "orphan", f"reconcile: switch {dpid} holds mirror entries with cookie "
                 f"{shown} that no tap of the daemon owns; the controller's RPC cannot remove "
                 "them (remove_mirror takes a tap id): they end at their hard timeout, or "
                 f"delete them on the switch (ovs-ofctl del-flows BRIDGE cookie={shown}/-1)",
                 dpid=dpid, cookie=cookie, packets=mirror.get("packets"),
                 bytes=mirror.get("bytes"))
    w.strays = frozenset(reported)


_HANDLERS: dict[type, Any] = {
    ThresholdEvent: _on_event, TopFlows: _on_top, Tick: _on_tick, InstallResult: _on_install,
    RemoveResult: _on_remove, MirrorRemoved: _on_mirror_removed, MirrorCounters: _on_counters,
    ControllerStatus: _on_controller,
    OperatorRelease: _on_release, OperatorTap: _on_operator_tap, PausePolicy: _on_pause, ResumePolicy: _on_resume,
    Reconcile: _on_reconcile,
}
