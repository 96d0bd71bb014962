"""sFlow v5 datagram decoder: bytes -> ``sflow.model.Datagram``.

Pure and fast: precompiled ``struct.Struct`` readers, no per-field objects,
sampled packet headers kept as raw bytes (``sflow.headers`` parses them on
demand). Every TLV is skipped by its declared length, so unknown samples and
records (and fields appended to known ones) are passed over.

Malformed input raises ``DecodeError`` and nothing else, carrying a short
stable ``reason`` slug and the datagram decoded so far (``partial``):

``not-sflow-v5``      first word is not 5 (other protocols share UDP 6343)
``truncated-header``  datagram shorter than its header
``bad-address-type``  agent address type not 0/1/2 (sflowtool aborts too)
``truncated-sample``  a sample's TLV header or declared length runs past the datagram
``bad-length``        a sample's or record's content overruns its own declared
                      length (or a record overruns its sample)

Choice for over-long content (gopacket vectors 5, 8, 11): like sflowtool, a
sample or record whose decoded content needs more bytes than its declared
length makes the whole datagram malformed (``bad-length``); the samples
decoded before it are kept in ``partial``. Content *shorter* than the
declared length is fine (the spec lets structures grow): the known prefix is
decoded and the rest skipped. Bytes after the declared samples are ignored
(sflowtool does the same). An agent address of type 0 (UNKNOWN) gives
``agent == ""`` and ``agent_ip_version == 0``. Unknown samples and records,
and every enterprise != 0 structure, are kept as tag + length only.

Record ``fields`` use sflowtool's names with native values (ints, floats,
``str`` for addresses, 12-hex-digit lowercase ``str`` for MACs). Notable:

* flow 0:1 ``headerProtocol``, ``sampledPacketSize``, ``strippedBytes``,
  ``headerLen``, ``header`` (raw ``bytes``);
* flow 0:3 / 0:1023 / 0:1024 ``sampledPacketSize``, ``IPSize``, ``srcIP``,
  ``dstIP``, ``IPProtocol``, ``IPTOS``, ``srcPort``, ``dstPort``, ``TCPFlags``;
  0:4 the same with ``srcIP6``/``dstIP6`` and ``IPPriority``;
* flow 0:1001 ``in_vlan``, ``in_priority``, ``out_vlan``, ``out_priority``;
  0:1029/0:1030 ``vni``; 0:1036 ``egress_queue_id``;
* counter 0:1 ``ifIndex``, ``networkType``, ``ifSpeed``, ``ifDirection``,
  ``ifStatus``, ``ifInOctets`` ... ``ifPromiscuousMode``;
  0:1004 ``openflow_datapath_id`` (int), ``openflow_port``; 0:1005 ``ifName``;
  0:1001 ``5s_cpu``/``1m_cpu``/``5m_cpu`` (percent x 100, as sent),
  ``total_memory_bytes``, ``free_memory_bytes``;
  0:2207 ``OVS_dp_hits`` ... ``OVS_dp_masks``.
"""

from __future__ import annotations

import socket
import struct
from typing import Any, Callable

from sflow.model import (
    CounterSample,
    Datagram,
    FlowSample,
    Interface,
    Record,
    UnknownSample,
)

__all__ = ["DecodeError", "decode_datagram", "REASONS"]

REASONS = (
    "not-sflow-v5",
    "truncated-header",
    "bad-address-type",
    "truncated-sample",
    "bad-length",
)


class DecodeError(ValueError):
    """A datagram that is not valid sFlow v5.

    ``reason`` is one of ``REASONS`` (stable; the engine counts per reason),
    ``partial`` the datagram as far as it decoded (None before the header was
    read), ``offset`` the byte offset of the structure that failed.
    """

    def __init__(self, reason: str, partial: Datagram | None = None, offset: int = 0) -> None:
        super().__init__(f"{reason} at offset {offset}")
        self.reason = reason
        self.partial = partial
        self.offset = offset


class _Overrun(Exception):
    """Content needs more bytes than its TLV declared (internal signal)."""

    def __init__(self, offset: int) -> None:
        self.offset = offset


