"""Overlapping mirrors merged into one switch's flow table, for any OpenFlow version.

Pure and standard library only (the POX component imports it). Matches are the
neutral OXM-style dicts of :mod:`demon.controller.spec`; entries the neutral
:class:`~demon.controller.fabric.Entry`. The version-specific part, how one
entry's action list carries the copies of several taps, is a callable the
caller passes (:mod:`demon.controller.of10`, :mod:`demon.controller.of13`).

Why merging: a flow table applies only the one highest-priority entry that
matches a packet (OpenFlow 1.0's only table, OpenFlow 1.3's table 0 holding the
mirrors). If two taps on one switch overlap (a host tap and a 5-tuple tap of that
host), separate entries would give the overlap to one tap only. So the entries
of a switch are compiled together: every non-empty intersection of mirror
matches becomes an entry of its own carrying the copies of every tap whose match
contains it, with a priority above each entry it lies inside (``max(member
priority) + len(members) - 1``: strictly larger for a strictly smaller region of
the intersection closure). A packet then hits exactly the entry of the smallest
region containing it, which carries all copies it is owed.

Lifetimes: the entry whose match equals a tap's own match ("owned" entry)
carries the tap's idle timeout; every entry's hard timeout is the earliest hard
deadline of its members, so the switch itself removes copies for an expired
tap. After any change the mirror book (:mod:`demon.controller.book`) recompiles
and applies the difference (:func:`diff`; how each difference is sent so that no
counter is lost: :meth:`demon.controller.switchview.SwitchView.push`). A tap's idle
timer only sees packets
that hit its owned entry, so when that entry idles out the component first asks
:func:`kept_alive` whether the tap's merged sub-regions counted packets since it
last looked; if so the tap lives on and its entry is re-added.

Counters: a tap's ``list_mirrors`` counters (:func:`tap_record`) are the sums
over every entry it is a member of, so a packet in a shared region counts for
each tap that copied it.
"""

from __future__ import annotations

import ipaddress
import math
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Mapping, Sequence

from demon.controller.fabric import Entry
from demon.controller.spec import MirrorSpec

MAX_PRIORITY = 0xFFFF
#: Above this many regions on one switch, overlapping mirrors are refused.
MAX_REGIONS = 1024

_ADDRESS_FIELDS = ("ipv4_src", "ipv4_dst", "ipv6_src", "ipv6_dst")
_MAC_FIELDS = ("eth_src", "eth_dst")
_MATCH_ORDER = ("in_port", "eth_src", "eth_dst", "vlan_vid", "eth_type", "ip_proto", "ipv4_src", "ipv4_dst",
                "ipv6_src", "ipv6_dst", "tcp_src", "tcp_dst", "udp_src", "udp_dst")
_ALL_ONES_MAC = (1 << 48) - 1

RuleKey = tuple[str, str]  # (tap_id, direction)
EntryKey = tuple[int, tuple[tuple[str, str], ...]]  # (priority, canonical match)


