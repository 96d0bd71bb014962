"""OpenFlow 1.0 compilation of mirrors, with overlapping mirrors merged.

Pure and standard library only (the POX component imports it). Matches are the
neutral OXM-style dicts of :mod:`demon.controller.spec` and actions the neutral
strings of :mod:`demon.controller.fabric` (``NORMAL``, ``output:6``,
``push_vlan:0x8100``, ``set_field:vlan_vid=10``); this module turns them into
OpenFlow 1.0 match fields and action tuples, and back.

Merging overlapping mirrors is version-neutral and lives in
:mod:`demon.controller.merge` (re-exported here); this module adds OpenFlow
1.0's copy actions (:func:`compile_mirrors`): forwarding first, untagged copies,
then one ``set_vlan_vid`` per tag (it adds or rewrites the tag).
"""

from __future__ import annotations

from typing import Any, Callable, Iterable, Mapping, Sequence

from demon.controller.merge import (MAX_PRIORITY, MAX_REGIONS, CompiledEntry, EntryKey, MergeError,  # noqa: F401
                                    MirrorRule, RuleKey, _address_text, _net, canonical, copies, covers, diff,
                                    ended_rules, entry_key, intersect, kept_alive, matches_packet, ordered,
                                    regions, tap_record)
from demon.controller import merge
from demon.controller.spec import MirrorSpec

OFPP_IN_PORT = 0xFFF8
OFPP_TABLE = 0xFFF9
OFPP_NORMAL = 0xFFFA
OFPP_FLOOD = 0xFFFB
OFPP_ALL = 0xFFFC
OFPP_CONTROLLER = 0xFFFD
OFPP_LOCAL = 0xFFFE
OFPP_NONE = 0xFFFF
OFPP_MAX = 0xFF00
RESERVED_PORTS = {OFPP_IN_PORT: "IN_PORT", OFPP_TABLE: "TABLE", OFPP_NORMAL: "NORMAL", OFPP_FLOOD: "FLOOD",
                  OFPP_ALL: "ALL", OFPP_CONTROLLER: "CONTROLLER", OFPP_LOCAL: "LOCAL"}
_PORT_BY_NAME = {name: number for number, name in RESERVED_PORTS.items()}
#: OFPRR_* (OF1.0 §5.4.2) in the protocol's words.
REMOVED_REASONS = {0: "idle_timeout", 1: "hard_timeout", 2: "delete"}
_ADDRESS_FIELDS = ("ipv4_src", "ipv4_dst")
_NEUTRAL_TO_OF10 = {"in_port": "in_port", "vlan_vid": "dl_vlan", "eth_type": "dl_type", "ip_proto": "nw_proto",
                    "ipv4_src": "nw_src", "ipv4_dst": "nw_dst", "tcp_src": "tp_src", "tcp_dst": "tp_dst",
                    "udp_src": "tp_src", "udp_dst": "tp_dst", "eth_src": "dl_src", "eth_dst": "dl_dst"}

Action10 = tuple[Any, ...]
#: Something OpenFlow 1.0 cannot express; ``field`` names it (one class with the merge's errors).
Of10Error = MergeError


# ------------------------------------------------- neutral <-> OpenFlow 1.0

def to_of10_match(match: Mapping[str, Any], path: str = "params.match") -> dict[str, Any]:
    """Neutral match → OF1.0 ``ofp_match`` field values (IPv4 only)."""
    out: dict[str, Any] = {}
    for key, value in match.items():
        if key.startswith("ipv6_"):
            raise Of10Error(f"{path}.{key}", "IPv6 fields need OpenFlow 1.3 (this component speaks 1.0)")
        if key == "eth_type" and value == 0x86DD:
            raise Of10Error(f"{path}.eth_type", "IPv6 needs OpenFlow 1.3 (this component speaks 1.0)")
        if key not in _NEUTRAL_TO_OF10:
            raise Of10Error(f"{path}.{key}", "not expressible in OpenFlow 1.0")
        name = _NEUTRAL_TO_OF10[key]
        if key in ("eth_src", "eth_dst") and "/" in str(value):
            raise Of10Error(f"{path}.{key}", "OpenFlow 1.0 cannot mask MAC addresses")
        if key == "in_port" and value > OFPP_MAX:
            raise Of10Error(f"{path}.in_port", f"must be 1..{OFPP_MAX} on OpenFlow 1.0")
        out[name] = _address_text(_net(value)) if key in _ADDRESS_FIELDS else value
    return out


