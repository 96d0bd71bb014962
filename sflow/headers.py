"""Parse a sampled packet header into sFlow-RT flow keys.

``parse_header(protocol, header)`` walks Ethernet (802.1Q / 802.1ad / 0x9100
tag stacks) or a raw IPv4/IPv6 header (protocols 11/12) -> IPv4 / IPv6 (with
extension headers) -> TCP / UDP / ICMP / ICMPv6, and, for VXLAN (UDP 4789),
on into the inner Ethernet frame whose keys get sFlow-RT's ``.1`` suffix.

Values are strings in sFlow-RT's formats: MACs as 12 uppercase hex digits
(``00163E2B0C12``), addresses in their usual text form, numbers in decimal,
``tcpflags`` as a 9-character bit string (NS CWR ECE URG ACK PSH RST SYN
FIN), ``stack`` as a dotted protocol list (``eth.dot1q.ip.tcp``). Truncation
anywhere just ends the walk: the keys parsed so far are returned. Only keys
present in the packet are set.
"""

from __future__ import annotations

import socket

__all__ = ["parse_header", "fill_keys", "header_keys", "HEADER_ETHERNET", "HEADER_IPV4", "HEADER_IPV6"]

HEADER_ETHERNET = 1
HEADER_IPV4 = 11
HEADER_IPV6 = 12

_VLAN_TPIDS = frozenset((0x8100, 0x88A8, 0x9100))
_IP6_EXT_HDRS = frozenset((0, 43, 60, 135, 139, 140))  # length in 8-octet units after the first 8
_VXLAN_PORT = 4789
_MAX_DEPTH = 2  # outer + one tunnelled frame

_inet_ntoa = socket.inet_ntoa
_inet_ntop = socket.inet_ntop
_AF_INET6 = socket.AF_INET6

# 9-bit TCP flag strings, precomputed (NS flag lives in the data-offset byte's low bit).
_TCP_FLAGS = [format(i, "09b") for i in range(512)]
_DEC = [str(i) for i in range(65536)]


def parse_header(protocol: int, header: bytes) -> dict[str, str]:
    """sFlow-RT keys found in a sampled header of the given ``headerProtocol`` (a new dict)."""
    return dict(header_keys(protocol, header))


def fill_keys(protocol: int, header: bytes, keys: dict[str, str]) -> None:
    """``parse_header`` into an existing dict."""
    keys.update(header_keys(protocol, header))


def header_keys(protocol: int, header: bytes) -> dict[str, str]:
    """Like ``parse_header``, but the dict may be shared (cached): do not modify it.

    The per-sample fast path: ``header_keys(...).copy()`` starts a sample's key
    dict at the right size.
    """
    h = header
    n = len(h)
    # Fast path, same result as the general walk: untagged Ethernet, IPv4 without
    # options, not a later fragment (nearly every sample a switch sends).
    if (protocol == 1 and n >= 34 and h[12] == 8 and h[13] == 0 and h[14] == 0x45
            and not (h[20] & 0x1F or h[21])):
        proto = h[23]
        keys: dict[str, str]
        if n >= 48 and not (proto == 17 and h[36] == 0x12 and h[37] == 0xB5):  # not VXLAN
            # Samples of one flow differ only in bytes no key depends on (IP id, TTL,
            # checksum, TCP sequence...): cache the keys on the bytes they come from.
            if proto == 6:
                raw = h[0:18] + h[23:24] + h[26:38] + h[46:48]
            elif proto == 17:
                raw = h[0:18] + h[23:24] + h[26:38]
            elif proto == 1:
                raw = h[0:18] + h[23:24] + h[26:36]
            else:
                raw = h[0:18] + h[23:24] + h[26:34]
            hit = _CACHE.get(raw)
            if hit is None:
                hit = {}
                _fast_ipv4(h, proto, hit)
                if len(_CACHE) >= _CACHE_MAX:
                    _CACHE.clear()
                _CACHE[raw] = hit
            return hit
        keys = {}
        _fast_ipv4(h, proto, keys)
        return keys
    keys = {}
    _general(protocol, h, keys)
    return keys


