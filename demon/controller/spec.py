"""Mirror specifications: validate ``install_mirror`` params, reverse matches, cookies.

Pure and standard-library only: both controller components (os-ken and POX) import it.
The parameter rules are those of ``docs/rpc-protocol.md``.
"""

from __future__ import annotations

import ipaddress
import re
import zlib
from dataclasses import dataclass, field
from typing import Any, Iterable, Mapping

#: High 32 bits of every cookie the project installs.
PROJECT_MARKER = 0xDE30
PROJECT_MASK = 0xFFFFFFFF_00000000
_PROJECT_BITS = PROJECT_MARKER << 32
#: Baseline (fabric role) entries and static (prototype) entries share one cookie each,
#: so that a reconnect or ``set_static`` can delete them with one cookie-masked delete.
BASELINE_COOKIE = _PROJECT_BITS | 0x0000_0001
STATIC_COOKIE = _PROJECT_BITS | 0x0000_0002
#: Entries the switch learns itself (OpenFlow 1.3 filter switches' L2 table).
LEARNED_COOKIE = _PROJECT_BITS | 0x0000_0003
#: Mirror cookies have bit 31 set; the low 31 bits derive from the tap id.
MIRROR_BIT = 0x8000_0000
EXACT_MASK = 0xFFFFFFFF_FFFFFFFF

OPENFLOW_VERSIONS = ("1.0", "1.3")
ETH_IPV4 = 0x0800
ETH_IPV6 = 0x86DD
IPPROTO_TCP = 6
IPPROTO_UDP = 17

TAP_ID_RE = re.compile(r"^[A-Za-z0-9_.:-]{1,64}$")
MATCH_FIELDS = (
    "in_port", "vlan_vid", "eth_type", "ip_proto",
    "ipv4_src", "ipv4_dst", "ipv6_src", "ipv6_dst",
    "tcp_src", "tcp_dst", "udp_src", "udp_dst",
)
_REVERSE = {
    "ipv4_src": "ipv4_dst", "ipv4_dst": "ipv4_src",
    "ipv6_src": "ipv6_dst", "ipv6_dst": "ipv6_src",
    "tcp_src": "tcp_dst", "tcp_dst": "tcp_src",
    "udp_src": "udp_dst", "udp_dst": "udp_src",
}
DEFAULTS = {"vlan_tag": None, "bidirectional": False, "idle_timeout": 30,
            "hard_timeout": 300, "priority": 40000}
_PARAMS = ("tap_id", "dpid", "match", "copy_port", *DEFAULTS)