def from_of10_match(fields: Mapping[str, Any]) -> dict[str, Any]:
    """OF1.0 match fields (wildcarded ones absent or None) → neutral match."""
    out: dict[str, Any] = {}
    proto = fields.get("nw_proto")
    for name, value in fields.items():
        if value is None:
            continue
        if name == "in_port":
            out["in_port"] = value
        elif name == "dl_vlan":
            out["vlan_vid"] = value
        elif name == "dl_type":
            out["eth_type"] = value
        elif name == "nw_proto":
            out["ip_proto"] = value
        elif name in ("nw_src", "nw_dst"):
            out["ipv4_" + name[3:]] = _address_text(_net(value))
        elif name in ("tp_src", "tp_dst"):
            out[("udp_" if proto == 17 else "tcp_") + name[3:]] = value
        elif name in ("dl_src", "dl_dst"):
            out["eth_" + name[3:]] = str(value).lower()
    return ordered(out)


def _port(text: str) -> int:
    return _PORT_BY_NAME[text] if text in _PORT_BY_NAME else int(text)


def to_of10_actions(actions: Iterable[str]) -> list[Action10]:
    """Neutral action strings → ``("output", port)`` / ``("set_vlan_vid", v)`` / ``("strip_vlan",)``.

    ``push_vlan:0x8100`` followed by ``set_field:vlan_vid=V`` is OF1.0's single
    ``set_vlan_vid`` (which adds a tag to an untagged packet).
    """
    out: list[Action10] = []
    pending_push = False
    for action in actions:
        if action in _PORT_BY_NAME:
            out.append(("output", _PORT_BY_NAME[action]))
        elif action.startswith("output:"):
            out.append(("output", _port(action.split(":", 1)[1])))
        elif action == "push_vlan:0x8100":
            pending_push = True
        elif action.startswith("set_field:vlan_vid="):
            out.append(("set_vlan_vid", int(action.split("=", 1)[1])))
            pending_push = False
        elif action in ("pop_vlan", "strip_vlan"):
            out.append(("strip_vlan",))
        else:
            raise Of10Error("actions", f"{action!r} is not expressible in OpenFlow 1.0")
    if pending_push:
        raise Of10Error("actions", "push_vlan without set_field:vlan_vid")
    return out


def from_of10_actions(actions: Iterable[Action10]) -> tuple[str, ...]:
    out: list[str] = []
    for action in actions:
        if action[0] == "output":
            port = action[1]
            out.append(RESERVED_PORTS.get(port, f"output:{port}"))
        elif action[0] == "set_vlan_vid":
            out += ["push_vlan:0x8100", f"set_field:vlan_vid={action[1]}"]
        elif action[0] == "strip_vlan":
            out.append("pop_vlan")
        else:
            out.append(":".join(str(part) for part in action))
    return tuple(out)


# ------------------------------------------------------------------ mirrors

def rules_for(spec: MirrorSpec, cookie: int, installed_at: float) -> list[MirrorRule]:
    """The rules of a validated spec (checked for OF1.0 here: IPv6 is refused)."""
    for _, match in spec.directions():
        to_of10_match(match)
    return merge.rules_for(spec, cookie, installed_at)


def _copy_actions(rules: Iterable[MirrorRule]) -> tuple[str, ...]:
    untagged, tagged = copies(rules)
    out = [f"output:{port}" for port in untagged]
    current_vlan = None
    for vlan, port in tagged:  # untagged copies first: a set_vlan_vid applies to all later outputs
        if vlan != current_vlan:
            out += ["push_vlan:0x8100", f"set_field:vlan_vid={vlan}"]
            current_vlan = vlan
        out.append(f"output:{port}")
    return tuple(out)


def compile_mirrors(rules: Iterable[MirrorRule], now: float,
                    forward: Callable[[Mapping[str, Any]], tuple[str, ...]] = lambda match: ("NORMAL",)
                    ) -> list[CompiledEntry]:
    """Every OF1.0 entry one switch needs for ``rules`` (merged where they overlap).

    ``forward(match)`` is the switch's own forwarding for that traffic (``NORMAL``,
    or a static port pair); it comes first so the copies' VLAN tag never reaches it.
    """
    def actions(region: Mapping[str, Any], members: Sequence[MirrorRule]) -> tuple[str, ...]:
        return forward(region) + _copy_actions(members)
    return merge.compile_mirrors(rules, now, actions)
