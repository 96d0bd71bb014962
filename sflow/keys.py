"""Flow keys of one flow sample, named and formatted as sFlow-RT does.

``sample_keys(agent, sample)`` returns only the keys the sample carries (a
flow definition that needs a missing key skips the sample, as sFlow-RT does).
Key values are strings; ``bytes`` and ``frames`` are ints (the values flows
add up) and ``_rate`` is the sample's sampling rate (private: for scaling).

Choices (documented because sFlow-RT's exact behaviour is not published):

* ``inputifindex``/``outputifindex``: the ifIndex in decimal; ``discard`` for
  output format 1 (and for every drop-notification sample 0:5), ``multiple``
  for format 2, ``internal`` for 0x3FFFFFFF; absent when the index is 0
  (unknown).
* ``direction``: ``ingress`` when the sampler is not an ifIndex data source
  (Open vSwitch's per-bridge sampler 2:1000+n samples every packet entering
  the bridge); for ifIndex samplers ``ingress`` if the sampler is the input
  port, ``egress`` if it is the output port, absent otherwise.
* Header-derived keys come from ``sflow.headers`` (sampled header 0:1); a
  sample without one falls back to sampled_ethernet / sampled_ipv4 /
  sampled_ipv6 records (0:2, 0:3, 0:4).
* ``ethernetprotocol``, ``iptos``, ``icmptype``... are decimal;
  ``tcpflags`` is sFlow-RT's 9-character bit string.
"""

from __future__ import annotations

from sflow.headers import header_keys
from sflow.model import (
    DS_IFINDEX,
    IF_FORMAT_DISCARD,
    IF_FORMAT_IFINDEX,
    IF_FORMAT_MULTIPLE,
    IF_INTERNAL,
    FlowSample,
    Interface,
    Record,
)

__all__ = ["sample_keys", "datasource_of", "interface_key"]

_TCP_FLAGS = [format(i, "09b") for i in range(512)]
_SWITCH_KEYS: dict[int, tuple[Record, dict[str, str]]] = {}


def interface_key(iface: Interface) -> str | None:
    """sFlow-RT's value for an input/output interface, or None when unknown."""
    fmt = iface.format
    if fmt == IF_FORMAT_IFINDEX:
        value = iface.value
        if value == IF_INTERNAL:
            return "internal"
        return str(value) if value else None
    if fmt == IF_FORMAT_DISCARD:
        return "discard"
    if fmt == IF_FORMAT_MULTIPLE:
        return "multiple"
    return None


def datasource_of(sample: FlowSample) -> str:
    """The data source a flow sample is attributed to (sflow-rt-api.md §1.1).

    Class-0 samplers: their ifIndex. Others (Open vSwitch's bridge sampler
    2:1000+n): the input ifIndex when known, else ``"<class>.<index>"``.
    """
    if sample.source_class == DS_IFINDEX:
        return str(sample.source_index)
    inp = sample.input
    if inp.format == IF_FORMAT_IFINDEX and 0 < inp.value != IF_INTERNAL:
        return str(inp.value)
    return f"{sample.source_class}.{sample.source_index}"


def sample_keys(agent: str, sample: FlowSample) -> dict[str, object]:
    """All sFlow-RT flow keys of ``sample`` from ``agent`` (see module doc)."""
    header = None
    switch = None
    others = False
    for rec in sample.records:
        fmt = rec.format
        if rec.enterprise or not rec.known:
            continue
        if fmt == 1:
            header = rec.fields
        elif fmt == 1001:
            switch = rec
        else:
            others = True
    keys: dict[str, object]
    if header is not None:
        # start from the (possibly cached) header keys: one copy, no dict regrowth
        keys = header_keys(header["headerProtocol"], header["header"]).copy()  # type: ignore[arg-type]
        keys["bytes"] = header["sampledPacketSize"]
    else:
        keys = {}
    keys["agent"] = agent
    if switch is not None:
        keys.update(_switch_keys(switch))
    if others:
        _other_record_keys(sample, keys, header is None)
    inp = sample.input
    iface = _IF_KEYS.get(id(inp))
    if iface is None or iface[0] is not inp:
        iface = _remember_interface(inp)
    if iface[1] is not None:
        keys["inputifindex"] = iface[1]
    if sample.discard_reason is not None:
        keys["outputifindex"] = "discard"
        keys["reason"] = str(sample.discard_reason)
    else:
        out = sample.output
        iface = _IF_KEYS.get(id(out))
        if iface is None or iface[0] is not out:
            iface = _remember_interface(out)
        if iface[1] is not None:
            keys["outputifindex"] = iface[1]
    if sample.source_class != DS_IFINDEX:
        keys["direction"] = "ingress"
    else:
        direction = _direction(sample)
        if direction:
            keys["direction"] = direction
    keys["frames"] = 1
    keys["_rate"] = sample.sampling_rate
    return keys


