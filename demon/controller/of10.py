"""OpenFlow 1.0 compilation of mirrors, with overlapping mirrors merged.

Pure and standard library only (the POX component imports it). Matches are the
neutral OXM-style dicts of :mod:`demon.controller.spec` and actions the neutral
strings of :mod:`demon.controller.fabric` (``NORMAL``, ``output:6``,
``push_vlan:0x8100``, ``set_field:vlan_vid=10``); this module turns them into
OpenFlow 1.0 match fields and action tuples, and back.

Why merging: OpenFlow 1.0 has no groups and applies only the one
highest-priority entry that matches a packet. If two taps on one switch
overlap (a host tap and a 5-tuple tap of that host), separate entries would
give the overlap to one tap only. So the entries of a switch are compiled
together: every non-empty intersection of mirror matches becomes an entry of
its own carrying the copies of every tap whose match contains it, with a
priority above each entry it lies inside (``max(member priority) +
len(members) - 1``: strictly larger for a strictly smaller region of the
intersection closure). A packet then hits exactly the entry of the smallest
region containing it, which carries all copies it is owed.

Lifetimes: the entry whose match equals a tap's own match ("owned" entry)
carries the tap's idle timeout; every entry's hard timeout is the earliest
hard deadline of its members, so the switch itself removes copies for an
expired tap. After any change the component recompiles and applies the
difference: ADD for new or changed entries, DELETE_STRICT (match + priority)
for entries no longer wanted. A tap's idle timer only sees packets that hit
its owned entry, so when that entry idles out the component first asks
:func:`kept_alive` whether the tap's merged sub-regions counted packets since
it last looked; if so the tap lives on and its entry is re-added.
"""

from __future__ import annotations

import ipaddress
import math
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Mapping

from demon.controller.fabric import Entry
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
MAX_PRIORITY = 0xFFFF
#: Above this many regions on one switch, overlapping mirrors are refused.
MAX_REGIONS = 1024

_ADDRESS_FIELDS = ("ipv4_src", "ipv4_dst")
_NEUTRAL_TO_OF10 = {"in_port": "in_port", "vlan_vid": "dl_vlan", "eth_type": "dl_type", "ip_proto": "nw_proto",
                    "ipv4_src": "nw_src", "ipv4_dst": "nw_dst", "tcp_src": "tp_src", "tcp_dst": "tp_dst",
                    "udp_src": "tp_src", "udp_dst": "tp_dst", "eth_src": "dl_src", "eth_dst": "dl_dst"}
_MATCH_ORDER = ("in_port", "eth_src", "eth_dst", "vlan_vid", "eth_type", "ip_proto", "ipv4_src", "ipv4_dst",
                "tcp_src", "tcp_dst", "udp_src", "udp_dst")

Action10 = tuple[Any, ...]
RuleKey = tuple[str, str]  # (tap_id, direction)
EntryKey = tuple[int, tuple[tuple[str, str], ...]]  # (priority, canonical match)


