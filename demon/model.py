"""The daemon's data: taps, history, the decision core's state, inputs and commands.

Plain frozen dataclasses (standard library only); ``demon.core.step`` is the only
code that makes new ones from old ones. The runtime feeds *inputs*, executes the
*commands* the core returns, and persists the new ``State`` (``state_to_dict`` /
``state_from_dict`` give a JSON-safe form).

Tap lifecycle (states)::

    pending ──install ok──► active ──released──► expiring ──remove ok──► removed
       │  ▲                   │                                 ▲
       │  └─ install failed, retry with backoff (attempts < max) │
       └──── attempts exhausted / no location ──► failed          │
                              switch removed it (idle/hard timeout, delete)

Times are epoch seconds (floats) and come from the ``now`` the runtime passes.

* ``expires_at`` is the hard deadline: ``created_at + policy.max_duration``.
* The soft deadline is ``release_at = last_trigger_at + policy.duration``: a tap
  is released when its trigger has not fired for ``duration`` (the condition has
  cleared) or at ``expires_at``, whichever comes first. An operator's tap
  (``OperatorTap``) is not released for a cleared condition before
  ``hold_until``.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Literal, Mapping, NamedTuple, Union

TapState = Literal["pending", "active", "expiring", "removed", "failed"]
LIVE_STATES: frozenset[str] = frozenset({"pending", "active", "expiring"})
TERMINAL_STATES: frozenset[str] = frozenset({"removed", "failed"})

# The RPC default OpenFlow priority of a mirror; a policy's priority is added.
BASE_OF_PRIORITY = 40000


@dataclass(frozen=True)
class Tap:
    """One mirror of one flow key, placed at one point (its ingress filter switch).

    ``match`` holds OXM fields per docs/rpc-protocol.md (``in_port`` included for
    one-directional taps; a bidirectional tap matches both directions so it
    leaves ``in_port`` out). ``rate_bps`` is the latest observed rate of the
    flow in bits/s (what the tap costs on the path to the capture host).
    ``inflight`` is the RPC the runtime was asked to run and has not answered
    yet (``"install"``/``"remove"``), ``next_attempt_at`` when a failed one may
    be retried.
    """

    tap_id: str
    policy: str
    flow_key: str
    match: Mapping[str, Any]
    dpid: int
    in_port: int
    copy_port: int
    vlan_tag: int | None
    bidirectional: bool
    state: TapState
    rate_bps: float
    priority: int
    created_at: float
    updated_at: float
    expires_at: float
    last_trigger_at: float
    attempts: int = 0
    reason: str = ""
    packets: int = 0
    bytes: int = 0
    trigger: str = ""
    agent: str = ""
    data_source: str = ""
    cookie: int | None = None
    inflight: str | None = None
    next_attempt_at: float = 0.0
    ended_at: float | None = None
    sent: bool = False  # an install was ever sent (so the switch may hold it)
    hold_until: float = 0.0  # an operator asked for it: not released for a cleared condition before
    # Budget: released once the switch's counters reach either (None: no limit).
    max_packets: int | None = None
    max_bytes: float | None = None
    # The last counter read (``MirrorCounters``), when the counters last changed (a
    # switch refreshes them periodically) and the rates measured between changes,
    # which say when the next read is due and what the counters stand for now
    # (``demon.budget``).
    counters_at: float = 0.0
    counted_at: float = 0.0
    packet_rate: float = 0.0
    byte_rate: float = 0.0
    rate_measured: bool = False  # False: the rates are the sFlow guess (plan reads only)
    # What the switch credited the mirror with before it was live (OVS revalidates at
    # once when its table changes and credits the new entry with what its datapath
    # forwarded since its last refresh); budgets count above it.
    base_packets: int = 0
    base_bytes: int = 0
    # The change of the counters before the last one, and the rates that led to it:
    # a refresh that shows much less than it should (Open vSwitch sometimes pushes
    # part of its statistics) is caught up by extrapolating from the one before.
    prior_packets: int = 0
    prior_bytes: int = 0
    prior_at: float = 0.0
    prior_packet_rate: float = 0.0
    prior_byte_rate: float = 0.0
    # What ended it: "duration" (condition cleared), "max_duration", "max_packets",
    # "max_bytes", "window" (a schedule's), "hold" (an operator's); "" otherwise.
    limit: str = ""

    @property
    def live(self) -> bool:
        return self.state in LIVE_STATES

    @property
    def mirror_key(self) -> tuple[int, tuple[tuple[str, Any], ...]]:
        """What the switch sees: two taps with the same key would be one mirror."""
        return (self.dpid, tuple(sorted(self.match.items())))


@dataclass(frozen=True)
class HistoryEntry:
    """One recorded transition. ``tap_id`` is None for decisions about a flow that
    never became a tap (refused, waiting) and for policy-level ones (paused).

    ``detail`` always names the cause: ``cause`` (readable sentence) plus the
    fields that apply: ``event_id``, ``policy``, ``flow_key``, ``operator``,
    ``switch_reason``, ``error``, ``state`` (the tap state after the transition).
    """

    tap_id: str | None
    at: float
    kind: str
    detail: Mapping[str, Any]


@dataclass(frozen=True)
class Candidate:
    """A flow a policy wants to tap but has not tapped yet.

    Either still proving it is sustained (``first_seen + sustain`` not reached)
    or waiting for room (caps, capture budget, a superseded tap to go away).
    Dropped when not seen again within the policy's staleness window.
    """

    policy: str
    flow_key: str
    first_seen: float
    last_seen: float
    value: float
    rate_bps: float
    agent: str
    data_source: str
    trigger: str
    event_id: int | None = None
    waiting: str = ""  # why it waits ("" = still sustaining)


@dataclass(frozen=True)
class State:
    """Everything the core decides from, besides the configuration.

    ``taps``: live taps plus terminal ones until ``limits.retain`` after they
    ended. ``holddown``: (policy, flow_key) → time before which that flow is not
    tapped again. ``watch``: (policy, flow_key) → Candidate. ``next_seq``
    numbers tap ids (``<policy>.<seq>``).

    ``observed``: policy → when its flows were last seen through a *complete*
    poll (``TopFlows.complete``). None (the default) keeps the plain time rule:
    a tap is released once its trigger has not fired for ``duration``. A dict
    (the runtime starts with an empty one) adds the evidence rule: that release
    also waits until a complete poll made after the deadline did not show the
    flow, so an outage of the daemon or the engine (no polls, or polls of an
    engine still re-learning its rates) never passes for a cleared condition.
    Not persisted: after a restart nothing has been observed yet.
    """

    taps: Mapping[str, Tap] = field(default_factory=dict)
    holddown: Mapping[tuple[str, str], float] = field(default_factory=dict)
    paused: frozenset[str] = frozenset()
    controller_up: bool = False
    watch: Mapping[tuple[str, str], Candidate] = field(default_factory=dict)
    next_seq: int = 1
    observed: Mapping[str, float] | None = None
    #: (dpid, cookie) of mirror entries no tap of ours owns and the RPC protocol cannot
    #: remove, already reported: each is recorded once while it stays on its switch.
    #: Not persisted (a restarted daemon says it once more).
    strays: frozenset[tuple[int, int]] = frozenset()
    # The core's derived lookups (demon.tapindex), valid only for these very
    # taps/watch objects; never persisted, rebuilt when missing.
    index: Any = field(default=None, compare=False, repr=False)

    def live_taps(self) -> list[Tap]:
        return [tap for tap in self.taps.values() if tap.live]


# ---------------------------------------------------------------------------
# Inputs (what the runtime feeds to ``demon.core.step``)


class FlowSighting(NamedTuple):
    """One row of ``/activeflows``: flow key, value (flow units), where seen."""

    key: str
    value: float
    agent: str
    data_source: str


@dataclass(frozen=True)
class ThresholdEvent:
    """An sFlow-RT threshold event (``/events/json``) for a policy's threshold."""

    event_id: int
    threshold_id: str
    policy: str
    agent: str
    data_source: str
    flow_key: str
    value: float
    threshold: float
    timestamp: float  # epoch seconds (sFlow-RT's ms / 1000)