_U32 = struct.Struct(">I")
_U64 = struct.Struct(">Q")
_2U32 = struct.Struct(">II")
_4U32 = struct.Struct(">IIII")
_FLOW_COMPACT = struct.Struct(">8I")      # seq, src, rate, pool, drops, in, out, nrec
_FLOW_EXPANDED = struct.Struct(">11I")    # seq, cls, idx, rate, pool, drops, infmt, in, outfmt, out, nrec
_DISCARD = struct.Struct(">8I")           # seq, cls, idx, drops, in, out, reason, nrec
_COUNTER_COMPACT = struct.Struct(">3I")   # seq, src, nrec
_COUNTER_EXPANDED = struct.Struct(">4I")  # seq, cls, idx, nrec

_inet_ntoa = socket.inet_ntoa


def _inet6(b: bytes) -> str:
    return socket.inet_ntop(socket.AF_INET6, b)


def _mac(data: bytes, off: int) -> str:
    return data[off:off + 6].hex()


# Interface values repeat endlessly (a few ports per agent): share the frozen objects.
_IFACES: dict[int, Interface] = {}


def _iface_compact(raw: int) -> Interface:
    iface = _IFACES.get(raw)
    if iface is None:
        iface = Interface(raw >> 30, raw & 0x3FFFFFFF)
        if len(_IFACES) < 65536:
            _IFACES[raw] = iface
    return iface


def _iface_expanded(fmt: int, value: int) -> Interface:
    key = (fmt << 32 | value) | (1 << 70)  # disjoint from compact keys
    iface = _IFACES.get(key)
    if iface is None:
        iface = Interface(fmt, value)
        if len(_IFACES) < 65536:
            _IFACES[key] = iface
    return iface


# --- variable-length helpers (bounded by the record's end) -------------------

def _opaque(data: bytes, off: int, end: int) -> tuple[bytes, int]:
    if off + 4 > end:
        raise _Overrun(off)
    (n,) = _U32.unpack_from(data, off)
    start = off + 4
    stop = start + n
    if stop > end:
        raise _Overrun(off)
    return data[start:stop], start + ((n + 3) & ~3)


def _string(data: bytes, off: int, end: int) -> tuple[str, int]:
    raw, off = _opaque(data, off, end)
    return raw.decode("utf-8", "replace"), off


def _address(data: bytes, off: int, end: int) -> tuple[str, int]:
    if off + 4 > end:
        raise _Overrun(off)
    (kind,) = _U32.unpack_from(data, off)
    if kind == 1:
        if off + 8 > end:
            raise _Overrun(off)
        return _inet_ntoa(data[off + 4:off + 8]), off + 8
    if kind == 2:
        if off + 20 > end:
            raise _Overrun(off)
        return _inet6(data[off + 4:off + 20]), off + 20
    if kind == 0:
        return "", off + 4
    raise _BadAddress(off)


class _BadAddress(Exception):
    def __init__(self, offset: int) -> None:
        self.offset = offset


def _u32s(data: bytes, off: int, end: int) -> tuple[list[int], int]:
    if off + 4 > end:
        raise _Overrun(off)
    (n,) = _U32.unpack_from(data, off)
    stop = off + 4 + 4 * n
    if stop > end:
        raise _Overrun(off)
    return list(struct.unpack_from(f">{n}I", data, off + 4)), stop


# --- fixed-layout records: (Struct, field names) ---------------------------------

def _fixed(fmt: str, names: str) -> tuple[struct.Struct, tuple[str, ...]]:
    return struct.Struct(fmt), tuple(names.split())


