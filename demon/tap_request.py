"""The operator's "tap this flow now" request (``demon-tap tap``), as queued in the
state file's ``requests`` table (``kind = 'tap'``, ``target`` = this JSON). The
daemon's answer is the decision core's (``demon.model.Answer``)."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass

TAPPED, EXTENDED, NOT_TAPPED = "tapped", "extended", "not tapped"


@dataclass(frozen=True)
class TapRequest:
    """``hold``: seconds the tap is kept at least (None: the policy's ``duration``);
    ``at``: (dpid, OpenFlow port) where the flow enters, when the operator knows."""

    policy: str
    flow_key: str
    hold: float | None = None
    at: tuple[int, int] | None = None

    def to_target(self) -> str:
        return json.dumps({"policy": self.policy, "flow": self.flow_key, "hold": self.hold,
                           "at": list(self.at) if self.at else None}, sort_keys=True)

    @classmethod
    def from_target(cls, text: str) -> "TapRequest":
        """Raises ValueError naming what is wrong."""
        try:
            data = json.loads(text)
        except ValueError:
            raise ValueError("a tap request's target must be JSON") from None
        if not isinstance(data, dict):
            raise ValueError("a tap request's target must be a JSON object")
        policy, flow, hold, at = data.get("policy"), data.get("flow"), data.get("hold"), data.get("at")
        if not isinstance(policy, str) or not policy:
            raise ValueError("field 'policy': a policy name is required")
        if not isinstance(flow, str) or not flow:
            raise ValueError("field 'flow': a flow key is required")
        if hold is not None and (isinstance(hold, bool) or not isinstance(hold, (int, float))
                                 or not 0 < hold <= 86400):
            raise ValueError(f"field 'hold': seconds above 0 and at most 86400, got {hold!r}")
        if at is not None:
            if (not isinstance(at, list) or len(at) != 2
                    or not all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in at)):
                raise ValueError(f"field 'at': [dpid, port] with positive integers, got {at!r}")
            at = (at[0], at[1])
        return cls(policy, flow, None if hold is None else float(hold), at)


_AT = re.compile(r"(?P<dpid>0[xX][0-9a-fA-F]+|[1-9][0-9]*|0)/(?P<port>[0-9]+)")


def parse_at(text: str) -> tuple[int, int]:
    """``"1/3"`` or ``"0x1/3"`` → (dpid, port); raises ValueError.

    Digits only: ``int()`` alone would also take ``"1_0"`` and `` 1 `` (Python's
    literal syntax, not how anyone names a switch port)."""
    match = _AT.fullmatch(text)
    if match is None:
        raise ValueError(f"--at: {text!r} is not DPID/PORT (e.g. 1/3 or 0x1/3)")
    value = (int(match["dpid"], 0), int(match["port"]))
    if value[0] <= 0 or value[1] <= 0:
        raise ValueError(f"--at: {text!r}: dpid and port must be positive")
    return value


def is_positive(outcome: str) -> bool:
    return outcome.startswith((TAPPED + " ", EXTENDED + " "))
