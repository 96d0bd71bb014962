"""Corpus cases for the decoder tests, and the sflowtool-JSON normaliser.

A *case* pairs a capture (``corpus/pcap/**.pcap``, or a ``raw/telegraf/*.bin``
payload) with sflowtool's reference decode in ``corpus/decodes/``. The
normaliser turns one sflowtool JSON object into the values our model must
hold (``expected_*`` functions), consuming every sflowtool key: keys we do
not model are listed in ``NOT_MODELLED`` with the reason.
"""

from __future__ import annotations

import ipaddress
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sflow.decode import decode_datagram
from sflow.model import CounterSample, Datagram, FlowSample, Interface, Record
from sflow.pcap import read_udp

from ..conftest import shared_path

CORPUS = shared_path() / "corpus"


@dataclass(frozen=True)
class Case:
    name: str
    source: Path            # the capture (.pcap) or the raw payload (.bin)
    reference: Path         # sflowtool output (.jsonl, or .txt when sflowtool rejected it)

    def payloads(self) -> list[bytes]:
        if self.source.suffix == ".bin":
            return [self.source.read_bytes()]
        return [udp.payload for udp in read_udp(self.source)]

    def references(self) -> list[dict[str, Any]]:
        with open(self.reference) as fh:
            return [json.loads(line) for line in fh if line.strip()]


def _reference_for(rel: str) -> Path | None:
    stem = rel.replace("/", "_").rsplit(".", 1)[0]
    for name in (f"{stem}.sflowtool.jsonl", f"{stem}.first20.sflowtool.jsonl", f"{stem}.sflowtool.txt"):
        path = CORPUS / "decodes" / name
        if path.exists():
            return path
    return None


def corpus_cases() -> list[Case]:
    """Every capture and raw payload in the corpus that has a reference decode."""
    if not CORPUS.is_dir():
        return []
    cases = []
    for path in sorted((CORPUS / "pcap").rglob("*.pcap")):
        ref = _reference_for(str(path.relative_to(CORPUS)))
        if ref is not None:
            cases.append(Case(str(path.relative_to(CORPUS)), path, ref))
    for path in sorted((CORPUS / "raw" / "telegraf").glob("*.bin")):
        # foo__bar.bin <-> decodes/raw_telegraf_foo_bar.wrapped.sflowtool.jsonl
        wrapped = path.name.replace("__", "_").replace(".bin", ".wrapped.pcap")
        ref = _reference_for(f"raw/telegraf/{wrapped}")
        if ref is not None:
            cases.append(Case(str(path.relative_to(CORPUS)), path, ref))
    return cases


# --- normaliser: sflowtool JSON -> our model's fields ---------------------------------

# sflowtool keys the model does not hold, and why.
NOT_MODELLED = {
    # capture metadata, not datagram content
    "datagramSourceIP", "unixSecondsUTC", "unixSecondsUTC_uS", "localtime", "pcapTimestamp",
    "pcapTimestamp_uS",
    # sflowtool's own labels, implied by the tag
    "sampleType", "flowSampleType", "extendedType", "discardReason",
}
# fields sflowtool decodes from a sampled header that are not flow keys
# (derivable lengths, TTL, IP id, flow label, the IPv6 extension headers walked
# past on the way to ip6nexthdr) and outer-tag priorities
HEADER_NOT_KEYS = {"IPSize", "IPTTL", "IPID", "IP6_label", "IPV6_payloadLen", "UDPBytes",
                   "IP6HeaderExtension", "decodedPriority"}
_STRING_FIELDS = {"hostname", "UUID", "os_release", "ifName", "url", "host", "src_user",
                  "dst_user"}