_IF_COUNTERS = _fixed(
    ">IIQIIQ6IQ6I",
    "ifIndex networkType ifSpeed ifDirection ifStatus ifInOctets ifInUcastPkts "
    "ifInMulticastPkts ifInBroadcastPkts ifInDiscards ifInErrors ifInUnknownProtos "
    "ifOutOctets ifOutUcastPkts ifOutMulticastPkts ifOutBroadcastPkts ifOutDiscards "
    "ifOutErrors ifPromiscuousMode",
)
_ETH_COUNTERS = _fixed(
    ">13I",
    "dot3StatsAlignmentErrors dot3StatsFCSErrors dot3StatsSingleCollisionFrames "
    "dot3StatsMultipleCollisionFrames dot3StatsSQETestErrors dot3StatsDeferredTransmissions "
    "dot3StatsLateCollisions dot3StatsExcessiveCollisions dot3StatsInternalMacTransmitErrors "
    "dot3StatsCarrierSenseErrors dot3StatsFrameTooLongs dot3StatsInternalMacReceiveErrors "
    "dot3StatsSymbolErrors",
)
_VLAN_COUNTERS = _fixed(">IQIIII", "in_vlan octets ucastPkts multicastPkts broadcastPkts discards")
_PROCESSOR = _fixed(">IIIQQ", "5s_cpu 1m_cpu 5m_cpu total_memory_bytes free_memory_bytes")
_OF_PORT = _fixed(">QI", "openflow_datapath_id openflow_port")
_HOST_PARENT = _fixed(">II", "parent_dsClass parent_dsIndex")
_HOST_CPU = _fixed(
    ">fffIIIIIIIIIIIIII",
    "cpu_load_one cpu_load_five cpu_load_fifteen cpu_proc_run cpu_proc_total cpu_num "
    "cpu_speed cpu_uptime cpu_user cpu_nice cpu_system cpu_idle cpu_wio cpuintr cpu_sintr "
    "cpuinterrupts cpu_contexts",
)
_HOST_CPU_EXTRA = _fixed(">III", "cpu_steal cpu_guest cpu_guest_nice")  # since 2014 (80 bytes)
_HOST_MEMORY = _fixed(
    ">7Q4I",
    "mem_total mem_free mem_shared mem_buffers mem_cached swap_total swap_free "
    "page_in page_out swap_in swap_out",
)
_HOST_DISK = _fixed(
    ">QQIIQIIQI",
    "disk_total disk_free disk_partition_max_used disk_reads disk_bytes_read "
    "disk_read_time disk_writes disk_bytes_written disk_write_time",
)
_HOST_NET = _fixed(
    ">QIIIQIII",
    "nio_bytes_in nio_pkts_in nio_errs_in nio_drops_in nio_bytes_out nio_pkts_out "
    "nio_errs_out nio_drops_out",
)
_APP_RESOURCES = _fixed(
    ">IIQQIIII",
    "user_time system_time memory_used memory_max files_open files_max "
    "connections_open connections_max",
)
_OVS_DP = _fixed(
    ">6I", "OVS_dp_hits OVS_dp_misses OVS_dp_lost OVS_dp_mask_hits OVS_dp_flows OVS_dp_masks"
)
_EXT_SWITCH = _fixed(">4I", "in_vlan in_priority out_vlan out_priority")
_VNI = _fixed(">I", "vni")
_EGRESS_QUEUE = _fixed(">I", "egress_queue_id")

_LACP = struct.Struct(">6s2x6s2xI4B8I")
_LACP_NAMES = (
    "attachedAggID actorAdminPortState actorOperPortState partnerAdminPortState "
    "partnerOperPortState LACPDUsRx markerPDUsRx markerResponsePDUsRx unknownRx illegalRx "
    "LACPDUsTx markerPDUsTx markerResponsePDUsTx"
).split()
_SAMPLED_ETH = struct.Struct(">I6s2x6s2xI")
_SAMPLED_IP4 = struct.Struct(">II4s4sIIII")
_SAMPLED_IP6 = struct.Struct(">II16s16sIIII")
_HEADER_FIXED = struct.Struct(">IIII")


def _decode_fixed(spec: tuple[struct.Struct, tuple[str, ...]],
                  data: bytes, off: int, end: int) -> dict[str, Any]:
    st, names = spec
    if off + st.size > end:
        raise _Overrun(off)
    return dict(zip(names, st.unpack_from(data, off)))


# --- flow records ---------------------------------------------------------------

def _flow_header(data: bytes, off: int, end: int) -> dict[str, Any]:
    if off + 16 > end:
        raise _Overrun(off)
    proto, frame_len, stripped, n = _HEADER_FIXED.unpack_from(data, off)
    start = off + 16
    if start + n > end:
        raise _Overrun(off)
    return {
        "headerProtocol": proto,
        "sampledPacketSize": frame_len,
        "strippedBytes": stripped,
        "headerLen": n,
        "header": data[start:start + n],
    }


