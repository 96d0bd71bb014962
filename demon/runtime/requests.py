"""Operator requests: what the API and the state file's queue ask for, turned into
the decision core's inputs.

A collaborator of the mutating loop (``demon.runtime.loop``), not a mixin: it
needs only the store (the queue ``demon-tap --state`` writes), the engine side
(to ask where a flow enters) and, for each request, the state and context the
loop holds at that moment, which the loop passes in, so that the loop stays the
one owner of both. It never steps the core: it gives back the input (or the
answer) and the loop steps it, in the order the requests came.
"""

from __future__ import annotations

import logging
from dataclasses import replace
from typing import Any, Collection

from demon.core import Context
from demon.model import Answer, OperatorRelease, OperatorTap, PausePolicy, ResumePolicy, State
from demon.runtime.engine_side import EngineSide
from demon.runtime.items import Ask
from demon.store import OperatorRequest, Store, StoreError
from demon.tap_request import TapRequest

log = logging.getLogger("demon.runtime")


class OperatorRequests:
    """The operator's requests on their way to the core. Used by the mutator only."""

    def __init__(self, store: Store, engine: EngineSide) -> None:
        self.store = store
        self.engine = engine
        #: Refs of tap requests waiting for the engine (``/activeflows``, asked on
        #: another thread): the queue must not hand them over again meanwhile.
        self.looking_up: set[str] = set()

    def queued(self, handled: Collection[str], now: float) -> list[Ask | Answer]:
        """The state file's pending requests (expiring the stale ones first), oldest
        first, but those ``handled`` or being looked up: an :class:`Ask` each, or the
        answer to one that cannot be read as a request."""
        try:
            expired = self.store.expire_requests(now)
            pending = self.store.pending_requests(now)
        except StoreError as exc:
            log.debug("operator queue unreadable: %s", exc)
            return []
        if expired:
            log.info("%d queued operator request(s) expired unanswered", expired)
        skip = set(handled) | self.looking_up
        return [from_request(request) for request in pending
                if f"req:{request.id}" not in skip]

    def located(self, ref: str) -> None:
        """The engine answered where the flow of request ``ref`` enters."""
        self.looking_up.discard(ref)

    def to_input(self, ask: Ask, state: State, ctx: Context | None) -> Any:
        """The core's input for ``ask`` (the core answers it); an :class:`Answer`
        for a kind nobody knows; None while the engine is asked where the flow
        enters (the input comes back to the loop as ``_Located``)."""
        if ask.kind == "release":
            return OperatorRelease(tap_id=ask.target, who=ask.who, ref=ask.ref)
        if ask.kind == "pause":
            return PausePolicy(name=ask.target, who=ask.who, ref=ask.ref)
        if ask.kind == "resume":
            return ResumePolicy(name=ask.target, who=ask.who, ref=ask.ref)
        if ask.kind == "tap":
            return self._tap(ask, state, ctx)
        return Answer(ask.ref, "invalid", "unknown", f"unknown request kind {ask.kind!r}")

    def _tap(self, ask: Ask, state: State, ctx: Context | None) -> OperatorTap | None:
        """Where the flow enters: the operator's ``at``, else where the daemon last saw
        it, else the engine's ``/activeflows`` (asked on another thread: the core gets
        the request when that answer is back)."""
        assert ctx is not None
        pol = ctx.policies.get(ask.policy)
        base = OperatorTap(policy=ask.policy, flow_key=ask.flow_key, who=ask.who,
                           hold=ask.hold or (float(pol.duration) if pol else 0.0), ref=ask.ref)
        if pol is None:
            return base  # the core answers: no such policy
        if ask.at is not None:
            return replace(base, dpid=ask.at[0], in_port=ask.at[1])
        cand = state.watch.get((ask.policy, ask.flow_key))
        if cand is not None:
            return replace(base, agent=cand.agent, data_source=cand.data_source,
                           rate_bps=cand.rate_bps)
        seen = [t for t in state.taps.values()
                if t.policy == ask.policy and t.flow_key == ask.flow_key and t.dpid]
        if seen:
            last = max(seen, key=lambda t: t.created_at)
            return replace(base, dpid=last.dpid, in_port=last.in_port, rate_bps=last.rate_bps)
        self.looking_up.add(ask.ref)
        self.engine.locate(ask, base)
        return None


def from_request(request: OperatorRequest) -> Ask | Answer:
    """A queued request as an :class:`Ask`; a tap request that does not parse is
    answered at once."""
    ref = f"req:{request.id}"
    if request.kind != "tap":
        return Ask(kind=request.kind, who=request.who, target=request.target, ref=ref)
    try:
        req = TapRequest.from_target(request.target)
    except ValueError as exc:
        return Answer(ref, "invalid", "not_tapped", f"not tapped: bad request: {exc}")
    return Ask(kind="tap", who=request.who, policy=req.policy, flow_key=req.flow_key,
               hold=req.hold, at=req.at, ref=ref)