# sampled-header fields -> sFlow-RT keys produced by sflow.headers
_HEADER_KEYS = {
    "srcIP": "ipsource", "dstIP": "ipdestination", "ip.tot_len": "ipbytes",
    "TCPSrcPort": "tcpsourceport", "TCPDstPort": "tcpdestinationport",
    "UDPSrcPort": "udpsourceport", "UDPDstPort": "udpdestinationport",
    "ICMPType": "icmptype", "ICMPCode": "icmpcode", "ethernet_type": "ethernetprotocol",
}
_HEADER_RECORD = {"headerProtocol", "sampledPacketSize", "strippedBytes", "headerLen"}


def expected_interface(text: str) -> Interface:
    if text.startswith("multiple "):
        return Interface(2, int(text.split()[1]))
    if text.startswith("dropCode "):
        return Interface(1, int(text.split()[1]))
    return Interface(0, int(text))


def _ip(text: str) -> str:
    return str(ipaddress.ip_address(text))


def _number(text: str) -> Any:
    return int(text) if re.fullmatch(r"-?\d+", text) else text


def expected_record(element: dict[str, Any]) -> tuple[str, dict[str, Any], dict[str, str]]:
    """(tag, expected ``Record.fields`` subset, expected header keys) of one element."""
    element = {k.removeprefix("discarded_"): v for k, v in element.items()}
    tag = element.get("flowBlock_tag") or element["counterBlock_tag"]
    fields: dict[str, Any] = {}
    keys: dict[str, str] = {}
    is_flow = "flowBlock_tag" in element
    fmt = int(tag.split(":")[1])
    v6 = "srcIP6" in element
    vlans = sorted(k for k in element if k.startswith("decodedVLAN"))
    for name, value in element.items():
        base = name.split(".")[0] if name.startswith("decoded") else name
        if name in ("flowBlock_tag", "counterBlock_tag") or base in NOT_MODELLED:
            continue
        if is_flow and fmt == 1:
            if base in HEADER_NOT_KEYS:
                continue
            if name in _HEADER_RECORD:
                fields[name] = int(value)
            elif name == "headerBytes":
                fields["header"] = bytes.fromhex(value.replace("-", ""))
            elif name in ("srcMAC", "dstMAC"):
                keys["macsource" if name == "srcMAC" else "macdestination"] = value.upper()
            elif name in ("srcIP6", "dstIP6"):
                keys["ip6source" if name == "srcIP6" else "ip6destination"] = _ip(value)
            elif name == "IPProtocol":
                keys["ip6nexthdr" if v6 else "ipprotocol"] = value
            elif name == "IPTOS":
                keys["ip6tos" if v6 else "iptos"] = value
            elif name == "TCPFlags":
                keys["tcpflags"] = format(int(value), "09b")
            elif base == "decodedVLAN":
                if name == vlans[-1]:  # the inner tag is the reported one
                    keys["vlan"] = value
                    keys["priority"] = element[name.replace("VLAN", "Priority")]
            elif name in _HEADER_KEYS:
                keys[_HEADER_KEYS[name]] = value
            else:
                raise AssertionError(f"normaliser does not know header field {name!r}")
            continue
        if is_flow and fmt in (3, 4, 1023, 1024):
            name = re.sub(r"^tunnel_ipv4_(in|out)_", "", name)
            if name in ("TCPSrcPort", "UDPSrcPort"):
                fields["srcPort"] = int(value)
            elif name in ("TCPDstPort", "UDPDstPort"):
                fields["dstPort"] = int(value)
            elif name in ("srcIP6", "dstIP6", "srcIP", "dstIP"):
                fields[name] = _ip(value)
            else:
                fields[name] = _number(value)
            continue
        if is_flow and fmt == 1003:
            if name == "dst_as_path":
                fields["_as_path_flat"] = [int(a) for a in re.findall(r"\d+", value)]
            elif name == "BGP_communities":
                fields[name] = [int(c) for c in value.split("-")]
            else:
                fields[name] = _number(value)
            continue
        if not is_flow and fmt == 1001 and name.endswith("_cpu"):
            fields[name] = round(float(value) * 100)
        elif not is_flow and fmt == 1004 and name == "openflow_datapath_id":
            fields[name] = int(value, 16)
        elif not is_flow and fmt == 2005 and name == "disk_partition_max_used":
            fields[name] = round(float(value) * 100)
        elif not is_flow and fmt == 2003 and name.startswith("cpu_load"):
            fields[name] = ("approx", float(value))
        elif not is_flow and fmt == 2001:
            fields[name] = [{"ifIndex": int(a["ifIndex"]), "mac_list": a["mac_list"]} for a in value]
        elif name in _STRING_FIELDS:
            fields[name] = value
        elif name in ("nextHop", "bgp_nexthop"):
            fields[name] = _ip(value)
        else:
            fields[name] = _number(value)
    return tag, fields, keys