def _flow_ethernet(data: bytes, off: int, end: int) -> dict[str, Any]:
    if off + 24 > end:
        raise _Overrun(off)
    length, src, dst, etype = _SAMPLED_ETH.unpack_from(data, off)
    return {"ethernet_len": length, "ethernet_src": src.hex(), "ethernet_dst": dst.hex(),
            "ethernet_type": etype}


def _flow_ipv4(data: bytes, off: int, end: int) -> dict[str, Any]:
    if off + 32 > end:
        raise _Overrun(off)
    length, proto, src, dst, sport, dport, flags, tos = _SAMPLED_IP4.unpack_from(data, off)
    return {"sampledPacketSize": length, "IPSize": length, "srcIP": _inet_ntoa(src),
            "dstIP": _inet_ntoa(dst), "IPProtocol": proto, "IPTOS": tos,
            "srcPort": sport, "dstPort": dport, "TCPFlags": flags}


def _flow_ipv6(data: bytes, off: int, end: int) -> dict[str, Any]:
    if off + 56 > end:
        raise _Overrun(off)
    length, proto, src, dst, sport, dport, flags, prio = _SAMPLED_IP6.unpack_from(data, off)
    return {"sampledPacketSize": length, "IPSize": length, "srcIP6": _inet6(src),
            "dstIP6": _inet6(dst), "IPProtocol": proto, "IPPriority": prio,
            "srcPort": sport, "dstPort": dport, "TCPFlags": flags}


def _flow_router(data: bytes, off: int, end: int) -> dict[str, Any]:
    nexthop, off = _address(data, off, end)
    if off + 8 > end:
        raise _Overrun(off)
    src_mask, dst_mask = _2U32.unpack_from(data, off)
    return {"nextHop": nexthop, "srcSubnetMask": src_mask, "dstSubnetMask": dst_mask}


def _flow_gateway(data: bytes, off: int, end: int) -> dict[str, Any]:
    nexthop, off = _address(data, off, end)
    if off + 16 > end:
        raise _Overrun(off)
    my_as, src_as, src_peer_as, nseg = _4U32.unpack_from(data, off)
    off += 16
    path: list[tuple[int, list[int]]] = []
    for _ in range(nseg):
        if off + 4 > end:
            raise _Overrun(off)
        (seg_type,) = _U32.unpack_from(data, off)
        ases, off = _u32s(data, off + 4, end)
        path.append((seg_type, ases))
    communities, off = _u32s(data, off, end)
    if off + 4 > end:
        raise _Overrun(off)
    (localpref,) = _U32.unpack_from(data, off)
    flat = [asn for _, ases in path for asn in ases]
    return {
        "bgp_nexthop": nexthop, "my_as": my_as, "src_as": src_as, "src_peer_as": src_peer_as,
        "dst_as_path": path,
        # as sflowtool: destination AS = last of the path, peer AS = first (0 if none)
        "dst_as": flat[-1] if flat else 0, "dst_peer_as": flat[0] if flat else 0,
        "BGP_communities": communities, "BGP_localpref": localpref,
    }


def _flow_user(data: bytes, off: int, end: int) -> dict[str, Any]:
    if off + 4 > end:
        raise _Overrun(off)
    (src_cs,) = _U32.unpack_from(data, off)
    src_user, off = _string(data, off + 4, end)
    if off + 4 > end:
        raise _Overrun(off)
    (dst_cs,) = _U32.unpack_from(data, off)
    dst_user, off = _string(data, off + 4, end)
    return {"src_user_charset": src_cs, "src_user": src_user,
            "dst_user_charset": dst_cs, "dst_user": dst_user}


def _flow_url(data: bytes, off: int, end: int) -> dict[str, Any]:
    if off + 4 > end:
        raise _Overrun(off)
    (direction,) = _U32.unpack_from(data, off)
    url, off = _string(data, off + 4, end)
    host, off = _string(data, off, end)
    return {"url_direction": direction, "url": url, "host": host}


def _fixed_decoder(spec: tuple[struct.Struct, tuple[str, ...]]) -> Callable[[bytes, int, int], dict[str, Any]]:
    def decode(data: bytes, off: int, end: int) -> dict[str, Any]:
        return _decode_fixed(spec, data, off, end)
    return decode


_Decoder = Callable[[bytes, int, int], dict[str, Any]]

