"""What the producers (engine side, controller side, scheduler, API, signals) put
on the mutator's queue besides the core's own inputs."""

from __future__ import annotations

from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any

from demon.model import OperatorTap
from demon.topology import Topology
from sflow.client import Event


@dataclass(frozen=True)
class _Events:
    events: list[Event]
    #: Epoch seconds: events stamped earlier are skipped (the cursor still advances).
    skip_before: float | None = None


@dataclass(frozen=True)
class _PollRequests:
    """Look at the state file's operator queue (``demon-tap --state``)."""


@dataclass(frozen=True)
class _Reload:
    pass


@dataclass(frozen=True)
class _Stop:
    why: str


@dataclass(frozen=True)
class _Prune:
    pass


@dataclass(frozen=True)
class _Flush:
    """Nothing to decide: save what other threads asked to keep (``meta_out``) now."""


@dataclass(frozen=True)
class _NewTopology:
    """Kept for callers that hand the mutator a whole topology (tests, benchmarks)."""

    topology: Topology


@dataclass(frozen=True)
class _PortMap:
    """The engine's port map, read again (in the order the reads were made)."""

    port_map: list[Any]


@dataclass(frozen=True)
class _Switches:
    """The controller's switch list, read again."""

    switches: list[dict[str, Any]]


@dataclass(frozen=True)
class _ControllerBack:
    switches: list[dict[str, Any]]
    mirrors: list[dict[str, Any]]


@dataclass(frozen=True)
class _Redefine:
    """Define every running policy in the engine again (it forgot them: restart)."""

    why: str


@dataclass(frozen=True)
class Ask:
    """An operator's request, from the API or the state file's queue.

    ``kind``: release (``target`` = tap id), pause/resume (``target`` = policy),
    tap (``policy``, ``flow_key``, ``hold``, ``at``). ``ref``: how the answer
    finds its way back (``api:N``, ``req:N``).
    """

    kind: str
    who: str
    target: str = ""
    policy: str = ""
    flow_key: str = ""
    hold: float | None = None
    at: tuple[int, int] | None = None
    ref: str = ""


@dataclass(frozen=True)
class _Call:
    """An API write: ``ask`` for the core; ``future`` gets the ``Answer``."""

    ask: Ask
    future: "Future[Any]" = field(compare=False)


@dataclass(frozen=True)
class _Located:
    """Where an operator's flow enters, as the engine said (``tap``) — or, with
    ``tap.unlocated``, why nobody knows."""

    ask: Ask
    tap: OperatorTap
