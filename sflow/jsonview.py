"""An ``sflowtool -j``-like JSON view of decoded datagrams, and ``demon-sflow decode``.

Field names and value formats follow sflowtool's JSON output where practical
(every scalar a string, ``sourceId`` as ``class:index``, ports as ``multiple
N`` / ``dropCode N``, ``headerBytes`` as dash-separated hex), so the view can
be diffed against ``sflowtool -j``. From sampled headers only the fields our
header parser extracts are shown (no TTL / IP id).
"""

from __future__ import annotations

import argparse
import ipaddress
import json
import os
import struct
import sys
import time
from collections import Counter
from typing import Any, TextIO

from sflow.decode import DecodeError, decode_datagram
from sflow.headers import parse_header
from sflow.model import (
    IF_FORMAT_DISCARD,
    IF_FORMAT_MULTIPLE,
    CounterSample,
    Datagram,
    FlowSample,
    Interface,
    Record,
)
from sflow.pcap import PcapError, read_udp

__all__ = ["datagram_to_json", "main_decode", "DISCARD_REASONS"]

# Drop reason codes (sFlow v5 / sflow_drops) as sflowtool names them.
DISCARD_REASONS: dict[int, str] = {
    0: "net_unreachable", 1: "host_unreachable", 2: "protocol_unreachable",
    3: "port_unreachable", 4: "frag_needed", 5: "src_route_failed", 6: "dst_net_unknown",
    7: "dst_host_unknown", 8: "src_host_isolated", 9: "dst_net_prohibited",
    10: "dst_host_prohibited", 11: "dst_net_tos_unreachable", 12: "dst_host_tos_unreacheable",
    13: "comm_prohibited", 14: "host_precedence_violation", 15: "precedence_cutoff",
    256: "unknown", 257: "ttl_exceeded", 258: "acl", 259: "no_buffer_space", 260: "red",
    261: "traffic_shaping", 262: "pkt_too_big",
}

_FLOW_TYPES = {1: "HEADER", 2: "ETHERNET", 3: "IPV4", 4: "IPV6"}
_EXTENDED_TYPES = {1001: "SWITCH", 1002: "ROUTER", 1003: "GATEWAY", 1004: "USER", 1005: "URL",
                   1036: "egress_queue"}


def datagram_to_json(dg: Datagram, *, source_ip: str = "-", size: int | None = None,
                     timestamp: float | None = None) -> dict[str, Any]:
    """``dg`` as an sflowtool-style JSON object (all scalars strings)."""
    out: dict[str, Any] = {"datagramSourceIP": source_ip}
    if size is not None:
        out["datagramSize"] = str(size)
    if timestamp is not None:
        seconds = int(timestamp)
        out["pcapTimestamp"] = time.strftime("%Y-%m-%dT%H:%M:%S+0000", time.gmtime(seconds))
        out["pcapTimestamp_uS"] = str(int(round((timestamp - seconds) * 1e6)))
    samples: list[dict[str, Any]] = []
    for sample in dg.samples:
        if isinstance(sample, FlowSample):
            samples.append(_flow_sample(sample))
        elif isinstance(sample, CounterSample):
            samples.append(_counter_sample(sample))
        else:
            samples.append({"sampleType_tag": f"{sample.enterprise}:{sample.format}",
                            "sampleType": "UNKNOWN", "length": str(sample.length)})
    out.update({
        "datagramVersion": str(dg.version),
        "agentSubId": str(dg.sub_agent_id),
        "agent": _ip6_full(dg.agent) if dg.agent_ip_version == 6 else dg.agent,
        "packetSequenceNo": str(dg.sequence),
        "sysUpTime": str(dg.uptime_ms),
        "samplesInPacket": str(len(samples)),
        "samples": samples,
    })
    return out