FLOW_DECODERS: dict[int, _Decoder] = {
    1: _flow_header,
    2: _flow_ethernet,
    3: _flow_ipv4,
    4: _flow_ipv6,
    1001: _fixed_decoder(_EXT_SWITCH),
    1002: _flow_router,
    1003: _flow_gateway,
    1004: _flow_user,
    1005: _flow_url,
    1023: _flow_ipv4,   # extended_ipv4_tunnel_egress: outer header, sampled_ipv4 layout
    1024: _flow_ipv4,   # extended_ipv4_tunnel_ingress
    1029: _fixed_decoder(_VNI),  # extended_vni_egress
    1030: _fixed_decoder(_VNI),  # extended_vni_ingress
    1036: _fixed_decoder(_EGRESS_QUEUE),
}


# --- counter records ------------------------------------------------------------

def _counter_lacp(data: bytes, off: int, end: int) -> dict[str, Any]:
    if off + _LACP.size > end:
        raise _Overrun(off)
    values = _LACP.unpack_from(data, off)
    fields: dict[str, Any] = {"actorSystemID": values[0].hex(), "partnerSystemID": values[1].hex()}
    fields.update(zip(_LACP_NAMES, values[2:]))
    return fields


def _counter_port_name(data: bytes, off: int, end: int) -> dict[str, Any]:
    name, _ = _string(data, off, end)
    return {"ifName": name}


def _counter_host_descr(data: bytes, off: int, end: int) -> dict[str, Any]:
    hostname, off = _string(data, off, end)
    if off + 24 > end:
        raise _Overrun(off)
    u = data[off:off + 16].hex()
    machine_type, os_name = _2U32.unpack_from(data, off + 16)
    os_release, off = _string(data, off + 24, end)
    return {"hostname": hostname,
            "UUID": f"{u[:8]}-{u[8:12]}-{u[12:16]}-{u[16:20]}-{u[20:]}",
            "machine_type": machine_type, "os_name": os_name, "os_release": os_release}


def _counter_host_adapters(data: bytes, off: int, end: int) -> dict[str, Any]:
    if off + 4 > end:
        raise _Overrun(off)
    (count,) = _U32.unpack_from(data, off)
    off += 4
    adapters = []
    for _ in range(count):
        if off + 8 > end:
            raise _Overrun(off)
        if_index, nmacs = _2U32.unpack_from(data, off)
        off += 8
        if off + 8 * nmacs > end:
            raise _Overrun(off)
        macs = [data[o:o + 6].hex() for o in range(off, off + 8 * nmacs, 8)]
        off += 8 * nmacs
        adapters.append({"ifIndex": if_index, "mac_list": macs})
    return {"adaptor_list": adapters}


def _counter_host_cpu(data: bytes, off: int, end: int) -> dict[str, Any]:
    fields = _decode_fixed(_HOST_CPU, data, off, end)
    extra = off + _HOST_CPU[0].size
    if extra + _HOST_CPU_EXTRA[0].size <= end:
        fields.update(_decode_fixed(_HOST_CPU_EXTRA, data, extra, end))
    return fields


COUNTER_DECODERS: dict[int, _Decoder] = {
    1: _fixed_decoder(_IF_COUNTERS),
    2: _fixed_decoder(_ETH_COUNTERS),
    5: _fixed_decoder(_VLAN_COUNTERS),
    7: _counter_lacp,
    1001: _fixed_decoder(_PROCESSOR),
    1004: _fixed_decoder(_OF_PORT),
    1005: _counter_port_name,
    2000: _counter_host_descr,
    2001: _counter_host_adapters,
    2002: _fixed_decoder(_HOST_PARENT),
    2003: _counter_host_cpu,
    2004: _fixed_decoder(_HOST_MEMORY),
    2005: _fixed_decoder(_HOST_DISK),
    2006: _fixed_decoder(_HOST_NET),
    2203: _fixed_decoder(_APP_RESOURCES),
    2207: _fixed_decoder(_OVS_DP),
}


