"""The collector's fast path (sflow.fastpath) against the full decoder + sample_keys + ingest."""

from __future__ import annotations

import random
import struct
import time
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sflow.collector import Collector, pcap_payloads, send_payloads
from sflow.decode import DecodeError, decode_datagram
from sflow.engine import Engine
from sflow.fastpath import CONTEXT_KEYS, FLOW, full_keys, key_names, parse_compact
from sflow.flowdef import parse_flow, parse_threshold
from sflow.keys import datasource_of, sample_keys
from sflow.pcap import read_udp

FLOWS = {
    "tcp": {"keys": "ipsource,ipdestination,tcpsourceport,tcpdestinationport", "value": "bytes"},
    "ports": {"keys": "inputifindex,outputifindex,direction,stack", "value": "frames"},
    "bps": {"keys": "ipsource,vlansource", "value": "bps", "filter": "ipprotocol=6,17"},
    "big": {"keys": "ipdestination", "value": "bytes", "filter": "range:bytes:1000:100000=true"},
    "fn": {"keys": "mask:ipsource:24,null:udpdestinationport:none", "value": "ipbytes"},
    "mac": {"keys": "macsource,agent", "value": "frames", "filter": "ethernetprotocol!=2048"},
}


# --- generated datagrams: the shapes a switch sends, and some it rarely does ------------

def _eth(rng: random.Random) -> bytes:
    macs = b"\x02\x00\x00\x00\x00" + bytes([rng.randrange(4)]) + b"\x02\x00\x00\x00\x01\x01"
    kind = rng.choice(["tcp", "tcp", "udp", "icmp", "gre", "arp", "vlan", "ip6", "opts", "frag",
                       "vxlan", "short"])
    src = struct.pack(">I", 0x0A000000 | rng.randrange(6))
    dst = struct.pack(">I", 0x0A010000 | rng.randrange(3))
    proto = {"tcp": 6, "udp": 17, "icmp": 1, "gre": 47, "vxlan": 17}.get(kind, 6)
    frag = 0x0001 if kind == "frag" else 0x4000
    ihl = 0x46 if kind == "opts" else 0x45
    ip = struct.pack(">BBHHHBBH4s4s", ihl, rng.choice([0, 0x10]), 1500, rng.randrange(65536),
                     frag, 64, proto, rng.randrange(65536), src, dst)
    if kind == "opts":
        ip += b"\x01\x01\x01\x01"
    sport, dport = 1024 + rng.randrange(3), 4789 if kind == "vxlan" else 5201 + rng.randrange(2)
    l4 = struct.pack(">HHIIBBHHH", sport, dport, rng.randrange(1 << 32), rng.randrange(1 << 32),
                     0x50, rng.choice([0x10, 0x18, 0x02]), 1024, rng.randrange(65536), 0)
    if kind == "vxlan":
        l4 = struct.pack(">HHHH", sport, dport, 80, 0) + b"\x08\x00\x00\x00\x00\x00\x07\x00" \
             + macs + b"\x08\x00" + ip
    if kind == "arp":
        return macs + b"\x08\x06" + bytes(28)
    if kind == "vlan":
        return macs + b"\x81\x00\x00\x0a\x08\x00" + ip + l4
    if kind == "ip6":
        return macs + b"\x86\xdd" + bytes([0x60]) + bytes(5) + b"\x06\x40" + bytes(32) + l4
    frame = macs + b"\x08\x00" + ip + l4
    return frame[:40] if kind == "short" else frame


def _flow_sample(rng: random.Random, seq: int) -> bytes:
    header = _eth(rng)
    content = (struct.pack(">IIII", 1, rng.choice([64, 1518, 9000]), 4, len(header)) + header
               + b"\x00" * (-len(header) % 4))
    records = [struct.pack(">II", 1, len(content)) + content]
    if rng.random() < 0.5:
        records.append(struct.pack(">II4I", 1001, 16, rng.randrange(3), 0, rng.randrange(3), 0))
        if rng.random() < 0.5:
            records.reverse()
    src = rng.choice([(2 << 24) | 1000, 3, 4])
    interfaces = [1, 2, 3, 0, 0x3FFFFFFF, (1 << 30) | 5, (2 << 30) | 3]
    body = struct.pack(">8I", seq, src, rng.choice([1, 100, 400]), seq * 100,
                       rng.choice([0, 0, 7]), rng.choice(interfaces), rng.choice(interfaces),
                       len(records)) + b"".join(records)
    return struct.pack(">II", 1, len(body)) + body


