"""sFlow-RT flow keys → the RPC ``match`` of a mirror (docs/rpc-protocol.md).

A policy's ``keys`` decide what a tap copies: every key must become a match
field, otherwise the mirror would copy more than the flow that fired. So a key
with no match field (``macsource``: the RPC match has no MAC fields; ``icmptype``,
``tcpflags``, ``dnsqname``…) is refused when the policy loads (``check_keys``),
not when a tap is due.

Supported keys and what they become:

=====================================  =========================================
``ipsource`` / ``ipdestination``       ``ipv4_src`` / ``ipv4_dst``
``ip6source`` / ``ip6destination``     ``ipv6_src`` / ``ipv6_dst``
``mask:ipsource:N`` (any address key)  the same field as ``addr/N``
``ipprotocol``, ``ip6nexthdr``         ``ip_proto``
``tcpsourceport`` / ``…destination…``  ``tcp_src`` / ``tcp_dst`` (+ ``ip_proto`` 6)
``udpsourceport`` / ``…destination…``  ``udp_src`` / ``udp_dst`` (+ ``ip_proto`` 17)
``or:tcpsourceport:udpsourceport``     ``tcp_src`` or ``udp_src`` by the flow's
(and the destination twin)             ``ipprotocol`` value (so that key is required)
``vlan``                               ``vlan_vid``
``ethernetprotocol``                   ``eth_type``
``inputifindex``                       ``in_port`` (the agent's ifIndex through
                                       the topology's port map)
=====================================  =========================================
"""

from __future__ import annotations

import ipaddress
from typing import Any, Callable, Sequence

_ADDRESS = {"ipsource": "ipv4_src", "ipdestination": "ipv4_dst",
            "ip6source": "ipv6_src", "ip6destination": "ipv6_dst"}
_PORT = {"tcpsourceport": ("tcp_src", 6), "tcpdestinationport": ("tcp_dst", 6),
         "udpsourceport": ("udp_src", 17), "udpdestinationport": ("udp_dst", 17)}
_PROTO_KEYS = ("ipprotocol", "ip6nexthdr")
_OR_PORTS = {frozenset({"tcpsourceport", "udpsourceport"}): "src",
             frozenset({"tcpdestinationport", "udpdestinationport"}): "dst"}
SUPPORTED_KEYS = (sorted(_ADDRESS) + sorted(_PORT) + list(_PROTO_KEYS)
                  + ["vlan", "ethernetprotocol", "inputifindex"])


class FlowMatchError(ValueError):
    """A key that cannot become a match field, or a flow key value that is not valid."""


def _family(field: str) -> int:
    return 4 if field.startswith("ipv4") else 6


def _key_kind(key: str) -> tuple[str, Any]:
    """Classify one key of a flow definition (load-time check, no values)."""
    if key in _ADDRESS:
        return "address", (_ADDRESS[key], None)
    if key.startswith("mask:"):
        parts = key.split(":")
        if len(parts) != 3 or parts[1] not in _ADDRESS:
            raise FlowMatchError(f"key {key!r}: mask: needs an address key and a prefix length "
                                 "(e.g. mask:ipsource:24)")
        field = _ADDRESS[parts[1]]
        limit = 32 if _family(field) == 4 else 128
        if not parts[2].isdigit() or not 0 <= int(parts[2]) <= limit:
            raise FlowMatchError(f"key {key!r}: prefix length must be 0..{limit}")
        return "address", (field, int(parts[2]))
    if key in _PORT:
        return "port", _PORT[key]
    if key in _PROTO_KEYS:
        return "proto", None
    if key == "vlan":
        return "vlan", None
    if key == "ethernetprotocol":
        return "ethertype", None
    if key == "inputifindex":
        return "ifindex", None
    if key.startswith("or:"):
        alts = frozenset(key.split(":")[1:])
        if alts in _OR_PORTS:
            return "orport", _OR_PORTS[alts]
        raise FlowMatchError(f"key {key!r}: only or:tcpsourceport:udpsourceport and "
                             "or:tcpdestinationport:udpdestinationport can become a match")
    if key in ("macsource", "macdestination"):
        raise FlowMatchError(f"key {key!r}: the RPC match has no MAC fields, so a tap could not "
                             "be limited to this flow")
    raise FlowMatchError(f"key {key!r} cannot become a mirror match (supported: "
                         f"{', '.join(SUPPORTED_KEYS)}, mask:<address key>:<bits>, "
                         "or:tcp…port:udp…port)")