@dataclass(frozen=True)
class TopFlows:
    """The policy's ``/activeflows`` poll (sorted or not; the core sorts).

    Feed it every ``policy.interval`` for *both* kinds: for top talkers it is
    the trigger; for elephants it is what keeps a tap alive while the flow
    stays above the threshold (sFlow-RT fires a byFlow threshold once per
    crossing, not while the flow stays above it).
    """

    policy: str
    flows: tuple[FlowSighting, ...] | list[FlowSighting]
    #: The engine answered with settled rates (not just after it (re)learnt the
    #: flow definition or came back from an outage): the poll is *evidence* that a
    #: flow missing from it has cleared (see ``State.observed``).
    complete: bool = True


@dataclass(frozen=True)
class Tick:
    """Periodic sweep: expiry, retries, admitting waiting candidates, purging."""


@dataclass(frozen=True)
class InstallResult:
    """Outcome of an ``InstallMirror``. ``unreachable``: the controller could not
    be reached (does not use up an attempt; resent when it is back)."""

    tap_id: str
    ok: bool
    error: str | None = None
    cookie: int | None = None
    unreachable: bool = False


@dataclass(frozen=True)
class RemoveResult:
    """Outcome of a ``RemoveMirror`` (counters are the last known)."""

    tap_id: str
    ok: bool
    packets: int = 0
    bytes: int = 0
    error: str | None = None
    unreachable: bool = False


