"""Just enough frame parsing to tell taps apart: Ethernet, 802.1Q, IPv4/IPv6,
TCP/UDP ports, in the field names of the RPC protocol's ``match``.
"""

from __future__ import annotations

import ipaddress
import struct
from dataclasses import dataclass
from typing import Any, Callable

ETH_IPV4 = 0x0800
ETH_IPV6 = 0x86DD
ETH_VLAN = (0x8100, 0x88A8)
IPPROTO_TCP = 6
IPPROTO_UDP = 17
IPPROTO_ICMPV6 = 58
_IPV6_EXT = {0, 43, 60}  # hop-by-hop, routing, destination options: skipped to find the ports

Fields = dict[str, Any]


def parse_frame(frame: bytes) -> Fields:
    """Header fields of an Ethernet frame (missing layers are simply absent)."""
    fields: Fields = {}
    if len(frame) < 14:
        return fields
    eth_type = struct.unpack_from("!H", frame, 12)[0]
    off = 14
    if eth_type in ETH_VLAN and len(frame) >= 18:
        fields["vlan_vid"] = struct.unpack_from("!H", frame, 14)[0] & 0x0FFF
        eth_type = struct.unpack_from("!H", frame, 16)[0]
        off = 18
    fields["eth_type"] = eth_type
    proto = None
    if eth_type == ETH_IPV4 and len(frame) >= off + 20:
        ihl = (frame[off] & 0x0F) * 4
        proto = frame[off + 9]
        fields["ip_proto"] = proto
        fields["ipv4_src"] = ipaddress.IPv4Address(frame[off + 12: off + 16])
        fields["ipv4_dst"] = ipaddress.IPv4Address(frame[off + 16: off + 20])
        frag = struct.unpack_from("!H", frame, off + 6)[0] & 0x1FFF
        off = off + ihl if frag == 0 else -1  # later fragments carry no ports
    elif eth_type == ETH_IPV6 and len(frame) >= off + 40:
        proto = frame[off + 6]
        fields["ipv6_src"] = ipaddress.IPv6Address(frame[off + 8: off + 24])
        fields["ipv6_dst"] = ipaddress.IPv6Address(frame[off + 24: off + 40])
        off += 40
        while proto in _IPV6_EXT and len(frame) >= off + 8:
            proto, ext_len = frame[off], (frame[off + 1] + 1) * 8
            off += ext_len
        fields["ip_proto"] = proto
        if proto == IPPROTO_ICMPV6 and len(frame) > off:
            fields["icmpv6_type"] = frame[off]
    if proto in (IPPROTO_TCP, IPPROTO_UDP) and off > 0 and len(frame) >= off + 4:
        src, dst = struct.unpack_from("!HH", frame, off)
        prefix = "tcp" if proto == IPPROTO_TCP else "udp"
        fields[f"{prefix}_src"] = src
        fields[f"{prefix}_dst"] = dst
    return fields


def header_key(frame: bytes) -> bytes | None:
    """The bytes that decide which tap a frame is (VLAN id, ethertype, addresses, IP
    protocol, fragment or not, ports): equal keys, equal :func:`parse_frame` verdicts.
    None for frames this shortcut does not cover (they are parsed each time)."""
    off = 12
    et = frame[12:14]
    tag = b""
    if et == b"\x81\x00" or et == b"\x88\xa8":
        tag = bytes([frame[14] & 0x0F, frame[15]]) if len(frame) >= 18 else b""
        off = 16
        et = frame[16:18]
    if et == b"\x08\x00":
        ip = off + 2
        if len(frame) < ip + 20:
            return None
        ihl = (frame[ip] & 0x0F) * 4
        proto = frame[ip + 9]
        frag = (frame[ip + 6] & 0x1F) | frame[ip + 7]
        ports = frame[ip + ihl:ip + ihl + 4] if not frag and proto in (6, 17) else b""
        return b"4" + tag + frame[ip + 9:ip + 10] + frame[ip + 12:ip + 20] + (b"f" if frag else b"") + ports
    if et == b"\x86\xdd":
        ip = off + 2
        if len(frame) < ip + 40:
            return None
        nh = frame[ip + 6]
        if nh in (0, 43, 60, 58):
            return None
        ports = frame[ip + 40:ip + 44] if nh in (6, 17) else b""
        return b"6" + tag + frame[ip + 6:ip + 7] + frame[ip + 8:ip + 40] + ports
    return None


def is_ipv6_noise(fields: Fields) -> bool:
    """IPv6 control chatter (router solicitations, neighbour discovery, MLD, DAD):
    link-local or unspecified source, or a multicast destination."""
    src = fields.get("ipv6_src")
    if src is None:
        return False
    dst = fields["ipv6_dst"]
    return src.is_link_local or src.is_unspecified or dst.is_multicast


_REVERSE = {"ipv4_src": "ipv4_dst", "ipv4_dst": "ipv4_src", "ipv6_src": "ipv6_dst",
            "ipv6_dst": "ipv6_src", "tcp_src": "tcp_dst", "tcp_dst": "tcp_src",
            "udp_src": "udp_dst", "udp_dst": "udp_src"}
_ADDRESS_FIELDS = {"ipv4_src", "ipv4_dst", "ipv6_src", "ipv6_dst"}
_INT_FIELDS = {"in_port", "vlan_vid", "eth_type", "ip_proto", "tcp_src", "tcp_dst", "udp_src", "udp_dst"}


class MatchError(ValueError):
    """A match object the agent cannot use (the message names the field)."""


def reverse_match(match: dict[str, Any]) -> dict[str, Any]:
    """The same match with sources and destinations swapped."""
    return {_REVERSE.get(k, k): v for k, v in match.items()}


def compile_match(match: dict[str, Any], where: str = "match") -> Callable[[Fields], bool]:
    """A predicate over parsed fields. ``in_port`` is ignored: the copy arrives on
    the capture port, so the ingress port is not visible here."""
    checks: list[Callable[[Fields], bool]] = []
    for key, value in match.items():
        if key == "in_port":
            continue
        if key in _ADDRESS_FIELDS:
            try:
                net = ipaddress.ip_network(str(value), strict=False)
            except ValueError as exc:
                raise MatchError(f"{where}.{key}: {exc}") from None
            checks.append(lambda f, k=key, n=net: f.get(k) is not None and f[k] in n)
        elif key in _INT_FIELDS:
            if not isinstance(value, int) or isinstance(value, bool):
                raise MatchError(f"{where}.{key}: must be an integer, got {value!r}")
            checks.append(lambda f, k=key, v=value: f.get(k) == v)
        else:
            raise MatchError(f"{where}.{key}: unknown match field")
    if not checks:
        raise MatchError(f"{where}: needs at least one field besides in_port")
    return lambda f: all(check(f) for check in checks)


@dataclass(frozen=True)
class FlowKey:
    """A 5-tuple as text, for naming unmatched flows in reports."""

    proto: int | None
    src: str
    dst: str
    sport: int | None
    dport: int | None

    @classmethod
    def of(cls, f: Fields) -> "FlowKey":
        src = f.get("ipv4_src") or f.get("ipv6_src")
        dst = f.get("ipv4_dst") or f.get("ipv6_dst")
        return cls(f.get("ip_proto"), str(src) if src else "", str(dst) if dst else "",
                   f.get("tcp_src", f.get("udp_src")), f.get("tcp_dst", f.get("udp_dst")))

    def __str__(self) -> str:
        return f"{self.proto}:{self.src}:{self.sport}>{self.dst}:{self.dport}"
