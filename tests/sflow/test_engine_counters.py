"""Counter samples kept per data source and turned into sFlow-RT's metrics and rates."""

from __future__ import annotations

import struct
from pathlib import Path

import pytest
from prometheus_client import generate_latest

from sflow.collector import pcap_payloads
from sflow.counters import CounterStore, metric_rows
from sflow.decode import decode_datagram
from sflow.engine import Engine
from sflow.filterexpr import ExprError, register_key_function, unregister_key_function
from sflow.flowdef import parse_flow

AGENT = "127.0.0.1"


@pytest.fixture(scope="module")
def capture(captures_dir: Path) -> list[tuple[float, bytes]]:
    return pcap_payloads(captures_dir / "ovs-seed-elephant.pcap")


def if_counters(if_index: int, speed: int, in_octets: int, out_octets: int,
                in_pkts: int = 0) -> bytes:
    body = struct.pack(">IIQII", if_index, 6, speed, 1, 3)
    body += struct.pack(">Q6I", in_octets, in_pkts, 0, 0, 0, 0, 0xFFFFFFFF)
    body += struct.pack(">Q6I", out_octets, 0, 0, 0, 0, 0, 0)
    return struct.pack(">II", 1, len(body)) + body


def counter_datagram(seq: int, records: list[bytes], if_index: int = 7,
                     agent: bytes = b"\x0a\x00\x00\x01") -> bytes:
    rec = b"".join(records)
    sample = struct.pack(">III", seq, if_index, len(records)) + rec
    return (struct.pack(">II4sIIII", 5, 1, agent, 0, seq, seq * 1000, 1)
            + struct.pack(">II", 2, len(sample)) + sample)


def test_rates_are_deltas_over_the_time_between_samples() -> None:
    engine = Engine()
    engine.receive(counter_datagram(1, [if_counters(7, 1_000_000_000, 1_000, 500, 10)]), 100.0)
    source = engine.counters.get("10.0.0.1", "7")
    assert source is not None and "ifinoctets" not in source.metrics()  # one sample: no rate
    assert source.metrics()["ifspeed"] == 1_000_000_000
    engine.receive(counter_datagram(2, [if_counters(7, 1_000_000_000, 26_001_000, 2_500, 110)]),
                   102.0)
    metrics = engine.counters.get("10.0.0.1", "7").metrics()
    assert metrics["ifinoctets"] == pytest.approx(13_000_000)
    assert metrics["ifoutoctets"] == pytest.approx(1_000)
    assert metrics["ifinutilization"] == pytest.approx(13_000_000 * 8 / 1e9 * 100)  # 10.4 %
    assert metrics["ifinucastpkts"] == pytest.approx(50) and metrics["ifinpkts"] == pytest.approx(50)
    assert "ifinunknownprotos" not in metrics  # 0xFFFFFFFF: unknown, as OVS sends it
    assert (metrics["ifindex"], metrics["iftype"], metrics["ifdirection"],
            metrics["ifadminstatus"], metrics["ifoperstatus"]) == \
        ("7", "ethernetCsmacd", "full-duplex", "up", "up")


def test_counter_wrap_and_agent_restart() -> None:
    engine = Engine()
    engine.receive(counter_datagram(5, [if_counters(7, 10**9, 0, 0, 0xFFFFFF00)]), 10.0)
    engine.receive(counter_datagram(6, [if_counters(7, 10**9, 0, 0, 0x100)]), 11.0)
    assert engine.counters.get("10.0.0.1", "7").metrics()["ifinucastpkts"] == 0x200  # wrapped
    engine.receive(counter_datagram(1, [if_counters(7, 10**9, 0, 0, 5)]), 12.0)  # restarted
    assert "ifinucastpkts" not in engine.counters.get("10.0.0.1", "7").metrics()


def test_capture_rates_agree_with_the_decoded_deltas(capture: list[tuple[float, bytes]]) -> None:
    engine = Engine()
    history: dict[str, list[tuple[float, int, int]]] = {}
    peak = {}
    for ts, payload in capture:
        engine.receive(payload, ts, AGENT)
        for cs in decode_datagram(payload).counter_samples:
            rec = cs.record(0, 1)
            if rec is not None and cs.source_class == 0:
                history.setdefault(str(cs.source_index), []).append(
                    (ts, cs.sequence, rec.fields["ifInOctets"]))
        source = engine.counters.get(AGENT, "1478")  # s1-eth1: the elephant enters here
        if source is not None:
            util = source.metrics().get("ifinutilization", 0)
            peak["1478"] = max(peak.get("1478", 0), util)
    # the elephant (200 Mbit/s of iperf payload) on a 10 Gbit/s port: ~2 %
    assert 1.9 < peak["1478"] < 2.3
    now = capture[-1][0]
    rows = {r["dataSource"]: r for r in metric_rows(engine.counter_snapshot(), now)}
    assert len(history) >= 30
    for ds, samples in history.items():
        (t0, _, o0), (t1, _, o1) = samples[-2], samples[-1]
        assert rows[ds]["metrics"]["ifinoctets"] == pytest.approx((o1 - o0) / (t1 - t0))
    bridge = rows["2.1000"]["metrics"]  # Open vSwitch's bridge poller: 2203 + 2207
    assert bridge["ovs_dp_hitrate"] == 100.0 and "app_mem_used" in bridge
    assert {r["name"] for r in engine.port_map(now)} >= {"s1-eth1", "s3-eth11"}