# Caches keyed by id() of the decoder's shared objects; each entry holds the object
# itself, so its id cannot be reused while the entry exists (checked with ``is``).
_IF_KEYS: dict[int, tuple[Interface, str | None]] = {}


def _remember_interface(iface: Interface) -> tuple[Interface, str | None]:
    entry = (iface, interface_key(iface))
    if len(_IF_KEYS) >= 4096:
        _IF_KEYS.clear()
    _IF_KEYS[id(iface)] = entry
    return entry


def _switch_keys(rec: Record) -> dict[str, str]:
    entry = _SWITCH_KEYS.get(id(rec))
    if entry is None or entry[0] is not rec:
        f = rec.fields
        entry = (rec, {"vlansource": str(f["in_vlan"]), "prioritysource": str(f["in_priority"]),
                       "vlandestination": str(f["out_vlan"]),
                       "prioritydestination": str(f["out_priority"])})
        if len(_SWITCH_KEYS) >= 4096:
            _SWITCH_KEYS.clear()
        _SWITCH_KEYS[id(rec)] = entry
    return entry[1]


def _other_record_keys(sample: FlowSample, keys: dict[str, object], no_header: bool) -> None:
    for rec in sample.records:
        if rec.enterprise or not rec.known:
            continue
        fmt = rec.format
        if fmt == 1002:
            f = rec.fields
            if f["nextHop"]:
                keys["ipnexthoprouter"] = f["nextHop"]
            keys["ipsourcemaskbits"] = str(f["srcSubnetMask"])
            keys["ipdestinationmaskbits"] = str(f["dstSubnetMask"])
        elif fmt == 1003:
            _gateway_keys(rec.fields, keys)
    if no_header:
        _record_keys(sample, keys)


def _direction(sample: FlowSample) -> str | None:
    if sample.source_class != DS_IFINDEX:
        return "ingress"
    index = sample.source_index
    inp, out = sample.input, sample.output
    if inp.format == IF_FORMAT_IFINDEX and inp.value == index:
        return "ingress"
    if out.format == IF_FORMAT_IFINDEX and out.value == index:
        return "egress"
    return None


def _gateway_keys(f: dict[str, object], keys: dict[str, object]) -> None:
    if f["bgp_nexthop"]:
        keys["bgpnexthop"] = f["bgp_nexthop"]
    keys["bgpas"] = str(f["my_as"])
    keys["bgpsourceas"] = str(f["src_as"])
    keys["bgpsourcepeeras"] = str(f["src_peer_as"])
    keys["bgpdestinationas"] = str(f["dst_as"])
    path = f["dst_as_path"]
    if path:
        keys["bgpdestinationaspath"] = "-".join(str(a) for _, ases in path for a in ases)  # type: ignore[attr-defined]
    communities = f["BGP_communities"]
    if communities:
        keys["bgpcommunities"] = "-".join(f"{c >> 16}:{c & 0xFFFF}" for c in communities)  # type: ignore[attr-defined]
    keys["bgplocalpref"] = str(f["BGP_localpref"])


def _record_keys(sample: FlowSample, keys: dict[str, object]) -> None:
    """Keys from sampled_ethernet / sampled_ipv4 / sampled_ipv6 when there is no header."""
    for rec in sample.records:
        if rec.enterprise or not rec.known:
            continue
        f = rec.fields
        if rec.format == 2:
            keys["macsource"] = str(f["ethernet_src"]).upper()
            keys["macdestination"] = str(f["ethernet_dst"]).upper()
            keys["ethernetprotocol"] = str(f["ethernet_type"])
            keys["bytes"] = f["ethernet_len"]  # the frame length wins over an IP length
        elif rec.format in (3, 4):
            proto = int(f["IPProtocol"])  # type: ignore[call-overload]
            if rec.format == 3:
                keys["ipsource"] = f["srcIP"]
                keys["ipdestination"] = f["dstIP"]
                keys["ipprotocol"] = str(proto)
                keys["iptos"] = str(f["IPTOS"])
            else:
                keys["ip6source"] = f["srcIP6"]
                keys["ip6destination"] = f["dstIP6"]
                keys["ip6nexthdr"] = str(proto)
            if proto == 6:
                keys["tcpsourceport"] = str(f["srcPort"])
                keys["tcpdestinationport"] = str(f["dstPort"])
                keys["tcpflags"] = _TCP_FLAGS[int(f["TCPFlags"]) & 0x1FF]  # type: ignore[call-overload]
            elif proto == 17:
                keys["udpsourceport"] = str(f["srcPort"])
                keys["udpdestinationport"] = str(f["dstPort"])
            keys.setdefault("bytes", f["sampledPacketSize"])
