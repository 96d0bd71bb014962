"""The engine fed by the real decoder: the OVS capture with its own clock, agents, drops."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from sflow.collector import pcap_payloads
from sflow.engine import Engine
from sflow.flowdef import parse_flow, parse_threshold
from sflow.model import CounterSample, Datagram, FlowSample, Interface, Record

pytestmark = pytest.mark.replay

CAPTURE = "ovs-seed-elephant.pcap"
ELEPHANT = "10.0.0.1,10.0.0.2,51792,5201"
ELEPHANT_BYTES_PER_S = 200e6 / 8
TCP = {"keys": "ipsource,ipdestination,tcpsourceport,tcpdestinationport", "value": "bytes"}


@pytest.fixture(scope="module")
def capture(captures_dir: Path) -> list[tuple[float, bytes]]:
    return pcap_payloads(captures_dir / CAPTURE)


def test_elephant_on_top_at_its_rate(capture: list[tuple[float, bytes]]) -> None:
    engine = Engine()
    engine.set_flow(parse_flow("tcp", TCP))
    tops = []
    for ts, payload in capture:
        assert engine.receive(payload, ts, "127.0.0.1")
        flows = engine.active_flows("tcp", ts, max_flows=3)
        if flows:
            tops.append((ts, flows))
    # while the elephant runs it is the top flow, sampled at s1-eth1 (h1's port)
    running = [flows for ts, flows in tops if flows[0]["value"] > 1e6]
    assert running and all(f[0]["key"] == ELEPHANT for f in running)
    peak = max(f[0]["value"] for f in running)
    # 8 s of traffic with t = 2 s: the EWMA reaches 1 - e^-4 = 98 % of the rate; it
    # averages ~2 t of samples (~700 of the elephant's 170/s), whose sampling error is
    # ±2/sqrt(700) = ±7.6 % at 95 %; the peak of a noisy EWMA sits above its mean.
    assert 0.90 * ELEPHANT_BYTES_PER_S < peak < 1.15 * ELEPHANT_BYTES_PER_S
    elephant = running[-1][0]
    assert elephant["agent"] == "127.0.0.1"
    assert elephant["dataSource"] == "1478"  # s1-eth1 in ovs-seed-elephant.topo.json


def test_total_bytes_match_iperf_within_sampling_error(capture: list[tuple[float, bytes]]) -> None:
    """A long time constant integrates the capture: rate x t ~ total bytes sent."""
    engine = Engine()
    engine.set_flow(parse_flow("tcp", {**TCP, "t": 600}))
    for ts, payload in capture:
        engine.receive(payload, ts)
    end = capture[-1][0]
    flows = engine.active_flows("tcp", end)
    value = next(f["value"] for f in flows if f["key"] == ELEPHANT)
    first = capture[0][0]
    # undo the decay (at most 14 s of 600 s: < 2.4 %) and multiply by t
    total = value * 600 * math.exp((end - first) / 600)
    assert total == pytest.approx(200_015_872, rel=0.08)  # ±5.3 % sampling + the decay bound


def test_threshold_event_for_the_elephant(capture: list[tuple[float, bytes]]) -> None:
    engine = Engine()
    engine.set_flow(parse_flow("tcp", TCP))
    engine.set_threshold(parse_threshold("elephant", {"metric": "tcp", "value": 12_500_000,
                                                      "byFlow": True}))
    for ts, payload in capture:
        engine.receive(payload, ts)
    events = engine.events()
    assert [e["flowKey"] for e in events] == [ELEPHANT]
    start = capture[0][0]
    # 100 Mbit/s is crossed after t*ln 2 = 1.4 s of a 200 Mbit/s flow (plus ramp-up)
    assert 1.0 < events[0]["timestamp"] / 1000 - start < 3.5


def test_port_map_equals_the_topology(capture: list[tuple[float, bytes]], captures_dir: Path) -> None:
    engine = Engine()
    for ts, payload in capture:
        engine.receive(payload, ts)
    topo = json.loads((captures_dir / "ovs-seed-elephant.topo.json").read_text())
    by_index = {e["ifIndex"]: e for e in engine.port_map(capture[-1][0])}
    for name, port in topo["switch_ports"].items():
        entry = by_index[port["ifindex"]]
        assert entry["agent"] == "127.0.0.1"
        assert entry["name"] == name
        assert entry["ofPort"] == port["ofport"]
        assert entry["dpid"] == int(name[1:name.index("-")])
        assert entry["dpidHex"] == f"{entry['dpid']:016x}"
        assert entry["lastSeen"] >= 0
    # and nothing else: the bridges' own ports (OpenFlow LOCAL) are left out
    assert set(by_index) == {p["ifindex"] for p in topo["switch_ports"].values()}


def test_agent_counters_from_the_capture(capture: list[tuple[float, bytes]]) -> None:
    engine = Engine()
    for ts, payload in capture:
        engine.receive(payload, ts, "127.0.0.1")
    end = capture[-1][0]
    agent = engine.agents(end)["127.0.0.1"]
    assert agent["sFlowDatagramsReceived"] == len(capture)
    assert agent["sFlowDatagramsLost"] == 0  # captures/README: no sequence gaps
    assert agent["sFlowFlowSamples"] == 2049 and agent["sFlowCounterSamples"] >= 222
    assert agent["sFlowDatagramSource"] == ["127.0.0.1"]
    assert agent["firstSeen"] == int((end - capture[0][0]) * 1000) and agent["lastSeen"] == 0
    analyzer = engine.analyzer()
    assert analyzer["sFlowDatagramsReceived"] == len(capture)
    assert analyzer["sFlowBytesReceived"] == sum(len(p) for _, p in capture)
    assert analyzer["sFlowAgents"] == 1


def test_every_other_datagram_lost_is_reported(capture: list[tuple[float, bytes]]) -> None:
    """The collector-restart pattern of captures/README.md: sequence 1, 3, 5 ..."""
    engine = Engine()
    kept = capture[::2]
    for ts, payload in kept:
        engine.receive(payload, ts)
    agent = engine.agents(capture[-1][0])["127.0.0.1"]
    # each sub-agent (bridge) numbers its datagrams; dropping every other datagram of
    # the interleaved stream loses about half of them
    assert agent["sFlowDatagramsLost"] > 0.3 * len(kept)
    assert agent["sFlowFlowLostSamples"] > 0


def _datagram(seq: int, sub: int = 0, flow_seqs: tuple[int, ...] = ()) -> Datagram:
    flows = [FlowSample(s, 0, 3, 10, 0, 0, Interface(0, 3), Interface(0, 4), []) for s in flow_seqs]
    return Datagram("10.9.9.9", sub, seq, 5000, flow_samples=flows)


def test_sequence_gaps_duplicates_and_reorder() -> None:
    engine = Engine()
    for i, seq in enumerate([1, 2, 4, 4, 3, 5]):
        engine.ingest(_datagram(seq), 100.0 + i, "192.0.2.1", 100)
    engine.ingest(_datagram(1, sub=1), 110.0)  # another sub-agent: its own numbering
    engine.ingest(_datagram(7, sub=0, flow_seqs=(1, 2, 5)), 111.0)
    agent = engine.agents(111.0)["10.9.9.9"]
    assert agent["sFlowDatagramsLost"] == 1 + 1   # 3 (later out of order) and 6
    assert agent["sFlowDatagramsDuplicates"] == 1
    assert agent["sFlowDatagramsOutOfOrder"] == 1
    assert agent["sFlowFlowLostSamples"] == 2      # 3 and 4
    assert agent["sFlowDatagramSource"] == ["192.0.2.1"]
    assert agent["uptime"] == 5000 and agent["sFlowSubAgents"] == [0, 1]


def test_malformed_datagrams_are_counted_by_reason(capture: list[tuple[float, bytes]]) -> None:
    engine = Engine()
    assert not engine.receive(b"\x00\x00\x00\x04garbage", 1.0)
    assert not engine.receive(capture[5][1][:60], 1.0)
    assert engine.receive(capture[5][1], 1.0)
    analyzer = engine.analyzer()
    assert analyzer["sFlowDatagramsReceived"] == 3 and analyzer["sFlowDatagramsDecoded"] == 1
    assert analyzer["sFlowDatagramsDropped"] == 2
    assert analyzer["sFlowDatagramsDroppedReasons"] == {"not-sflow-v5": 1, "truncated-sample": 1}


def test_counter_records_build_the_port_map() -> None:
    engine = Engine()
    records = [Record(0, 1, 88, {"ifIndex": 12, "ifSpeed": 10_000_000}),
               Record(0, 1004, 12, {"openflow_datapath_id": 0xABC, "openflow_port": 7}),
               Record(0, 1005, 12, {"ifName": "s9-eth7"})]
    engine.ingest(Datagram("10.1.1.1", 0, 1, 1, counter_samples=[CounterSample(1, 0, 12, records)]), 50.0)
    assert engine.port_map(52.0) == [{"agent": "10.1.1.1", "ifIndex": 12, "dpid": 0xABC,
                                      "dpidHex": "0000000000000abc", "ofPort": 7,
                                      "name": "s9-eth7", "lastSeen": 2000}]
    assert engine.datasource_attributes("10.1.1.1", "12")["ifspeed"] == 10_000_000


def test_agent_state_is_bounded() -> None:
    engine = Engine(max_agents=3)
    for i in range(5):
        records = [Record(0, 1005, 12, {"ifName": f"p{i}"})]
        engine.ingest(Datagram(f"10.0.0.{i}", 0, 1, 1, counter_samples=[CounterSample(1, 0, 7, records)]),
                      100.0 + i)
    assert sorted(engine.agents(110.0)) == ["10.0.0.2", "10.0.0.3", "10.0.0.4"]
    assert sorted(p["agent"] for p in engine.port_map(110.0)) == ["10.0.0.2", "10.0.0.3", "10.0.0.4"]
