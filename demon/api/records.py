"""The JSON the daemon's API answers with (see docs/api.md)."""

from __future__ import annotations

import time
from typing import Any, Iterable, Mapping

from demon.model import LIVE_STATES, Tap
from demon.runtime.view import Snapshot, Transition, tap_record

STATES = ("pending", "active", "expiring", "removed", "failed")


def tap_json(tap: Tap) -> dict[str, Any]:
    """``tap_to_dict`` plus ``live``; a shallow copy of the fields (``asdict`` deep-copies
    every value: 25x slower, which 1,000 taps feel)."""
    data = dict(vars(tap))
    data["match"] = dict(tap.match)
    data["live"] = tap.state in LIVE_STATES
    return data


def _policy_of(snap: Snapshot, name: str) -> Any:
    return snap.policies.get(name)


def _dump(model: Any) -> Any:
    dump = getattr(model, "model_dump", None)
    return dump(mode="json") if dump else None


def story_json(snap: Snapshot, tap: Tap, transitions: Iterable[Transition]) -> dict[str, Any]:
    """One tap's full story: what triggered it, where it was placed, every
    transition with its cause, its counters."""
    records = [t.to_json() for t in transitions]
    created = next((r for r in records if r["kind"] == "created"), None)
    detail = created["detail"] if created else {}
    return {
        "tap": tap_json(tap),
        "trigger": {"cause": tap.trigger, "event_id": detail.get("event_id"),
                    "agent": tap.agent or None, "data_source": tap.data_source or None,
                    "rate_bps": detail.get("rate_bps", tap.rate_bps),
                    "operator": detail.get("operator")},
        "placement": {"dpid": tap.dpid, "in_port": tap.in_port, "copy_port": tap.copy_port,
                      "vlan_tag": tap.vlan_tag, "bidirectional": tap.bidirectional,
                      "match": dict(tap.match)},
        "counters": {"packets": tap.packets, "bytes": tap.bytes},
        "capture": tap_record(tap),
        "transitions": records,
        # The capture host names its files; the daemon does not see them.
        "capture_files": None,
    }


def policies_json(snap: Snapshot) -> dict[str, Any]:
    live: dict[str, int] = {}
    for tap in snap.live_taps():
        live[tap.policy] = live.get(tap.policy, 0) + 1
    out = []
    for name in sorted(snap.policies):
        pol = snap.policies[name]
        out.append({"name": name, "kind": getattr(pol, "kind", None),
                    "description": getattr(pol, "description", ""),
                    "enabled": bool(getattr(pol, "enabled", True)),
                    "paused": name in snap.state.paused,
                    "flow_name": getattr(pol, "flow_name", None),
                    "priority": getattr(pol, "priority", None),
                    "max_taps": getattr(pol, "max_taps", None),
                    "live_taps": live.get(name, 0),
                    "definition": _dump(pol)})
    return {"policies": out, "paused": sorted(snap.state.paused), "reload": dict(snap.reload),
            "limits": _dump(snap.limits)}


def budget(snap: Snapshot) -> dict[str, Any]:
    used = sum(t.rate_bps for t in snap.live_taps())
    total = getattr(snap.limits, "capture_capacity", None)
    return {"used_bps": used, "total_bps": total}


def status_json(snap: Snapshot, api: Mapping[str, Any]) -> dict[str, Any]:
    by_state = {s: 0 for s in STATES}
    for tap in snap.state.taps.values():
        by_state[tap.state] = by_state.get(tap.state, 0) + 1
    for tap in snap.archive.values():
        if tap.tap_id not in snap.state.taps:
            by_state[tap.state] = by_state.get(tap.state, 0) + 1
    now = time.time()
    return {
        "version": snap.version,
        "started_at": snap.started_at,
        "uptime_s": round(now - snap.started_at, 3),
        "as_of": snap.at,
        "engine": dict(snap.engine),
        "controller": dict(snap.controller),
        "policies": {"loaded": sorted(snap.policies), "paused": sorted(snap.state.paused),
                     "last_reload": dict(snap.reload)},
        "taps": {"live": sum(by_state[s] for s in LIVE_STATES), "by_state": by_state},
        "capture_budget": budget(snap),
        "store": dict(snap.store),
        "notifications": dict(snap.notifications),
        "last_transition_id": snap.last_id,
        "counters": dict(snap.counters),
        "api": dict(api),
    }