@dataclass(frozen=True)
class MirrorRemoved:
    """Controller event ``mirror_removed``: the switch dropped the entries."""

    tap_id: str
    reason: str
    packets: int = 0
    bytes: int = 0


@dataclass(frozen=True)
class MirrorCounters:
    """The switches' packet/byte counters of mirrors (``list_mirrors``), read at
    ``read_at`` (epoch seconds; the step's ``now`` when None): ``counters`` holds
    ``(tap_id, packets, bytes)``. Feeds the per-tap budgets (``max_packets``,
    ``max_bytes``); the runtime reads them when ``demon.budget.reads_due`` says."""

    counters: tuple[tuple[str, int, int], ...] | list[tuple[str, int, int]]
    read_at: float | None = None


@dataclass(frozen=True)
class ControllerStatus:
    up: bool


@dataclass(frozen=True)
class OperatorRelease:
    """Release a tap now. ``ref``: the request this answers (the core then returns
    an ``Answer`` with the same ``ref``; None: no answer wanted)."""

    tap_id: str
    who: str
    ref: str | None = None


@dataclass(frozen=True)
class OperatorTap:
    """``demon-tap tap``: mirror this flow of this policy now, for ``hold`` s at least.

    Where the flow enters: ``dpid``/``in_port`` when the operator named it, else
    ``agent``/``data_source`` where the engine saw it (located through the port
    map like any sighting). ``rate_bps``: its rate as last seen (0 if unknown),
    what it costs of the capture budget.
    """

    policy: str
    flow_key: str
    who: str
    hold: float
    agent: str = ""
    data_source: str = ""
    dpid: int | None = None
    in_port: int | None = None
    rate_bps: float = 0.0
    ref: str | None = None
    #: Why nothing says where the flow enters (the engine's answer), when that is so.
    unlocated: str = ""


@dataclass(frozen=True)
class PausePolicy:
    name: str
    who: str
    ref: str | None = None


@dataclass(frozen=True)
class ResumePolicy:
    name: str
    who: str
    ref: str | None = None