def check_keys(keys: Sequence[str]) -> None:
    """Raise ``FlowMatchError`` unless every key maps to a match field and the
    combination can describe one packet (not IPv4 and IPv6, not TCP and UDP)."""
    if not keys:
        raise FlowMatchError("no keys: a tap needs at least one key to match on")
    seen_fields: dict[str, str] = {}
    families, protos = set(), set()
    has_orport = False
    for key in keys:
        kind, info = _key_kind(key)
        field = None
        if kind == "address":
            field = info[0]
            families.add(_family(field))
        elif kind == "port":
            field = info[0]
            protos.add(info[1])
        elif kind == "orport":
            field = f"l4_{info}"
            has_orport = True
        elif kind == "proto":
            field = "ip_proto"
        elif kind == "vlan":
            field = "vlan_vid"
        elif kind == "ethertype":
            field = "eth_type"
        elif kind == "ifindex":
            field = "in_port"
        if field in seen_fields:
            raise FlowMatchError(f"keys {seen_fields[field]!r} and {key!r} both set {field}")
        seen_fields[str(field)] = key
    if len(families) > 1:
        raise FlowMatchError("keys mix IPv4 and IPv6 addresses: no packet has both")
    if len(protos) > 1:
        raise FlowMatchError("keys mix TCP and UDP ports: no packet has both")
    if has_orport and "ip_proto" not in seen_fields:
        raise FlowMatchError("or:tcp…port:udp…port keys need ipprotocol (or ip6nexthdr) among the "
                             "keys to know which port field to match")


def split_keys(keys: str | Sequence[str]) -> list[str]:
    """``"ipsource,ipdestination"`` → ``["ipsource", "ipdestination"]``."""
    if isinstance(keys, str):
        return [k.strip() for k in keys.split(",") if k.strip()]
    return [str(k).strip() for k in keys]


def _int(value: str, key: str, low: int, high: int) -> int:
    try:
        number = int(value, 0) if value.lower().startswith("0x") else int(value)
    except ValueError:
        raise FlowMatchError(f"key {key!r}: value {value!r} is not a number") from None
    if not low <= number <= high:
        raise FlowMatchError(f"key {key!r}: value {number} outside {low}..{high}")
    return number


def _address(value: str, key: str, field: str, prefix: int | None) -> str:
    try:
        addr = ipaddress.ip_address(value.split("/")[0])
    except ValueError:
        raise FlowMatchError(f"key {key!r}: value {value!r} is not an IP address") from None
    if addr.version != _family(field):
        raise FlowMatchError(f"key {key!r}: value {value!r} is not an IPv{_family(field)} address")
    if prefix is None or prefix == addr.max_prefixlen:
        return str(addr)
    net = ipaddress.ip_network(f"{addr}/{prefix}", strict=False)
    return str(net)


def flow_key_to_match(flow_key: str, keys: Sequence[str], fs: str = ",",
                      resolve_ifindex: Callable[[int], int | None] | None = None) -> dict[str, Any]:
    """Split ``flow_key`` on ``fs`` and build the RPC match for it.

    ``resolve_ifindex`` maps an ``inputifindex`` value to the OpenFlow port of
    the agent's switch (``Topology``); required when the keys contain it.
    """
    check_keys(keys)
    values = flow_key.split(fs)
    if len(values) != len(keys):
        raise FlowMatchError(f"flow key {flow_key!r} has {len(values)} values, the flow defines "
                             f"{len(keys)} keys ({fs.join(keys)})")
    match: dict[str, Any] = {}
    pending_ports: list[tuple[str, str, str]] = []
    for key, value in zip(keys, values):
        kind, info = _key_kind(key)
        if kind == "address":
            match[info[0]] = _address(value, key, info[0], info[1])
        elif kind == "port":
            field, proto = info
            match[field] = _int(value, key, 0, 65535)
            if match.setdefault("ip_proto", proto) != proto:
                raise FlowMatchError(f"key {key!r}: protocol {match['ip_proto']} is not {proto}")
        elif kind == "orport":
            pending_ports.append((key, info, value))
        elif kind == "proto":
            number = _int(value, key, 0, 255)
            if match.setdefault("ip_proto", number) != number:
                raise FlowMatchError(f"key {key!r}: protocol {number} contradicts the port keys")
        elif kind == "vlan":
            match["vlan_vid"] = _int(value, key, 0, 4095)
        elif kind == "ethertype":
            match["eth_type"] = _int(value, key, 0, 0xFFFF)
        elif kind == "ifindex":
            ifindex = _int(value, key, 1, 2**32 - 1)
            port = resolve_ifindex(ifindex) if resolve_ifindex else None
            if port is None:
                raise FlowMatchError(f"key {key!r}: ifIndex {ifindex} is not in the port map")
            match["in_port"] = port
    for key, direction, value in pending_ports:
        proto = match.get("ip_proto")
        if proto not in (6, 17):
            # or: picked icmptype or nothing: the flow is neither TCP nor UDP.
            raise FlowMatchError(f"key {key!r}: protocol {proto} has no ports to match")
        prefix = "tcp" if proto == 6 else "udp"
        match[f"{prefix}_{direction}"] = _int(value, key, 0, 65535)
    return match
