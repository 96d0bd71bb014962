"""A tap as the mirror book holds it, and its record in the state file.

Pure and standard library only (the POX component imports it).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping

from demon.controller.changes import Removed
from demon.controller.spec import MirrorSpec

DIRECTIONS = ("forward", "reverse")
Counters = dict[str, list[float]]  # direction → [packets, bytes, longest entry duration]


@dataclass
class Tap:
    """One tap: its spec, cookie, live directions, and the counters of its entries that
    have left the switch (so its figures accumulate across re-installs and restarts)."""

    spec: MirrorSpec
    cookie: int
    installed_at: float
    result: dict[str, Any]
    live: set[str]
    counters: Counters = field(default_factory=dict)
    #: False for a tap remembered from the state file until its switch's table is seen
    confirmed: bool = True

    def counts(self, direction: str) -> dict[str, Any]:
        packets, nbytes, duration = self.counters.get(direction, [0, 0, 0.0])
        return {"packets": int(packets), "bytes": int(nbytes), "duration_s": round(float(duration), 3)}

    def retired(self) -> tuple[int, int]:
        return total(self.counters)

    def record(self) -> dict[str, Any]:
        """Its state-file record (``demon.rpc.protocol.encode_state``)."""
        return {"params": self.spec.to_params(), "cookie": self.cookie, "installed_at": self.installed_at,
                "result": dict(self.result), "live": sorted(self.live),
                "counters": {d: {"packets": int(c[0]), "bytes": int(c[1]), "duration_s": round(c[2], 3)}
                             for d, c in sorted(self.counters.items())}}


@dataclass
class Removal:
    """A ``remove_mirror`` waiting for the final counters of the entries it deleted."""

    tap: Tap | None
    counters: Counters
    found: bool


def total(counters: Counters) -> tuple[int, int]:
    return int(sum(c[0] for c in counters.values())), int(sum(c[1] for c in counters.values()))


def add(counters: Counters, direction: str, removed: Removed) -> None:
    c = counters.setdefault(direction, [0, 0, 0.0])
    c[0] += removed.packets
    c[1] += removed.bytes
    c[2] = max(c[2], removed.duration_s)


def counters_of(record: Mapping[str, Any]) -> Counters:
    return {d: [c["packets"], c["bytes"], c["duration_s"]] for d, c in record.get("counters", {}).items()}