class SpecError(ValueError):
    """Invalid params; ``field`` is the dotted path the message is about."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field


def _int(value: Any, path: str, low: int, high: int) -> int:
    # bool is an int subclass; `true` is never a port number.
    if isinstance(value, bool) or not isinstance(value, int):
        raise SpecError(path, f"must be an integer {low}..{high}")
    if not low <= value <= high:
        raise SpecError(path, f"must be {low}..{high}")
    return value


def _address(value: Any, path: str, version: int) -> str:
    if not isinstance(value, str):
        raise SpecError(path, "must be an address string (addr or addr/prefixlen)")
    try:
        net = ipaddress.ip_network(value, strict=False)
    except ValueError:
        raise SpecError(path, f"not an IPv{version} address: {value!r}") from None
    if net.version != version:
        raise SpecError(path, f"not an IPv{version} address: {value!r}")
    if net.prefixlen == net.max_prefixlen:
        return str(net.network_address)
    return str(net)


def normalise_match(match: Any, openflow: str = "1.3", path: str = "params.match") -> dict[str, Any]:
    """Validate a match, add prerequisites, reject contradictions; return a new dict."""
    if not isinstance(match, Mapping):
        raise SpecError(path, "must be an object")
    if not match:
        raise SpecError(path, "needs at least one field")
    out: dict[str, Any] = {}
    for key, value in match.items():
        fpath = f"{path}.{key}"
        if key not in MATCH_FIELDS:
            raise SpecError(fpath, f"unknown match field (known: {', '.join(MATCH_FIELDS)})")
        if key == "in_port":
            out[key] = _int(value, fpath, 1, 0xFFFFFF00)
        elif key == "vlan_vid":
            out[key] = _int(value, fpath, 0, 4095)
        elif key == "eth_type":
            out[key] = _int(value, fpath, 0, 0xFFFF)
        elif key == "ip_proto":
            out[key] = _int(value, fpath, 0, 255)
        elif key.startswith("ipv4_"):
            out[key] = _address(value, fpath, 4)
        elif key.startswith("ipv6_"):
            if openflow == "1.0":
                raise SpecError(fpath, "IPv6 fields need OpenFlow 1.3 (this component speaks 1.0)")
            out[key] = _address(value, fpath, 6)
        else:
            out[key] = _int(value, fpath, 0, 65535)
    has4 = any(k.startswith("ipv4_") for k in out)
    has6 = any(k.startswith("ipv6_") for k in out)
    if has4 and has6:
        raise SpecError(f"{path}.ipv6_src" if "ipv6_src" in out else f"{path}.ipv6_dst",
                        "IPv4 and IPv6 fields cannot be combined")
    has_tcp = "tcp_src" in out or "tcp_dst" in out
    has_udp = "udp_src" in out or "udp_dst" in out
    if has_tcp and has_udp:
        raise SpecError(f"{path}.udp_src" if "udp_src" in out else f"{path}.udp_dst",
                        "TCP and UDP ports cannot be combined")
    wanted_eth = ETH_IPV4 if has4 else ETH_IPV6 if has6 else None
    if wanted_eth is not None:
        if "eth_type" in out and out["eth_type"] != wanted_eth:
            raise SpecError(f"{path}.eth_type",
                            f"{out['eth_type']:#06x} contradicts the address fields (need {wanted_eth:#06x})")
        out["eth_type"] = wanted_eth
    wanted_proto = IPPROTO_TCP if has_tcp else IPPROTO_UDP if has_udp else None
    if wanted_proto is not None:
        if "ip_proto" in out and out["ip_proto"] != wanted_proto:
            raise SpecError(f"{path}.ip_proto",
                            f"{out['ip_proto']} contradicts the port fields (need {wanted_proto})")
        out["ip_proto"] = wanted_proto
    if "ip_proto" in out:
        if out.setdefault("eth_type", ETH_IPV4) not in (ETH_IPV4, ETH_IPV6):
            raise SpecError(f"{path}.ip_proto", "needs eth_type 0x0800 or 0x86dd")
        if openflow == "1.0" and out["eth_type"] == ETH_IPV6:
            raise SpecError(f"{path}.eth_type", "IPv6 needs OpenFlow 1.3 (this component speaks 1.0)")
    return {key: out[key] for key in MATCH_FIELDS if key in out}


def reverse_match(match: Mapping[str, Any]) -> dict[str, Any]:
    """The other direction of a flow: sources and destinations swapped.

    ``in_port`` is dropped: the reverse direction enters the switch by the other host's port.
    """
    out = {_REVERSE.get(key, key): value for key, value in match.items() if key != "in_port"}
    return {key: out[key] for key in MATCH_FIELDS if key in out}


@dataclass(frozen=True)
class MirrorSpec:
    """One validated, normalised ``install_mirror`` request."""

    tap_id: str
    dpid: int
    match: Mapping[str, Any] = field(hash=False)
    copy_port: int
    vlan_tag: int | None = None
    bidirectional: bool = False
    idle_timeout: int = 30
    hard_timeout: int = 300
    priority: int = 40000

    def directions(self) -> list[tuple[str, dict[str, Any]]]:
        """``[("forward", match)]`` plus ``("reverse", swapped)`` when bidirectional."""
        out = [("forward", dict(self.match))]
        if self.bidirectional:
            out.append(("reverse", reverse_match(self.match)))
        return out

    def to_params(self) -> dict[str, Any]:
        return {"tap_id": self.tap_id, "dpid": self.dpid, "match": dict(self.match),
                "copy_port": self.copy_port, "vlan_tag": self.vlan_tag,
                "bidirectional": self.bidirectional, "idle_timeout": self.idle_timeout,
                "hard_timeout": self.hard_timeout, "priority": self.priority}


def parse_tap_id(value: Any, path: str = "params.tap_id") -> str:
    if not isinstance(value, str) or not TAP_ID_RE.match(value):
        raise SpecError(path, "must be 1-64 characters of [A-Za-z0-9_.:-]")
    return value


def parse_dpid(value: Any, path: str = "params.dpid") -> int:
    return _int(value, path, 0, 2**64 - 1)


def require_exactly(params: Mapping[str, Any], names: tuple[str, ...]) -> None:
    """``params`` has every one of ``names`` and nothing else (errors name the field)."""
    unknown = set(params) - set(names)
    if unknown:
        raise SpecError(f"params.{sorted(unknown)[0]}", f"unknown parameter (known: {', '.join(names)})")
    for name in names:
        if name not in params:
            raise SpecError(f"params.{name}", "is required")


def parse_remove_params(params: Mapping[str, Any]) -> str:
    """The tap id of a ``remove_mirror`` request."""
    require_exactly(params, ("tap_id",))
    return parse_tap_id(params["tap_id"])


def port_stats_json(stats: Iterable[Any], below: int) -> list[dict[str, Any]]:
    """``port_stats`` rows from OpenFlow port-stats replies (both versions name the fields
    alike); ports numbered ``below`` and up (LOCAL, reserved) are left out."""
    return [{"port_no": s.port_no, "rx_packets": s.rx_packets, "tx_packets": s.tx_packets,
             "rx_bytes": s.rx_bytes, "tx_bytes": s.tx_bytes, "rx_dropped": s.rx_dropped,
             "tx_dropped": s.tx_dropped}
            for s in sorted(stats, key=lambda s: s.port_no) if s.port_no < below]


def port_description(port: Any) -> dict[str, Any]:
    """A ``list_switches`` port from an OpenFlow port description (both versions name the
    fields alike; bit 0 of ``config`` is PORT_DOWN and of ``state`` LINK_DOWN in both)."""
    name = port.name.decode(errors="replace") if isinstance(port.name, bytes) else str(port.name)
    return {"port_no": port.port_no, "name": name.rstrip("\x00"), "hw_addr": str(port.hw_addr),
            "up": not (port.config & 1 or port.state & 1)}


def parse_mirror_params(params: Any, openflow: str = "1.3") -> MirrorSpec:
    """Validate ``install_mirror`` params into a :class:`MirrorSpec` (raises :class:`SpecError`)."""
    if openflow not in OPENFLOW_VERSIONS:
        raise ValueError(f"openflow must be one of {OPENFLOW_VERSIONS}")
    if not isinstance(params, Mapping):
        raise SpecError("params", "must be an object")
    for key in params:
        if key not in _PARAMS:
            raise SpecError(f"params.{key}", f"unknown parameter (known: {', '.join(_PARAMS)})")
    for key in ("tap_id", "dpid", "match", "copy_port"):
        if key not in params:
            raise SpecError(f"params.{key}", "is required")
    values = {**DEFAULTS, **{k: v for k, v in params.items() if v is not None or k == "vlan_tag"}}
    vlan = values["vlan_tag"]
    if vlan is not None:
        vlan = _int(vlan, "params.vlan_tag", 1, 4094)
    bidirectional = values["bidirectional"]
    if not isinstance(bidirectional, bool):
        raise SpecError("params.bidirectional", "must be true or false")
    max_port = 0xFF00 if openflow == "1.0" else 0xFFFFFF00
    return MirrorSpec(
        tap_id=parse_tap_id(params["tap_id"]),
        dpid=parse_dpid(params["dpid"]),
        match=normalise_match(params["match"], openflow),
        copy_port=_int(params["copy_port"], "params.copy_port", 1, max_port),
        vlan_tag=vlan,
        bidirectional=bidirectional,
        idle_timeout=_int(values["idle_timeout"], "params.idle_timeout", 0, 65535),
        hard_timeout=_int(values["hard_timeout"], "params.hard_timeout", 1, 65535),
        priority=_int(values["priority"], "params.priority", 1, 65535),
    )


def is_project_cookie(cookie: int) -> bool:
    return cookie & PROJECT_MASK == _PROJECT_BITS


def is_mirror_cookie(cookie: int) -> bool:
    return is_project_cookie(cookie) and bool(cookie & MIRROR_BIT)


def cookie_for_tap(tap_id: str, attempt: int = 0) -> int:
    """The deterministic cookie of a tap id (``attempt`` > 0 only after a collision).

    Deterministic so a restarted component (or the daemon) can recompute it: the
    switch's flow table, not the component's memory, is the record of what exists.
    """
    seed = tap_id if attempt == 0 else f"{tap_id}#{attempt}"
    return _PROJECT_BITS | MIRROR_BIT | (zlib.crc32(seed.encode()) & 0x7FFF_FFFF)


def allocate_cookie(tap_id: str, in_use: Mapping[int, str]) -> int:
    """The tap's cookie, probing past cookies held by *other* taps (``in_use``: cookie → tap id)."""
    for attempt in range(1024):
        cookie = cookie_for_tap(tap_id, attempt)
        if in_use.get(cookie, tap_id) == tap_id:
            return cookie
    raise RuntimeError("no free mirror cookie")  # 2**31 space: unreachable in practice