def _port(iface: Interface) -> str:
    if iface.format == IF_FORMAT_MULTIPLE:
        return f"multiple {iface.value}"
    if iface.format == IF_FORMAT_DISCARD:
        return f"dropCode {iface.value}"
    return str(iface.value)


def _flow_sample(s: FlowSample) -> dict[str, Any]:
    source = f"{s.source_class}:{s.source_index}"
    if s.discard_reason is not None:
        out: dict[str, Any] = {
            "sampleType_tag": "0:5", "sampleType": "DISCARD", "sampleSequenceNo": str(s.sequence),
            "sourceId": source, "dropEvents": str(s.drops), "inputPort": str(s.input.value),
            "outputPort": str(s.output.value), "discardCode": str(s.discard_reason),
        }
        if s.discard_reason in DISCARD_REASONS:
            out["discardReason"] = DISCARD_REASONS[s.discard_reason]
        out["elements"] = [{f"discarded_{k}": v for k, v in _flow_element(r).items()}
                           for r in s.records]
        return out
    return {
        "sampleType_tag": "0:3" if s.expanded else "0:1", "sampleType": "FLOWSAMPLE",
        "sampleSequenceNo": str(s.sequence), "sourceId": source,
        "meanSkipCount": str(s.sampling_rate), "samplePool": str(s.sample_pool),
        "dropEvents": str(s.drops), "inputPort": _port(s.input), "outputPort": _port(s.output),
        "elements": [_flow_element(r) for r in s.records],
    }


def _counter_sample(s: CounterSample) -> dict[str, Any]:
    return {
        "sampleType_tag": "0:4" if s.expanded else "0:2", "sampleType": "COUNTERSSAMPLE",
        "sampleSequenceNo": str(s.sequence), "sourceId": f"{s.source_class}:{s.source_index}",
        "elements": [_counter_element(r) for r in s.records],
    }


def _strs(fields: dict[str, Any]) -> dict[str, str]:
    return {k: str(v) for k, v in fields.items()}


def _ip_ports(f: dict[str, Any], prefix: str = "") -> dict[str, str]:
    proto = f["IPProtocol"]
    out = {prefix + "sampledPacketSize": str(f["sampledPacketSize"]),
           prefix + "IPSize": str(f["IPSize"])}
    if "srcIP" in f:
        out[prefix + "srcIP"] = f["srcIP"]
        out[prefix + "dstIP"] = f["dstIP"]
    else:
        out[prefix + "srcIP6"] = _ip6_full(f["srcIP6"])
        out[prefix + "dstIP6"] = _ip6_full(f["dstIP6"])
    out[prefix + "IPProtocol"] = str(proto)
    out[prefix + ("IPTOS" if "IPTOS" in f else "IPPriority")] = str(f.get("IPTOS", f.get("IPPriority")))
    if proto == 6:
        out[prefix + "TCPSrcPort"] = str(f["srcPort"])
        out[prefix + "TCPDstPort"] = str(f["dstPort"])
        out[prefix + "TCPFlags"] = str(f["TCPFlags"])
    elif proto == 17:
        out[prefix + "UDPSrcPort"] = str(f["srcPort"])
        out[prefix + "UDPDstPort"] = str(f["dstPort"])
    return out


def _ip6_full(addr: str) -> str:
    """sflowtool prints IPv6 addresses uncompressed, 4 hex digits per group."""
    return ipaddress.IPv6Address(addr).exploded


