"""The pure decision core: ``step(state, ctx, input, now) -> (state, commands)``.

No I/O, no clock, no randomness: the runtime owns all of those, executes the
returned commands (``InstallMirror``/``RemoveMirror`` over RPC, ``Record`` into
the store) and feeds their results back as inputs. Data types: ``demon.model``.

(Work in progress: the signature and Context are final; the rules follow.)
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Mapping

from demon.model import Command, Input, State

if TYPE_CHECKING:
    from demon.policy import GlobalLimits, Policy
    from demon.topology import Topology


@dataclass(frozen=True)
class Context:
    """The configuration a step decides under (rebuilt by the runtime on reload
    or when the topology changes)."""

    policies: Mapping[str, "Policy"]
    topology: "Topology"
    limits: "GlobalLimits"


def step(state: State, ctx: Context, inp: Input, now: float) -> tuple[State, list[Command]]:
    """Apply one input at time ``now``; return the new state and the commands."""
    raise NotImplementedError("decision core under construction")