def _records(data: bytes, off: int, end: int, count: int,
             decoders: dict[int, _Decoder]) -> list[Record]:
    """``count`` record TLVs in ``[off, end)``; each decoded within its own length."""
    records: list[Record] = []
    append = records.append
    unpack = _2U32.unpack_from
    for _ in range(count):
        if off + 8 > end:
            raise _Overrun(off)
        fmt, length = unpack(data, off)
        start = off + 8
        stop = start + length
        if stop > end:
            raise _Overrun(off)
        if fmt < 4096:
            decoder = decoders.get(fmt)
            if decoder is not None:
                append(Record(0, fmt, length, decoder(data, start, stop)))
            else:
                append(Record(0, fmt, length, {}, False))
        else:
            # enterprise-specific: kept opaque (enterprise, format, length)
            append(Record(fmt >> 12, fmt & 0xFFF, length, {}, False))
        off = stop
    return records


_SWITCH_STRUCT = _EXT_SWITCH[0]
_SWITCH_RECORDS: dict[bytes, Record] = {}


def _flow_records(data: bytes, off: int, end: int, count: int) -> list[Record]:
    """Flow records, with the two every switch sends (0:1 header, 0:1001) inlined."""
    records: list[Record] = []
    append = records.append
    unpack = _2U32.unpack_from
    for _ in range(count):
        if off + 8 > end:
            raise _Overrun(off)
        fmt, length = unpack(data, off)
        start = off + 8
        stop = start + length
        if stop > end:
            raise _Overrun(off)
        if fmt == 1:
            if start + 16 > stop:
                raise _Overrun(start)
            proto, frame_len, stripped, n = _HEADER_FIXED.unpack_from(data, start)
            hstart = start + 16
            if hstart + n > stop:
                raise _Overrun(start)
            append(Record(0, 1, length, {
                "headerProtocol": proto, "sampledPacketSize": frame_len, "strippedBytes": stripped,
                "headerLen": n, "header": data[hstart:hstart + n]}))
        elif fmt == 1001:
            # identical on most samples of a port: share one read-only Record per body
            raw = data[off:stop]
            rec = _SWITCH_RECORDS.get(raw)
            if rec is None:
                if start + 16 > stop:
                    raise _Overrun(start)
                in_vlan, in_prio, out_vlan, out_prio = _SWITCH_STRUCT.unpack_from(data, start)
                rec = Record(0, 1001, length, {"in_vlan": in_vlan, "in_priority": in_prio,
                                               "out_vlan": out_vlan, "out_priority": out_prio})
                if len(_SWITCH_RECORDS) < 4096:
                    _SWITCH_RECORDS[raw] = rec
            append(rec)
        elif fmt < 4096:
            decoder = FLOW_DECODERS.get(fmt)
            if decoder is not None:
                append(Record(0, fmt, length, decoder(data, start, stop)))
            else:
                append(Record(0, fmt, length, {}, False))
        else:
            append(Record(fmt >> 12, fmt & 0xFFF, length, {}, False))
        off = stop
    return records


# --- samples --------------------------------------------------------------------

def _flow_sample_expanded(data: bytes, off: int, end: int) -> FlowSample:
    if off + 44 > end:
        raise _Overrun(off)
    (seq, cls, idx, rate, pool, drops, in_fmt, inp, out_fmt, out,
     nrec) = _FLOW_EXPANDED.unpack_from(data, off)
    records = _flow_records(data, off + 44, end, nrec)
    return FlowSample(seq, cls, idx, rate, pool, drops, _iface_expanded(in_fmt, inp),
                      _iface_expanded(out_fmt, out), records, expanded=True)


def _discard_sample(data: bytes, off: int, end: int) -> FlowSample:
    if off + 32 > end:
        raise _Overrun(off)
    seq, cls, idx, drops, inp, out, reason, nrec = _DISCARD.unpack_from(data, off)
    records = _flow_records(data, off + 32, end, nrec)
    # input/output are plain ifIndex values here (0 = unknown); no sampling rate/pool
    return FlowSample(seq, cls, idx, 0, 0, drops, _iface_expanded(0, inp),
                      _iface_expanded(0, out), records, expanded=True, discard_reason=reason)


def _counter_sample(data: bytes, off: int, end: int) -> CounterSample:
    if off + 12 > end:
        raise _Overrun(off)
    seq, src, nrec = _COUNTER_COMPACT.unpack_from(data, off)
    records = _records(data, off + 12, end, nrec, COUNTER_DECODERS)
    return CounterSample(seq, src >> 24, src & 0xFFFFFF, records, raw=data[off + 8:end])


