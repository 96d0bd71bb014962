"""The decoder on real Open vSwitch 3.1 datagrams (captures/ovs-seed-elephant.pcap).

Ground truth: the capture's README and topo.json (written from the traffic
generators and the switches, not from this decoder).

Counter samples: the README's 222 is tshark's count; tshark 4.0 mis-skips
OVS counter records and drops 37 samples in 15 datagrams, so the true count is
259 (251 per-port samples + 8 bridge-level 2203/2207 ones), which we check
against the sample count each datagram header declares.
"""

from __future__ import annotations

import json
import struct
from collections import Counter
from pathlib import Path

import pytest

from sflow.decode import decode_datagram
from sflow.headers import parse_header
from sflow.keys import datasource_of, sample_keys
from sflow.model import CounterSample, Datagram, FlowSample
from sflow.pcap import read_udp

pytestmark = pytest.mark.replay


@pytest.fixture(scope="module")
def capture(captures_dir: Path) -> list[tuple[bytes, Datagram]]:
    return [(u.payload, decode_datagram(u.payload))
            for u in read_udp(captures_dir / "ovs-seed-elephant.pcap")]


@pytest.fixture(scope="module")
def topo(captures_dir: Path) -> dict:
    return json.loads((captures_dir / "ovs-seed-elephant.topo.json").read_text())


def _declared_samples(payload: bytes) -> int:
    return struct.unpack_from(">I", payload, 24)[0]  # IPv4 agent: num_samples at 24


def test_sample_counts(capture: list[tuple[bytes, Datagram]]) -> None:
    flows = sum(len(dg.flow_samples) for _, dg in capture)
    counters = sum(len(dg.counter_samples) for _, dg in capture)
    assert flows == 2049
    assert counters == 259  # README's 222 is tshark's undercount (see module doc)
    for payload, dg in capture:
        assert len(dg.samples) == _declared_samples(payload)
        assert not dg.unknown_samples


def test_no_datagram_sequence_gaps(capture: list[tuple[bytes, Datagram]]) -> None:
    per_sub: dict[int, list[int]] = {}
    for _, dg in capture:
        assert dg.agent == "127.0.0.1"
        per_sub.setdefault(dg.sub_agent_id, []).append(dg.sequence)
    for seqs in per_sub.values():
        assert seqs == list(range(seqs[0], seqs[0] + len(seqs)))


def test_sampled_ipv4_headers(capture: list[tuple[bytes, Datagram]]) -> None:
    pairs: Counter[tuple[str, str]] = Counter()
    for _, dg in capture:
        for sample in dg.flow_samples:
            header = sample.record(0, 1)
            assert header is not None and header.fields["headerProtocol"] == 1
            keys = parse_header(1, header.fields["header"])
            if "ipsource" in keys:
                pairs[keys["ipsource"], keys["ipdestination"]] += 1
    assert pairs["10.0.0.1", "10.0.0.2"] == 1359
    assert pairs["10.0.0.2", "10.0.0.1"] == 526
    assert pairs["10.0.0.6", "10.0.0.7"] == 152
    assert pairs["10.0.0.3", "10.0.0.4"] == 4


def test_ovs_flow_sample_shape(capture: list[tuple[bytes, Datagram]]) -> None:
    """OVS: bridge sampler 2:1000+sub_id, pool = seq x rate, extended_switch before header."""
    for _, dg in capture:
        for sample in dg.flow_samples:
            assert (sample.source_class, sample.source_index) == (2, 1000 + dg.sub_agent_id)
            assert sample.sampling_rate == 100
            assert sample.sample_pool == sample.sequence * 100
            assert [r.tag for r in sample.records] == ["0:1001", "0:1"]


def test_of_port_and_port_name_match_topology(capture: list[tuple[bytes, Datagram]], topo: dict) -> None:
    ports = topo["switch_ports"]
    seen = set()
    for _, dg in capture:
        for sample in dg.counter_samples:
            of_port, name = sample.record(0, 1004), sample.record(0, 1005)
            if of_port is None:
                assert [r.tag for r in sample.records] == ["0:2203", "0:2207"]
                continue
            ifname = name.fields["ifName"]
            if_counters = sample.record(0, 1)
            assert if_counters.fields["ifIndex"] == sample.source_index
            switch = ifname.split("-")[0]
            # Mininet derives the datapath id from the switch name (s3 -> 3)
            assert of_port.fields["openflow_datapath_id"] == int(switch[1:])
            if ifname == switch:
                assert of_port.fields["openflow_port"] == 65534  # the bridge's LOCAL port
                continue
            assert ports[ifname]["ifindex"] == sample.source_index, ifname
            assert ports[ifname]["ofport"] == of_port.fields["openflow_port"], ifname
            seen.add(ifname)
    assert seen == set(ports)  # every switch port reported its counters


def test_elephant_attributed_to_h1_port(capture: list[tuple[bytes, Datagram]], topo: dict) -> None:
    """Bridge-sampler flows are attributed to the input port (h1 on s1-eth1)."""
    h1_port = str(topo["switch_ports"]["s1-eth1"]["ifindex"])
    sources: Counter[str] = Counter()
    for _, dg in capture:
        for sample in dg.flow_samples:
            keys = sample_keys(dg.agent, sample)
            if keys.get("ipsource") == "10.0.0.1" and dg.sub_agent_id == 0:
                assert keys["direction"] == "ingress"
                assert keys["tcpdestinationport"] == "5201"
                sources[datasource_of(sample)] += 1
    assert sources and set(sources) == {h1_port}


def test_counter_samples_are_counter_samples(capture: list[tuple[bytes, Datagram]]) -> None:
    kinds = Counter(type(s).__name__ for _, dg in capture for s in dg.samples)
    assert kinds == {FlowSample.__name__: 2049, CounterSample.__name__: 259}