def check_record(rec: Record, element: dict[str, Any]) -> None:
    """Assert that a decoded record holds what sflowtool decoded."""
    from sflow.headers import parse_header

    tag, fields, keys = expected_record(element)
    assert rec.tag == tag
    assert rec.known, f"record {tag} not decoded"
    for name, want in fields.items():
        if name == "_as_path_flat":
            got: Any = [a for _, ases in rec.fields["dst_as_path"] for a in ases]
        else:
            assert name in rec.fields, f"{tag}: field {name} missing"
            got = rec.fields[name]
        if isinstance(want, tuple) and want[0] == "approx":
            assert abs(got - want[1]) < 0.0006, (tag, name, got, want)
        else:
            assert got == want, (tag, name, got, want)
    if keys:
        parsed = parse_header(rec.fields["headerProtocol"], rec.fields["header"])
        for name, want in keys.items():
            assert parsed.get(name) == want, (tag, name, parsed.get(name), want)


def check_sample(sample: FlowSample | CounterSample | Any, ref: dict[str, Any]) -> None:
    tag = ref["sampleType_tag"]
    kinds = {"0:1": (FlowSample, False), "0:3": (FlowSample, True), "0:5": (FlowSample, True),
             "0:2": (CounterSample, False), "0:4": (CounterSample, True)}
    kind, expanded = kinds[tag]
    assert isinstance(sample, kind), (tag, sample)
    assert sample.expanded == expanded
    cls, idx = (int(x) for x in ref["sourceId"].split(":"))
    assert (sample.source_class, sample.source_index) == (cls, idx)
    assert sample.sequence == int(ref["sampleSequenceNo"])
    if kind is FlowSample:
        assert sample.drops == int(ref["dropEvents"])
        if tag == "0:5":
            assert sample.discard_reason == int(ref["discardCode"])
            assert sample.input.value == int(ref["inputPort"])
            assert sample.output.value == int(ref["outputPort"])
        else:
            assert sample.discard_reason is None
            assert sample.sampling_rate == int(ref["meanSkipCount"])
            assert sample.sample_pool == int(ref["samplePool"])
            assert sample.input == expected_interface(ref["inputPort"])
            assert sample.output == expected_interface(ref["outputPort"])
    elements = ref.get("elements", [])
    assert len(sample.records) == len(elements)
    for rec, element in zip(sample.records, elements):
        check_record(rec, element)


def check_datagram(dg: Datagram, ref: dict[str, Any], payload: bytes) -> None:
    assert int(ref["datagramSize"]) == len(payload)
    assert dg.version == int(ref["datagramVersion"]) == 5
    assert dg.agent == _ip(ref["agent"])
    assert dg.sub_agent_id == int(ref["agentSubId"])
    assert dg.sequence == int(ref["packetSequenceNo"])
    assert dg.uptime_ms == int(ref["sysUpTime"])
    assert len(dg.samples) == int(ref["samplesInPacket"]) == len(ref["samples"])
    for sample, sref in zip(dg.samples, ref["samples"]):
        check_sample(sample, sref)


def decode_all(case: Case) -> list[Datagram]:
    return [decode_datagram(p) for p in case.payloads()]