class MergeError(ValueError):
    """Something a switch cannot be given; ``field`` names it."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field


# ------------------------------------------------------------ match algebra

def _net(value: str) -> ipaddress.IPv4Network | ipaddress.IPv6Network:
    return ipaddress.ip_network(value, strict=False)


def _address_text(net: ipaddress.IPv4Network | ipaddress.IPv6Network) -> str:
    return str(net.network_address) if net.prefixlen == net.max_prefixlen else str(net)


def _mac(value: Any) -> tuple[int, int]:
    """``aa:bb:..`` or ``aa:bb:../ff:ff:..`` → (value, mask) as integers."""
    addr, _, mask = str(value).partition("/")
    mask_int = int(mask.replace(":", ""), 16) if mask else _ALL_ONES_MAC
    return int(addr.replace(":", ""), 16) & mask_int, mask_int


def _mac_text(value: int, mask: int) -> str:
    def text(n: int) -> str:
        raw = f"{n:012x}"
        return ":".join(raw[i:i + 2] for i in range(0, 12, 2))
    return text(value) if mask == _ALL_ONES_MAC else f"{text(value)}/{text(mask)}"


def canonical(match: Mapping[str, Any]) -> tuple[tuple[str, str], ...]:
    """A hashable form in which equal matches are equal (``10.0.0.1/32`` == ``10.0.0.1``)."""
    items = []
    for key, value in match.items():
        if key in _ADDRESS_FIELDS:
            text = _address_text(_net(value))
        elif key in _MAC_FIELDS:
            text = _mac_text(*_mac(value))
        else:
            text = str(value)
        items.append((key, text))
    return tuple(sorted(items))


def entry_key(priority: int, match: Mapping[str, Any]) -> EntryKey:
    """What identifies a flow entry in its table (and what DELETE_STRICT names)."""
    return (priority, canonical(match))


def ordered(match: Mapping[str, Any]) -> dict[str, Any]:
    return {key: match[key] for key in sorted(match, key=lambda k: (_MATCH_ORDER + (k,)).index(k))}


def covers(outer: Mapping[str, Any], inner: Mapping[str, Any]) -> bool:
    """True if every packet ``inner`` matches is also matched by ``outer``."""
    for key, value in outer.items():
        if key not in inner:
            return False
        if key in _ADDRESS_FIELDS:
            a, b = _net(inner[key]), _net(value)
            if a.version != b.version or not a.subnet_of(b):  # type: ignore[arg-type]
                return False
        elif key in _MAC_FIELDS:
            (vo, mo), (vi, mi) = _mac(value), _mac(inner[key])
            if mo & ~mi or (vo ^ vi) & mo:
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
            if na.version != nb.version:
                return None
            if nb.subnet_of(na):  # type: ignore[arg-type]
                out[key] = _address_text(nb)
            elif not na.subnet_of(nb):  # type: ignore[arg-type]
                return None
        elif key in _MAC_FIELDS:
            (va, ma), (vb, mb) = _mac(out[key]), _mac(value)
            if (va ^ vb) & ma & mb:
                return None
            out[key] = _mac_text(va | vb, ma | mb)
        elif out[key] != value:
            return None
    # A normalised match pins ip_proto, so a TCP/UDP port mix has already failed on it.
    return ordered(out)


def matches_packet(match: Mapping[str, Any], packet: Mapping[str, Any]) -> bool:
    """Does ``match`` match a packet given as concrete neutral fields?"""
    for key, value in match.items():
        if key not in packet:
            return False
        if key in _ADDRESS_FIELDS:
            if ipaddress.ip_address(packet[key]) not in _net(value):
                return False
        elif key in _MAC_FIELDS:
            v, m = _mac(value)
            if _mac(packet[key])[0] & m != v:
                return False
        elif packet[key] != value:
            return False
    return True


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
    """The rules of a validated spec, one per direction."""
    return [MirrorRule(spec.tap_id, direction, ordered(match), spec.copy_port, spec.vlan_tag, spec.priority,
                       cookie, spec.idle_timeout, installed_at + spec.hard_timeout)
            for direction, match in spec.directions()]


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


def copies(rules: Iterable[MirrorRule]) -> tuple[list[int], list[tuple[int, int]]]:
    """``(untagged ports, [(vlan, port)])`` the members owe, each copy once, in a stable order."""
    rules = list(rules)
    untagged = sorted({r.copy_port for r in rules if r.vlan_tag is None})
    tagged = sorted({(r.vlan_tag, r.copy_port) for r in rules if r.vlan_tag is not None})
    return untagged, tagged  # type: ignore[return-value]


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
                        raise MergeError("params.match", f"more than {limit} overlapping mirror regions on one switch")
        frontier = fresh
    return list(found.values())


ActionsFor = Callable[[Mapping[str, Any], Sequence[MirrorRule]], tuple[str, ...]]


def compile_mirrors(rules: Iterable[MirrorRule], now: float, actions: ActionsFor) -> list[CompiledEntry]:
    """Every entry one switch needs for ``rules`` (merged where they overlap).

    ``actions(region, members)`` is the action list of the entry for ``region``:
    the switch's own forwarding of that traffic plus every member's copy.
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
        entry = Entry(priority, region, actions(region, members), cookie_rule.cookie,
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
    deadline has come (within ``slack`` s of clock skew). The entry's hard
    timeout is only a fail-safe that may end before its members do (a tap
    extended without rewriting its entry, a deadline beyond the 16-bit
    timeout): members not yet due end nothing, and get the entry back, re-armed
    with what is left of their time, on recompilation.
    """
    if reason != "hard_timeout":
        return set(removed.owners)
    return {k for k in removed.members if k in rules and rules[k].expires_at <= now + slack}


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


def tap_record(spec: MirrorSpec, cookie: int, installed_at: float, rows: list[tuple[Entry, int, int, float]],
               compiled: Mapping[EntryKey, CompiledEntry], claimed: set[int]) -> dict[str, Any] | None:
    """The ``list_mirrors`` record of a tap as the switch holds it (None when no entry it owns
    is in the table). ``rows``: the switch's mirror entries with packets, bytes, duration;
    indices of rows the tap is a member of are added to ``claimed``. Counters sum every
    entry the tap is a member of (shared entries count for each member)."""
    owned = present = packets = nbytes = 0
    duration = 0.0
    for i, (entry, pk, by, du) in enumerate(rows):
        c = compiled.get(entry_key(entry.priority, entry.match))
        if c is None or not any(k[0] == spec.tap_id for k in c.members):
            continue
        claimed.add(i)
        present += 1
        packets += pk
        nbytes += by
        duration = max(duration, du)
        owned += any(k[0] == spec.tap_id for k in c.owners)
    if not owned:
        return None
    return {"tap_id": spec.tap_id, "dpid": spec.dpid, "match": dict(spec.match), "copy_port": spec.copy_port,
            "vlan_tag": spec.vlan_tag, "bidirectional": spec.bidirectional, "idle_timeout": spec.idle_timeout,
            "hard_timeout": spec.hard_timeout, "priority": spec.priority, "cookie": cookie,
            "installed_at": installed_at, "packets": packets, "bytes": nbytes,
            "duration_s": duration, "entries": present}