def make_datagram(rng: random.Random, seq: int, samples: int = 4) -> bytes:
    agent = bytes([10, 9, 0, rng.randrange(1, 3)])
    body = b"".join(_flow_sample(rng, seq * 8 + k) for k in range(samples))
    return struct.pack(">II4sIIII", 5, 1, agent, rng.randrange(2), seq, seq * 10, samples) + body


def generated(count: int = 400, seed: int = 7) -> list[bytes]:
    rng = random.Random(seed)
    return [make_datagram(rng, seq, rng.randrange(0, 8)) for seq in range(1, count + 1)]


def corpus_payloads(corpus: Path) -> list[bytes]:
    out = []
    for path in sorted((corpus / "pcap").rglob("*.pcap")):
        out += [d.payload for d in read_udp(path, None)]
    return out


# --- the checks -------------------------------------------------------------------------

def assert_same_as_decoder(payload: bytes) -> bool:
    """parse_compact gives what decode + sample_keys give; True if it took the datagram."""
    compact = parse_compact(payload)
    if compact is None:
        return False
    dg = decode_datagram(payload)  # raises if the fast path took a malformed datagram
    assert not dg.counter_samples and not dg.unknown_samples
    assert (compact.agent, compact.sub_agent_id, compact.sequence, compact.uptime_ms) == \
        (dg.agent, dg.sub_agent_id, dg.sequence, dg.uptime_ms)
    assert len(compact.samples) == len(dg.flow_samples)
    for (kind, (sub, cls, idx), seq, drops, rate, header, context, frame_len), fs in zip(
            compact.samples, dg.flow_samples):
        assert kind == FLOW and sub == dg.sub_agent_id
        assert (seq, cls, idx, rate, drops) == \
            (fs.sequence, fs.source_class, fs.source_index, fs.sampling_rate, fs.drops)
        expected = sample_keys(dg.agent, fs)
        assert full_keys(header, context, frame_len, rate) == expected
        assert sorted(key_names(header, context)) == sorted(expected)
        assert set(context.keys) <= set(CONTEXT_KEYS)
        assert (context.agent, context.datasource) == (dg.agent, datasource_of(fs))
    return True


def engines(payloads: list[bytes], times: list[float]) -> tuple[Engine, Engine]:
    """The same datagrams through the fast path (receive) and the full path (decode + ingest)."""
    fast, full = Engine(max_flows=50, compiled=False), Engine(max_flows=50, compiled=False)
    for engine in (fast, full):
        for name, body in FLOWS.items():
            engine.set_flow(parse_flow(name, body))
        engine.set_threshold(parse_threshold("hot", {"metric": "tcp", "value": 1000,
                                                     "byFlow": True, "timeout": 1}))
        engine.set_threshold(parse_threshold("busy", {"metric": "ports", "value": 5}))
    for payload, now in zip(payloads, times):
        fast.receive(payload, now, "127.0.0.1")
        try:
            full.ingest(decode_datagram(payload), now, "127.0.0.1", len(payload))
        except DecodeError as exc:
            full.count_malformed(exc.reason, len(payload))
        if int(now * 10) % 7 == 0:
            fast.tick(now)
            full.tick(now)
    return fast, full


def assert_same_state(fast: Engine, full: Engine, now: float) -> None:
    assert fast.analyzer() == full.analyzer()
    assert fast.agents(now) == full.agents(now)
    assert fast.flow_keys(now) == full.flow_keys(now)
    assert fast.events(max_events=10_000) == full.events(max_events=10_000)
    for name in FLOWS:
        assert fast.active_flows(name, now, max_flows=1000) == \
            full.active_flows(name, now, max_flows=1000)
        assert fast.flow_metric(name, now) == full.flow_metric(name, now)


def test_generated_datagrams_match_the_decoder() -> None:
    payloads = generated()
    taken = sum(assert_same_as_decoder(p) for p in payloads)
    assert taken == len(payloads)  # every shape generated here is the common one


def test_generated_datagrams_same_engine_state() -> None:
    payloads = generated(1500)
    times = [1000.0 + i * 0.01 for i in range(len(payloads))]
    fast, full = engines(payloads, times)
    assert full.events(max_events=10_000), "the thresholds must fire for this to compare events"
    assert full.evicted, "max_flows must overflow for this to compare evictions"
    assert_same_state(fast, full, times[-1] + 0.5)


def test_capture_same_engine_state(captures_dir: Path) -> None:
    capture = pcap_payloads(captures_dir / "ovs-seed-elephant.pcap")
    payloads = [p for _, p in capture]
    assert any(assert_same_as_decoder(p) for p in payloads)
    assert any(parse_compact(p) is None for p in payloads)  # counter datagrams: full path
    fast, full = engines(payloads, [ts for ts, _ in capture])
    assert_same_state(fast, full, capture[-1][0] + 1)
    assert fast.port_map(capture[-1][0]) == full.port_map(capture[-1][0])