def _flow_element(r: Record) -> dict[str, Any]:
    tag = r.tag
    out: dict[str, Any] = {"flowBlock_tag": tag}
    if not r.known:
        out["length"] = str(r.length)
        return out
    f = r.fields
    fmt = r.format
    if fmt in _FLOW_TYPES:
        out["flowSampleType"] = _FLOW_TYPES[fmt]
    elif fmt in _EXTENDED_TYPES:
        out["extendedType"] = _EXTENDED_TYPES[fmt]
    if fmt == 1:
        out.update({"headerProtocol": str(f["headerProtocol"]),
                    "sampledPacketSize": str(f["sampledPacketSize"]),
                    "strippedBytes": str(f["strippedBytes"]), "headerLen": str(f["headerLen"]),
                    "headerBytes": f["header"].hex("-").upper()})
        out.update(_decoded_header(f["headerProtocol"], f["header"]))
    elif fmt in (3, 4):
        out.update(_ip_ports(f))
    elif fmt in (1023, 1024):
        prefix = "tunnel_ipv4_out_" if fmt == 1023 else "tunnel_ipv4_in_"
        out["flowSampleType"] = prefix + "IPV4"
        out.update(_ip_ports(f, prefix))
    elif fmt in (1029, 1030):
        out["tunnel_out_vni" if fmt == 1029 else "tunnel_in_vni"] = str(f["vni"])
    elif fmt == 1003:
        g = dict(f)
        path = g.pop("dst_as_path")
        communities = g.pop("BGP_communities")
        out.update(_strs(g))
        if path:
            out["dst_as_path"] = _as_path(path)
        if communities:
            out["BGP_communities"] = "-".join(str(c) for c in communities)
    else:
        out.update(_strs(f))
    return out


_HEADER_FIELDS = (
    ("macdestination", "dstMAC"), ("macsource", "srcMAC"), ("ethernetprotocol", "ethernet_type"),
    ("ipbytes", "ip.tot_len"), ("ipsource", "srcIP"), ("ipdestination", "dstIP"),
    ("ipprotocol", "IPProtocol"), ("ip6nexthdr", "IPProtocol"), ("iptos", "IPTOS"),
    ("ip6tos", "IPTOS"), ("tcpsourceport", "TCPSrcPort"), ("tcpdestinationport", "TCPDstPort"),
    ("udpsourceport", "UDPSrcPort"), ("udpdestinationport", "UDPDstPort"),
    ("icmptype", "ICMPType"), ("icmpcode", "ICMPCode"),
)


def _as_path(path: list[tuple[int, list[int]]]) -> str:
    """sflowtool's AS path text: sequences dash-joined, AS_SETs (type 1) in parentheses."""
    text = ""
    prev_seq = False
    for seg_type, ases in path:
        joined = "-".join(str(a) for a in ases)
        if seg_type == 1:
            text += f"({joined})"
            prev_seq = False
        else:
            text += ("-" if prev_seq else "") + joined
            prev_seq = True
    return text


def _vlan_tags(header: bytes) -> list[tuple[int, int]]:
    """(vlan, priority) of every 802.1Q/802.1ad tag, outermost first."""
    tags = []
    off = 12
    while off + 4 <= len(header) and (header[off] << 8 | header[off + 1]) in (0x8100, 0x88A8, 0x9100):
        tci = header[off + 2] << 8 | header[off + 3]
        tags.append((tci & 0x0FFF, tci >> 13))
        off += 4
    return tags


def _decoded_header(protocol: int, header: bytes) -> dict[str, str]:
    keys = parse_header(protocol, header)
    out: dict[str, str] = {}
    for key, name in _HEADER_FIELDS:
        if key in keys:
            out[name] = keys[key]
    for name in ("dstMAC", "srcMAC"):
        if name in out:
            out[name] = out[name].lower()
    if protocol == 1:
        for i, (vlan, prio) in enumerate(_vlan_tags(header)):
            suffix = f".{i}" if i else ""
            out["decodedVLAN" + suffix] = str(vlan)
            out["decodedPriority" + suffix] = str(prio)
    if "ip6source" in keys:
        out["srcIP6"] = _ip6_full(keys["ip6source"])
        out["dstIP6"] = _ip6_full(keys["ip6destination"])
    if "tcpflags" in keys:
        out["TCPFlags"] = str(int(keys["tcpflags"], 2))
    return out