class Of10Error(ValueError):
    """Something OpenFlow 1.0 cannot express; ``field`` names it."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field


# ------------------------------------------------------------ match algebra

def _net(value: str) -> ipaddress.IPv4Network:
    return ipaddress.IPv4Network(value, strict=False)


def _address_text(net: ipaddress.IPv4Network) -> str:
    return str(net.network_address) if net.prefixlen == 32 else str(net)


def canonical(match: Mapping[str, Any]) -> tuple[tuple[str, str], ...]:
    """A hashable form in which equal matches are equal (``10.0.0.1/32`` == ``10.0.0.1``)."""
    items = []
    for key, value in match.items():
        text = _address_text(_net(value)) if key in _ADDRESS_FIELDS else str(value)
        items.append((key, text))
    return tuple(sorted(items))


def entry_key(priority: int, match: Mapping[str, Any]) -> EntryKey:
    """What identifies an OpenFlow 1.0 entry (and what DELETE_STRICT names)."""
    return (priority, canonical(match))


def ordered(match: Mapping[str, Any]) -> dict[str, Any]:
    return {key: match[key] for key in sorted(match, key=lambda k: (_MATCH_ORDER + (k,)).index(k))}


def covers(outer: Mapping[str, Any], inner: Mapping[str, Any]) -> bool:
    """True if every packet ``inner`` matches is also matched by ``outer``."""
    for key, value in outer.items():
        if key not in inner:
            return False
        if key in _ADDRESS_FIELDS:
            if not _net(inner[key]).subnet_of(_net(value)):
                return False
        elif inner[key] != value:
            return False
    return True


def intersect(a: Mapping[str, Any], b: Mapping[str, Any]) -> dict[str, Any] | None:
    """The match of packets both match, or None when no packet can match both."""
    out = dict(a)
    for key, value in b.items():
        if key not in out:
            out[key] = value
        elif key in _ADDRESS_FIELDS:
            na, nb = _net(out[key]), _net(value)
            if nb.subnet_of(na):
                out[key] = _address_text(nb)
            elif not na.subnet_of(nb):
                return None
        elif out[key] != value:
            return None
    # tcp_dst and udp_dst are one OF1.0 field; a normalised match pins ip_proto, so a
    # TCP/UDP mix has already failed on ip_proto above.
    return ordered(out)


def matches_packet(match: Mapping[str, Any], packet: Mapping[str, Any]) -> bool:
    """Does ``match`` match a packet given as concrete neutral fields?"""
    for key, value in match.items():
        if key not in packet:
            return False
        if key in _ADDRESS_FIELDS:
            if ipaddress.IPv4Address(packet[key]) not in _net(value):
                return False
        elif packet[key] != value:
            return False
    return True


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

@dataclass(frozen=True)
class MirrorRule:
    """One direction of one tap on one switch."""

    tap_id: str
    direction: str
    match: Mapping[str, Any]
    copy_port: int
    vlan_tag: int | None
    priority: int
    cookie: int
    idle_timeout: int
    expires_at: float

    @property
    def key(self) -> RuleKey:
        return (self.tap_id, self.direction)


def rules_for(spec: MirrorSpec, cookie: int, installed_at: float) -> list[MirrorRule]:
    """The rules of a validated spec (checked for OF1.0 here: IPv6 is refused)."""
    out = []
    for direction, match in spec.directions():
        to_of10_match(match)
        out.append(MirrorRule(spec.tap_id, direction, ordered(match), spec.copy_port, spec.vlan_tag,
                              spec.priority, cookie, spec.idle_timeout, installed_at + spec.hard_timeout))
    return out


@dataclass(frozen=True)
class CompiledEntry:
    """A flow entry to hold on the switch, with the rules it serves."""

    entry: Entry
    members: frozenset[RuleKey]
    owners: frozenset[RuleKey]
    expires_at: float

    @property
    def key(self) -> EntryKey:
        return entry_key(self.entry.priority, self.entry.match)

    def same_as(self, other: "CompiledEntry") -> bool:
        """Would re-sending change nothing on the switch?"""
        a, b = self.entry, other.entry
        return (a.actions, a.cookie, a.idle_timeout, self.expires_at) == \
            (b.actions, b.cookie, b.idle_timeout, other.expires_at)


def _copy_actions(rules: Iterable[MirrorRule]) -> tuple[str, ...]:
    untagged = sorted({r.copy_port for r in rules if r.vlan_tag is None})
    tagged = sorted({(r.vlan_tag, r.copy_port) for r in rules if r.vlan_tag is not None})
    out = [f"output:{port}" for port in untagged]
    current_vlan = None
    for vlan, port in tagged:  # untagged copies first: a set_vlan_vid applies to all later outputs
        if vlan != current_vlan:
            out += ["push_vlan:0x8100", f"set_field:vlan_vid={vlan}"]
            current_vlan = vlan
        out.append(f"output:{port}")
    return tuple(out)


def regions(matches: Iterable[Mapping[str, Any]], limit: int = MAX_REGIONS) -> list[dict[str, Any]]:
    """The closure of ``matches`` under intersection (each region once)."""
    found: dict[tuple, dict[str, Any]] = {}
    for match in matches:
        found.setdefault(canonical(match), ordered(match))
    frontier = list(found.values())
    while frontier:
        fresh: list[dict[str, Any]] = []
        for a in frontier:
            for b in list(found.values()):
                both = intersect(a, b)
                if both is not None and canonical(both) not in found:
                    found[canonical(both)] = both
                    fresh.append(both)
                    if len(found) > limit:
                        raise Of10Error("params.match", f"more than {limit} overlapping mirror regions on one switch")
        frontier = fresh
    return list(found.values())


def compile_mirrors(rules: Iterable[MirrorRule], now: float,
                    forward: Callable[[Mapping[str, Any]], tuple[str, ...]] = lambda match: ("NORMAL",)
                    ) -> list[CompiledEntry]:
    """Every entry one switch needs for ``rules`` (merged where they overlap).

    ``forward(match)`` is the switch's own forwarding for that traffic (``NORMAL``,
    or a static port pair); it comes first so the copies' VLAN tag never reaches it.
    """
    rules = list(rules)
    out: list[CompiledEntry] = []
    for region in regions(r.match for r in rules):
        members = [r for r in rules if covers(r.match, region)]
        owners = [r for r in members if canonical(r.match) == canonical(region)]
        priority = min(MAX_PRIORITY, max(r.priority for r in members) + len(members) - 1)
        expires_at = min(r.expires_at for r in members)
        idles = [r.idle_timeout for r in owners if r.idle_timeout > 0]
        cookie_rule = min(owners or members, key=lambda r: r.key)
        hard = max(1, min(0xFFFF, math.ceil(expires_at - now)))
        entry = Entry(priority, region, forward(region) + _copy_actions(members), cookie_rule.cookie,
                      min(idles) if idles else 0, hard, True)
        out.append(CompiledEntry(entry, frozenset(r.key for r in members), frozenset(r.key for r in owners),
                                 expires_at))
    return sorted(out, key=lambda c: (-c.entry.priority, c.key))


def diff(installed: Mapping[EntryKey, CompiledEntry], wanted: Iterable[CompiledEntry]
         ) -> tuple[list[CompiledEntry], list[CompiledEntry]]:
    """``(to_add, to_delete)``: ADD new or changed entries, DELETE_STRICT stale ones."""
    wanted_by_key = {c.key: c for c in wanted}
    to_add = [c for k, c in wanted_by_key.items() if k not in installed or not installed[k].same_as(c)]
    to_delete = [c for k, c in installed.items() if k not in wanted_by_key]
    return to_add, to_delete


def ended_rules(removed: CompiledEntry, reason: str, rules: Mapping[RuleKey, MirrorRule], now: float,
                slack: float = 1.0) -> set[RuleKey]:
    """Which rules a FlowRemoved of ``removed`` ends.

    Idle timeout or an external delete: the entry's owners (their own traffic
    stopped, or an operator removed it). Hard timeout: the members whose
    deadline has come (within ``slack`` s of clock skew); the others get the
    entry back on recompilation.
    """
    if reason != "hard_timeout":
        return set(removed.owners)
    members = [rules[k] for k in removed.members if k in rules]
    due = {r.key for r in members if r.expires_at <= now + slack}
    if not due and members:  # the switch's clock ran ahead of ours: the earliest deadline is the one
        earliest = min(r.expires_at for r in members)
        due = {r.key for r in members if r.expires_at == earliest}
    return due


def kept_alive(removed: CompiledEntry, installed: Mapping[EntryKey, CompiledEntry],
               packets: Mapping[EntryKey, int], seen: Mapping[EntryKey, int]) -> set[RuleKey]:
    """Owners of an idled-out entry whose traffic still flows through a merged sub-region.

    ``packets``: the switch's current packet counts per entry; ``seen``: the counts
    at the previous look (absent = 0, i.e. since the entry was written).
    """
    alive: set[RuleKey] = set()
    for owner in removed.owners:
        for key, entry in installed.items():
            if key != removed.key and owner in entry.members and packets.get(key, 0) > seen.get(key, 0):
                alive.add(owner)
                break
    return alive