_CACHE: dict[bytes, dict[str, str]] = {}
_CACHE_MAX = 16384


def _fast_ipv4(h: bytes, proto: int, keys: dict[str, str]) -> None:
    n = len(h)
    if proto == 17 and n >= 38 and (h[36] << 8 | h[37]) == _VXLAN_PORT:
        _general(1, h, keys)  # tunnelled frame: the general walk decodes it
        return
    keys["macdestination"] = h[0:6].hex().upper()
    keys["macsource"] = h[6:12].hex().upper()
    keys["ethernetprotocol"] = "2048"
    keys["ipsource"] = _inet_ntoa(h[26:30])
    keys["ipdestination"] = _inet_ntoa(h[30:34])
    keys["ipprotocol"] = _DEC[proto]
    keys["iptos"] = _DEC[h[15]]
    keys["ipbytes"] = _DEC[h[16] << 8 | h[17]]
    if proto == 6:
        if n >= 38:
            keys["tcpsourceport"] = _DEC[h[34] << 8 | h[35]]
            keys["tcpdestinationport"] = _DEC[h[36] << 8 | h[37]]
            if n >= 48:
                keys["tcpflags"] = _TCP_FLAGS[(h[46] & 1) << 8 | h[47]]
        keys["stack"] = "eth.ip.tcp"
    elif proto == 17:
        if n >= 38:
            keys["udpsourceport"] = _DEC[h[34] << 8 | h[35]]
            keys["udpdestinationport"] = _DEC[h[36] << 8 | h[37]]
        keys["stack"] = "eth.ip.udp"
    elif proto == 1:
        if n >= 36:
            keys["icmptype"] = _DEC[h[34]]
            keys["icmpcode"] = _DEC[h[35]]
        keys["stack"] = "eth.ip.icmp"
    else:
        keys["stack"] = "eth.ip"


def _general(protocol: int, header: bytes, keys: dict[str, str]) -> None:
    if protocol == HEADER_ETHERNET:
        stack = _ethernet(header, 0, keys, "", 0)
    elif protocol == HEADER_IPV4:
        stack = _ipv4(header, 0, keys, "", 0) if header else []
    elif protocol == HEADER_IPV6:
        stack = _ipv6(header, 0, keys, "", 0) if header else []
    else:
        return
    if stack:
        keys["stack"] = ".".join(stack)


def _ethernet(h: bytes, off: int, keys: dict[str, str], sfx: str, depth: int) -> list[str]:
    n = len(h)
    if off + 14 > n:
        return []
    keys["macdestination" + sfx] = h[off:off + 6].hex().upper()
    keys["macsource" + sfx] = h[off + 6:off + 12].hex().upper()
    stack = ["eth"]
    off += 12
    etype = h[off] << 8 | h[off + 1]
    tci = -1
    while etype in _VLAN_TPIDS:
        if off + 6 > n:
            return stack  # cut inside the tag stack: inner VLAN and ethertype unknown
        tci = h[off + 2] << 8 | h[off + 3]
        stack.append("dot1q")
        off += 4
        etype = h[off] << 8 | h[off + 1]
    if tci >= 0:
        # the last (inner) tag wins: QinQ reports the customer VLAN
        keys["vlan" + sfx] = _DEC[tci & 0x0FFF]
        keys["priority" + sfx] = _DEC[tci >> 13]
    keys["ethernetprotocol" + sfx] = _DEC[etype]
    off += 2
    if etype == 0x0800:
        stack += _ipv4(h, off, keys, sfx, depth)
    elif etype == 0x86DD:
        stack += _ipv6(h, off, keys, sfx, depth)
    elif etype == 0x0806:
        stack.append("arp")
    return stack