def _counter_element(r: Record) -> dict[str, Any]:
    out: dict[str, Any] = {"counterBlock_tag": r.tag}
    if not r.known:
        out["length"] = str(r.length)
        return out
    f = r.fields
    fmt = r.format
    if fmt == 1001:
        for name in ("5s_cpu", "1m_cpu", "5m_cpu"):
            out[name] = f"{f[name] / 100:.2f}"
        out["total_memory_bytes"] = str(f["total_memory_bytes"])
        out["free_memory_bytes"] = str(f["free_memory_bytes"])
    elif fmt == 1004:
        out["openflow_datapath_id"] = f"{f['openflow_datapath_id']:016x}"
        out["openflow_port"] = str(f["openflow_port"])
    elif fmt == 2001:
        out["adaptor_list"] = [{"ifIndex": str(a["ifIndex"]), "MACs": str(len(a["mac_list"])),
                                "mac_list": list(a["mac_list"])} for a in f["adaptor_list"]]
    elif fmt == 2003:
        for k, v in f.items():
            out[k] = f"{v:.3f}" if isinstance(v, float) else str(v)
    elif fmt == 2005:
        out.update(_strs(f))
        out["disk_partition_max_used"] = f"{f['disk_partition_max_used'] / 100:.2f}"
    else:
        out.update(_strs(f))
    return out


def decode_parser() -> argparse.ArgumentParser:
    """``demon-sflow decode``'s command line (also offered by shell completion)."""
    from sflow import cliopts

    parser = argparse.ArgumentParser(prog="demon-sflow decode",
                                     description="Print the sFlow datagrams of a pcap/pcapng file as JSON lines.")
    parser.add_argument("file", help="pcap or pcapng capture")
    parser.add_argument("--port", type=int, default=6343,
                        help="UDP destination port of the sFlow datagrams (0 = any UDP port; default 6343)")
    return cliopts.add_common(parser, exits={0: "every datagram printed (malformed ones as error lines)",
                                             1: "the file cannot be read", 2: "usage error"}, config=False)


def main_decode(argv: list[str], stdout: TextIO | None = None, stderr: TextIO | None = None) -> int:
    """``demon-sflow decode FILE.pcap [--port N]``: one JSON object per datagram per line.

    Malformed datagrams are printed as ``{"error": reason, ...}`` lines and
    counted on stderr. Exit status 0, or 1 if the file cannot be read.
    """
    out = stdout if stdout is not None else sys.stdout
    err = stderr if stderr is not None else sys.stderr
    from sflow import cliopts

    args = cliopts.parse_args(decode_parser(), argv, log_stream=err)
    total = 0
    errors: Counter[str] = Counter()
    try:
        for index, udp in enumerate(read_udp(args.file, args.port or None)):
            total += 1
            try:
                dg = decode_datagram(udp.payload)
            except DecodeError as exc:
                errors[exc.reason] += 1
                line: dict[str, Any] = {"error": exc.reason, "offset": exc.offset, "index": index,
                                        "datagramSourceIP": udp.src_ip,
                                        "datagramSize": len(udp.payload)}
                if exc.partial is not None:
                    line["agent"] = exc.partial.agent
                    line["packetSequenceNo"] = str(exc.partial.sequence)
            else:
                line = datagram_to_json(dg, source_ip=udp.src_ip, size=len(udp.payload),
                                        timestamp=udp.timestamp)
            out.write(json.dumps(line) + "\n")
    except BrokenPipeError:
        # the reader went away (| head): stop quietly, as line tools do
        if out is sys.stdout:
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except (OSError, PcapError, struct.error) as exc:
        err.write(f"demon-sflow decode: cannot read {args.file}: {exc}\n")
        return 1
    bad = sum(errors.values())
    detail = ", ".join(f"{reason} {count}" for reason, count in sorted(errors.items()))
    err.write(f"demon-sflow decode: {total} datagrams, {bad} malformed" + (f" ({detail})" if detail else "") + "\n")
    return 0