def _counter_sample_expanded(data: bytes, off: int, end: int) -> CounterSample:
    if off + 16 > end:
        raise _Overrun(off)
    seq, cls, idx, nrec = _COUNTER_EXPANDED.unpack_from(data, off)
    records = _records(data, off + 16, end, nrec, COUNTER_DECODERS)
    return CounterSample(seq, cls, idx, records, expanded=True, raw=data[off + 12:end])


_HEADER_V4 = struct.Struct(">4s4I")
_HEADER_V6 = struct.Struct(">16s4I")


def decode_datagram(data: bytes) -> Datagram:
    """Decode one sFlow v5 datagram (a UDP payload); raise ``DecodeError`` if malformed."""
    if type(data) is not bytes:
        data = bytes(data)  # bytearray / memoryview: record fields must hold real bytes
    try:
        return _decode(data)
    except DecodeError:
        raise
    except Exception as exc:  # noqa: BLE001 - contract: DecodeError only, whatever the bytes
        raise DecodeError("bad-length", None, 0) from exc


def _decode(data: bytes) -> Datagram:
    n = len(data)
    if n < 8:
        if n >= 4 and _U32.unpack_from(data, 0)[0] != 5:
            raise DecodeError("not-sflow-v5", None, 0)
        raise DecodeError("truncated-header", None, 0)
    version, addr_type = _2U32.unpack_from(data, 0)
    if version != 5:
        raise DecodeError("not-sflow-v5", None, 0)
    if addr_type == 1:
        if n < 28:
            raise DecodeError("truncated-header", None, 0)
        addr, sub, seq, uptime, nsamples = _HEADER_V4.unpack_from(data, 8)
        dg = Datagram(_inet_ntoa(addr), sub, seq, uptime)
        off = 28
    elif addr_type == 2:
        if n < 40:
            raise DecodeError("truncated-header", None, 0)
        addr, sub, seq, uptime, nsamples = _HEADER_V6.unpack_from(data, 8)
        dg = Datagram(_inet6(addr), sub, seq, uptime, agent_ip_version=6)
        off = 40
    elif addr_type == 0:
        if n < 24:
            raise DecodeError("truncated-header", None, 0)
        sub, seq, uptime, nsamples = _4U32.unpack_from(data, 8)
        dg = Datagram("", sub, seq, uptime, agent_ip_version=0)
        off = 24
    else:
        raise DecodeError("bad-address-type", None, 4)

    flows = dg.flow_samples
    counters = dg.counter_samples
    ordered = dg.samples.append
    sample: FlowSample | CounterSample | UnknownSample
    unpack = _2U32.unpack_from
    flow_unpack = _FLOW_COMPACT.unpack_from
    ifaces = _IFACES
    for _ in range(nsamples):
        if off + 8 > n:
            raise DecodeError("truncated-sample", dg, off)
        fmt, length = unpack(data, off)
        start = off + 8
        end = start + length
        if end > n:
            raise DecodeError("truncated-sample", dg, off)
        try:
            if fmt == 1:  # compact flow sample, inlined: the hot path
                if start + 32 > end:
                    raise _Overrun(start)
                seq, src, rate, pool, drops, inp, out, nrec = flow_unpack(data, start)
                sample = FlowSample(seq, src >> 24, src & 0xFFFFFF, rate, pool, drops,
                                    ifaces.get(inp) or _iface_compact(inp),
                                    ifaces.get(out) or _iface_compact(out),
                                    _flow_records(data, start + 32, end, nrec))
                flows.append(sample)
            elif fmt == 2:
                sample = _counter_sample(data, start, end)
                counters.append(sample)
            elif fmt == 3:
                sample = _flow_sample_expanded(data, start, end)
                flows.append(sample)
            elif fmt == 4:
                sample = _counter_sample_expanded(data, start, end)
                counters.append(sample)
            elif fmt == 5:
                sample = _discard_sample(data, start, end)
                flows.append(sample)
            else:
                sample = UnknownSample(fmt >> 12, fmt & 0xFFF, length)
                dg.unknown_samples.append(sample)
            ordered(sample)
        except _Overrun as exc:
            raise DecodeError("bad-length", dg, exc.offset) from None
        except _BadAddress as exc:
            raise DecodeError("bad-address-type", dg, exc.offset) from None
        off = end
    return dg