def test_corpus_matches_the_decoder(corpus_dir: Path) -> None:
    payloads = corpus_payloads(corpus_dir)
    assert payloads
    for payload in payloads:
        assert_same_as_decoder(payload)
    times = [1000.0 + i * 0.01 for i in range(len(payloads))]
    fast, full = engines(payloads, times)
    assert_same_state(fast, full, times[-1] + 0.5)


def test_uncommon_shapes_take_the_full_path() -> None:
    good = generated(1)[0]
    assert parse_compact(good) is not None
    v6 = struct.pack(">II16sIIII", 5, 2, bytes(16), 0, 1, 1, 0)
    assert parse_compact(v6) is None and decode_datagram(v6).agent == "::"
    counters = struct.pack(">II4sIIII", 5, 1, bytes(4), 0, 1, 1, 1) + struct.pack(">IIIII", 2, 12, 1, 3, 0)
    assert parse_compact(counters) is None and decode_datagram(counters).counter_samples
    assert parse_compact(bytearray(good)) is None  # the decoder copies it to bytes


@pytest.mark.parametrize("cut", [10, 27, 40, 60, 100, -3])
def test_truncated_datagrams_keep_their_reasons(cut: int) -> None:
    payload = generated(3, seed=3)[2][:cut]
    engine = Engine()
    assert not engine.receive(payload, 1.0)
    with pytest.raises(DecodeError) as info:
        decode_datagram(payload)
    assert engine.dropped == {info.value.reason: 1}


@settings(max_examples=300, deadline=None)
@given(st.integers(0, 10_000), st.data())
def test_mutated_datagrams_fast_path_never_differs(seed: int, data: st.DataObject) -> None:
    payload = bytearray(make_datagram(random.Random(seed), 5, 3))
    for _ in range(data.draw(st.integers(1, 4))):
        at = data.draw(st.integers(0, len(payload) - 1))
        payload[at] = data.draw(st.integers(0, 255))
    cut = data.draw(st.integers(0, len(payload)))
    assert_same_as_decoder(bytes(payload[:cut]))


def test_collector_modes_same_state(captures_dir: Path) -> None:
    """Over UDP, the collector with and without the fast path ends in the same state."""
    payloads = [p for _, p in pcap_payloads(captures_dir / "ovs-seed-elephant.pcap")]
    payloads += generated(300) + [b"\x00\x00\x00\x05\x00\x00\x00\x09", payloads[5][:60]]
    states = []
    for fast_path in (True, False):
        engine = Engine()
        for name, body in FLOWS.items():
            engine.set_flow(parse_flow(name, body))
        collector = Collector(engine, "127.0.0.1", 0, clock=lambda: 1000.0,
                              fast_path=fast_path).start()
        try:
            send_payloads(payloads, collector.address, rate=20_000)
            deadline = time.monotonic() + 20
            while engine.datagrams < len(payloads) and time.monotonic() < deadline:
                time.sleep(0.02)
            with engine.lock:
                states.append((engine.analyzer(), engine.agents(1000.0), engine.flow_keys(1000.0),
                               {name: engine.active_flows(name, 1000.0, max_flows=10_000)
                                for name in FLOWS}, engine.port_map(1000.0)))
        finally:
            collector.stop()
    assert states[0][0]["sFlowDatagramsReceived"] == len(payloads)
    assert states[0][0]["sFlowDatagramsDroppedReasons"] == {"bad-address-type": 1,
                                                          "truncated-sample": 1}
    assert states[0] == states[1]


def test_redefined_flow_gets_new_keys_from_cached_headers() -> None:
    payloads = generated(50, seed=11)
    engine = Engine()
    engine.set_flow(parse_flow("f", {"keys": "ipsource", "value": "frames"}))
    for i, payload in enumerate(payloads):
        engine.receive(payload, 1000.0 + i * 0.01)
    engine.set_flow(parse_flow("f", {"keys": "ipdestination,inputifindex", "value": "frames",
                                     "filter": "ipprotocol=6"}))
    full = Engine()
    full.set_flow(parse_flow("f", {"keys": "ipdestination,inputifindex", "value": "frames",
                                   "filter": "ipprotocol=6"}))
    for i, payload in enumerate(payloads):  # the same headers again: memos from the old table
        engine.receive(payload, 1001.0 + i * 0.01)
        full.ingest(decode_datagram(payload), 1001.0 + i * 0.01, "", len(payload))
    flows = engine.active_flows("f", 1002.0, max_flows=1000)
    assert flows and all(f["key"].startswith("10.1.") for f in flows)
    assert flows == full.active_flows("f", 1002.0, max_flows=1000)
