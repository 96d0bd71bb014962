"""Derived lookups over the core's state, kept up to date tap by tap.

Without them every step would scan every tap (one tap per flow key, caps,
budget, uplink load): fine for ten taps, slow for thousands. The index is pure
derived data: ``TapIndex.build`` recomputes it from ``State.taps``/``watch``
whenever a state arrives without one (loaded from the store, built by hand).
Tables are shared between successive steps and copied on first write, so a
step costs what it changes, not what the state holds.
"""

from __future__ import annotations

from typing import Any, Iterable, Mapping

from demon.model import Candidate, Tap

MirrorSig = tuple[int, tuple[tuple[str, Any], ...]]


def mirror_signature(dpid: int, match: Mapping[str, Any]) -> MirrorSig:
    """Two taps with the same signature would be the same mirror on the switch
    (``in_port`` aside: a bidirectional tap leaves it out)."""
    return (dpid, tuple(sorted((k, v) for k, v in match.items() if k != "in_port")))


def has_budget(tap: Tap) -> bool:
    return bool(tap.max_packets or tap.max_bytes)


class TapIndex:
    __slots__ = ("by_flow", "by_mirror", "per_policy", "uplinks", "live", "used_bps",
                 "waiting", "budgeted", "created", "_owned")

    def __init__(self) -> None:
        self.by_flow: dict[tuple[str, str], str] = {}       # (policy, flow key) → live tap id
        self.by_mirror: dict[MirrorSig, str] = {}            # signature → live tap id
        self.per_policy: dict[str, int] = {}                 # policy → live taps
        self.uplinks: dict[tuple[int, int], tuple[float, int]] = {}  # (dpid, port) → (bps, taps)
        self.live = 0
        self.used_bps = 0.0
        self.waiting = 0                                     # candidates waiting for room
        self.budgeted: dict[str, None] = {}                  # live taps with a packet/byte budget
        self.created: dict[str, tuple[float, ...]] = {}      # policy → created_at of its taps held
        self._owned: set[str] = set()

    @classmethod
    def build(cls, taps: Iterable[Tap], candidates: Iterable[Candidate]) -> "TapIndex":
        index = cls()
        index._owned = {"by_flow", "by_mirror", "per_policy", "uplinks", "budgeted", "created"}
        created: dict[str, list[float]] = {}
        for tap in taps:
            created.setdefault(tap.policy, []).append(tap.created_at)
            if tap.live:
                index._add(tap)
        index.created = {policy: tuple(sorted(times)) for policy, times in created.items()}
        index.waiting = sum(1 for c in candidates if c.waiting)
        return index

    def clone(self) -> "TapIndex":
        """A copy sharing every table until it writes to one."""
        other = TapIndex.__new__(TapIndex)
        for name in ("by_flow", "by_mirror", "per_policy", "uplinks", "live", "used_bps",
                     "waiting", "budgeted", "created"):
            setattr(other, name, getattr(self, name))
        other._owned = set()
        return other

    def _table(self, name: str) -> dict:
        if name not in self._owned:
            setattr(self, name, dict(getattr(self, name)))
            self._owned.add(name)
        return getattr(self, name)

    def _add(self, tap: Tap) -> None:
        self._table("by_flow")[(tap.policy, tap.flow_key)] = tap.tap_id
        self._table("by_mirror")[mirror_signature(tap.dpid, tap.match)] = tap.tap_id
        per = self._table("per_policy")
        per[tap.policy] = per.get(tap.policy, 0) + 1
        up = self._table("uplinks")
        rate, count = up.get((tap.dpid, tap.copy_port), (0.0, 0))
        up[(tap.dpid, tap.copy_port)] = (rate + tap.rate_bps, count + 1)
        self.live += 1
        self.used_bps += tap.rate_bps
        if has_budget(tap):
            self._table("budgeted")[tap.tap_id] = None

    def _discard(self, tap: Tap) -> None:
        key = (tap.policy, tap.flow_key)
        if self.by_flow.get(key) == tap.tap_id:
            del self._table("by_flow")[key]
        sig = mirror_signature(tap.dpid, tap.match)
        if self.by_mirror.get(sig) == tap.tap_id:
            del self._table("by_mirror")[sig]
        per = self._table("per_policy")
        per[tap.policy] = per.get(tap.policy, 0) - 1
        if per[tap.policy] <= 0:
            del per[tap.policy]
        up = self._table("uplinks")
        rate, count = up.get((tap.dpid, tap.copy_port), (0.0, 0))
        if count <= 1:
            up.pop((tap.dpid, tap.copy_port), None)
        else:
            up[(tap.dpid, tap.copy_port)] = (rate - tap.rate_bps, count - 1)
        self.live -= 1
        self.used_bps = self.used_bps - tap.rate_bps if self.live else 0.0
        if tap.tap_id in self.budgeted:
            del self._table("budgeted")[tap.tap_id]

    def tap_changed(self, old: Tap | None, new: Tap | None) -> None:
        if old is None and new is not None:
            times = self.created.get(new.policy, ())
            self._table("created")[new.policy] = times + (new.created_at,)
        elif new is None and old is not None:
            times = list(self.created.get(old.policy, ()))
            if old.created_at in times:
                times.remove(old.created_at)
            self._table("created")[old.policy] = tuple(times)
        was = old is not None and old.live
        now = new is not None and new.live
        if was and now and old is not None and new is not None and (
                old.copy_port == new.copy_port and old.dpid == new.dpid
                and old.policy == new.policy and old.flow_key == new.flow_key
                and old.match is new.match):
            # the common case, a trigger refresh: at most the rate moved
            if old.rate_bps != new.rate_bps:
                delta = new.rate_bps - old.rate_bps
                up = self._table("uplinks")
                rate, count = up[(new.dpid, new.copy_port)]
                up[(new.dpid, new.copy_port)] = (rate + delta, count)
                self.used_bps += delta
            return
        if was and old is not None:
            self._discard(old)
        if now and new is not None:
            self._add(new)

    def created_since(self, policy: str, since: float) -> int:
        """Taps of ``policy`` created after ``since`` (of those the state holds)."""
        return sum(1 for at in self.created.get(policy, ()) if at > since)

    def candidate_changed(self, old: Candidate | None, new: Candidate | None) -> None:
        self.waiting += (1 if new is not None and new.waiting else 0) - \
            (1 if old is not None and old.waiting else 0)