@dataclass(frozen=True)
class Reconcile:
    """The controller's ``list_mirrors`` result (at start-up and on reconnect)."""

    mirrors: tuple[Mapping[str, Any], ...] | list[Mapping[str, Any]]


Input = Union[ThresholdEvent, TopFlows, Tick, InstallResult, RemoveResult, MirrorRemoved,
              MirrorCounters, ControllerStatus, OperatorRelease, OperatorTap, PausePolicy,
              ResumePolicy, Reconcile]


# ---------------------------------------------------------------------------
# Commands (what ``step`` asks the runtime to do)


@dataclass(frozen=True)
class InstallMirror:
    """Call ``install_mirror(**cmd.params())``; feed back an ``InstallResult``."""

    tap: Tap
    idle_timeout: int
    hard_timeout: int
    of_priority: int

    def params(self) -> dict[str, Any]:
        return {
            "tap_id": self.tap.tap_id,
            "dpid": self.tap.dpid,
            "match": dict(self.tap.match),
            "copy_port": self.tap.copy_port,
            "vlan_tag": self.tap.vlan_tag,
            "bidirectional": self.tap.bidirectional,
            "idle_timeout": self.idle_timeout,
            "hard_timeout": self.hard_timeout,
            "priority": self.of_priority,
        }


@dataclass(frozen=True)
class RemoveMirror:
    """Call ``remove_mirror(tap_id)``; feed back a ``RemoveResult``."""

    tap_id: str
    reason: str


@dataclass(frozen=True)
class Record:
    """Persist this history entry (and the tap as it is in the new state)."""

    entry: HistoryEntry


#: ``Answer.code`` values: done (or already so: operator requests are idempotent),
#: or why not.
ANSWER_CODES = ("ok", "unknown_tap", "unknown_policy", "conflict", "refused", "invalid")


@dataclass(frozen=True)
class Answer:
    """The core's one answer to an operator's request (the input's ``ref``).

    ``code``: see ``ANSWER_CODES``; ``outcome``: a short word for what happened
    (``tapped``, ``extended``, ``releasing``, ``already_released``, ``paused``,
    ``already_paused``, ``resumed``, ``not_paused``, ``not_tapped``, ...);
    ``message``: one readable line; ``tap_id``: the tap concerned, if any.
    """

    ref: str
    code: str
    outcome: str
    message: str
    tap_id: str | None = None

    @property
    def ok(self) -> bool:
        return self.code == "ok"


Command = Union[InstallMirror, RemoveMirror, Record, Answer]


# ---------------------------------------------------------------------------
# Persistence helpers (JSON-safe dicts)


def tap_to_dict(tap: Tap) -> dict[str, Any]:
    data = asdict(tap)
    data["match"] = dict(tap.match)
    return data


def tap_from_dict(data: Mapping[str, Any]) -> Tap:
    return Tap(**{**data, "match": dict(data["match"])})


def state_to_dict(state: State) -> dict[str, Any]:
    return {
        "taps": [tap_to_dict(tap) for tap in state.taps.values()],
        "holddown": [[policy, key, until] for (policy, key), until in state.holddown.items()],
        "paused": sorted(state.paused),
        "controller_up": state.controller_up,
        "watch": [asdict(c) for c in state.watch.values()],
        "next_seq": state.next_seq,
    }


def state_from_dict(data: Mapping[str, Any]) -> State:
    taps = {t["tap_id"]: tap_from_dict(t) for t in data.get("taps", [])}
    watch = {(c["policy"], c["flow_key"]): Candidate(**c) for c in data.get("watch", [])}
    return State(
        taps=taps,
        holddown={(p, k): float(u) for p, k, u in data.get("holddown", [])},
        paused=frozenset(data.get("paused", [])),
        controller_up=bool(data.get("controller_up", False)),
        watch=watch,
        next_seq=int(data.get("next_seq", 1)),
    )