def _ipv4(h: bytes, off: int, keys: dict[str, str], sfx: str, depth: int) -> list[str]:
    if off + 20 > len(h) or h[off] >> 4 != 4:
        return []
    ihl = (h[off] & 0x0F) * 4
    proto = h[off + 9]
    keys["ipsource" + sfx] = _inet_ntoa(h[off + 12:off + 16])
    keys["ipdestination" + sfx] = _inet_ntoa(h[off + 16:off + 20])
    keys["ipprotocol" + sfx] = _DEC[proto]
    keys["iptos" + sfx] = _DEC[h[off + 1]]
    keys["ipbytes" + sfx] = _DEC[h[off + 2] << 8 | h[off + 3]]
    stack = ["ip"]
    if ((h[off + 6] << 8 | h[off + 7]) & 0x1FFF) or ihl < 20:
        return stack  # later fragment: no transport header here
    stack += _transport(h, off + ihl, proto, keys, sfx, depth, False)
    return stack


def _ipv6(h: bytes, off: int, keys: dict[str, str], sfx: str, depth: int) -> list[str]:
    n = len(h)
    if off + 40 > n or h[off] >> 4 != 6:
        return []
    keys["ip6source" + sfx] = _inet_ntop(_AF_INET6, h[off + 8:off + 24])
    keys["ip6destination" + sfx] = _inet_ntop(_AF_INET6, h[off + 24:off + 40])
    keys["ip6tos" + sfx] = _DEC[(h[off] & 0x0F) << 4 | h[off + 1] >> 4]
    nxt = h[off + 6]
    off += 40
    stack = ["ip6"]
    while True:
        if nxt in _IP6_EXT_HDRS:
            if off + 2 > n:
                return stack  # upper-layer protocol unknown (truncated)
            nxt, off = h[off], off + (h[off + 1] + 1) * 8
        elif nxt == 44:  # fragment header
            if off + 8 > n:
                return stack
            first = not ((h[off + 2] << 8 | h[off + 3]) & 0xFFF8)
            nxt, off = h[off], off + 8
            if not first:
                keys["ip6nexthdr" + sfx] = _DEC[nxt]
                return stack
        elif nxt == 51:  # AH: length in 4-octet units, minus 2
            if off + 2 > n:
                return stack
            nxt, off = h[off], off + (h[off + 1] + 2) * 4
        else:
            break
    keys["ip6nexthdr" + sfx] = _DEC[nxt]
    stack += _transport(h, off, nxt, keys, sfx, depth, True)
    return stack


def _transport(h: bytes, off: int, proto: int, keys: dict[str, str], sfx: str,
               depth: int, v6: bool) -> list[str]:
    n = len(h)
    if proto == 6:
        if off + 4 > n:
            return ["tcp"]
        keys["tcpsourceport" + sfx] = _DEC[h[off] << 8 | h[off + 1]]
        keys["tcpdestinationport" + sfx] = _DEC[h[off + 2] << 8 | h[off + 3]]
        if off + 14 <= n:
            keys["tcpflags" + sfx] = _TCP_FLAGS[(h[off + 12] & 1) << 8 | h[off + 13]]
        return ["tcp"]
    if proto == 17:
        if off + 4 > n:
            return ["udp"]
        dport = h[off + 2] << 8 | h[off + 3]
        keys["udpsourceport" + sfx] = _DEC[h[off] << 8 | h[off + 1]]
        keys["udpdestinationport" + sfx] = _DEC[dport]
        if dport == _VXLAN_PORT and depth + 1 < _MAX_DEPTH and off + 16 <= n and h[off + 8] & 0x08:
            keys["vxlanvni" + sfx] = str(h[off + 12] << 16 | h[off + 13] << 8 | h[off + 14])
            inner = _ethernet(h, off + 16, keys, f".{depth + 1}", depth + 1)
            return ["udp", "vxlan", *inner]
        return ["udp"]
    if proto == 1 and not v6:
        if off + 2 <= n:
            keys["icmptype" + sfx] = _DEC[h[off]]
            keys["icmpcode" + sfx] = _DEC[h[off + 1]]
        return ["icmp"]
    if proto == 58 and v6:
        if off + 2 <= n:
            # ICMPv6 has its own keys in sFlow-RT; icmptype/icmpcode stay IPv4-only
            keys["icmp6type" + sfx] = _DEC[h[off]]
            keys["icmp6code" + sfx] = _DEC[h[off + 1]]
        return ["icmp6"]
    return []