def test_store_is_bounded_and_reads_are_snapshots() -> None:
    store = CounterStore(max_datasources=100)
    for i in range(1000):
        store.put("a", str(i), 1, float(i), b"\x00\x00\x00\x00")
    assert len(store.sources) <= 100 and store.evicted >= 900
    snap = store.snapshot()
    store.put("a", "999", 2, 2000.0, b"\x00\x00\x00\x00")
    assert [s for s in snap if s.datasource == "999"][0].seq == 1  # the copy did not move


def test_prometheus_registry_reads_the_engine(capture: list[tuple[float, bytes]]) -> None:
    engine = Engine()
    engine.set_flow(parse_flow("tcp", {"keys": "ipsource,ipdestination"}))
    for ts, payload in capture[:200]:
        engine.receive(payload, ts, AGENT)
    engine.receive(b"\x00\x00\x00\x04", 1.0)
    text = generate_latest(engine.metrics_registry).decode()
    assert f"pytapdemon_engine_datagrams_total {float(engine.datagrams)}" in text
    assert 'pytapdemon_engine_decode_errors_total{reason="not-sflow-v5"} 1.0' in text
    assert f'pytapdemon_engine_lost_datagrams_total{{agent="{AGENT}"}} 0.0' in text
    assert 'pytapdemon_engine_active_flows{flow="tcp"}' in text
    assert 'pytapdemon_engine_evictions_total{map="flows"}' in text


def test_registered_key_function_is_memoised_and_invalidated(
        capture: list[tuple[float, bytes]]) -> None:
    groups = {"10.0.0.1": "east"}
    calls = {"n": 0}

    def build(args, base, compile_key):  # group-like: key expression, then a name
        if len(args) != 2:
            raise ExprError(f"grp: takes a key and a group set at {base}")
        inner = compile_key(*args[0])

        def grp(keys):
            calls["n"] += 1
            value = inner(keys)
            return None if value is None else groups.get(value, "other")
        return grp

    register_key_function("grp", build)
    try:
        engine = Engine()
        engine.set_flow(parse_flow("g", {"keys": "grp:ipsource:demo", "value": "frames"}))
        for ts, payload in capture:
            engine.receive(payload, ts, AGENT)
        flows = {f["key"] for f in engine.active_flows("g", capture[-1][0])}
        assert flows == {"east", "other"}
        samples = engine.analyzer()["sFlowFlowSamplesReceived"]
        assert calls["n"] < samples / 10  # once per distinct header, not per sample
        groups["10.0.0.1"] = "west"
        engine.key_functions_changed()
        for ts, payload in capture:
            engine.receive(payload, ts + 20, AGENT)
        assert "west" in {f["key"] for f in engine.active_flows("g", capture[-1][0] + 20)}
        with pytest.raises(Exception, match="grp: takes"):
            parse_flow("bad", {"keys": "grp:ipsource"})
    finally:
        unregister_key_function("grp")


def test_threshold_on_a_counter_metric(capture: list[tuple[float, bytes]]) -> None:
    """sFlow-RT thresholds also watch counter metrics (``ifinutilization``...), per data
    source, with the threshold filter on the data source's attributes."""
    from sflow.flowdef import parse_threshold

    engine = Engine()
    engine.set_threshold(parse_threshold("busy", {"metric": "ifinutilization", "value": 1,
                                                  "filter": {"ifname": ["s1-eth1", "s2-eth1"]}}))
    engine.set_threshold(parse_threshold("any", {"metric": "ifinoctets", "value": 1_000_000,
                                                 "timeout": 60}))
    for ts, payload in capture:
        engine.receive(payload, ts, AGENT)
    busy = engine.events(threshold_id="busy", max_events=100)
    assert busy and {e["dataSource"] for e in busy} == {"1478"}  # s1-eth1: the elephant
    assert all(e["value"] > 1 and "flowKey" not in e for e in busy)
    ports = {e["dataSource"] for e in engine.events(threshold_id="any", max_events=100)}
    assert "1478" in ports and len(engine.events(threshold_id="any", max_events=100)) == len(ports)
    engine.set_flow(parse_flow("ifinoctets", {"keys": "ipsource"}))  # now a flow: not counters
    assert not engine.threshold_table.counter_watch[1:]
