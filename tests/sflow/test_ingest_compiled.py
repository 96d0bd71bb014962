"""The compiled ingest kernel (sflow._ingest) and the pure-Python path give the same state."""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sflow.collector import pcap_payloads
from sflow.engine import Engine
from sflow.flowdef import parse_flow, parse_threshold
from sflow.ingest import COMPILED_ENV, compiled

from .test_ingest_fastpath import FLOWS, corpus_payloads, generated, make_datagram

pytestmark = pytest.mark.skipif(compiled() is None,
                                reason="sflow._ingest not built (no C compiler at install)")


def build(use_compiled: bool) -> Engine:
    engine = Engine(max_flows=50, compiled=use_compiled)
    for name, body in FLOWS.items():
        engine.set_flow(parse_flow(name, body))
    engine.set_threshold(parse_threshold("hot", {"metric": "tcp", "value": 1000,
                                                 "byFlow": True, "timeout": 1}))
    engine.set_threshold(parse_threshold("busy", {"metric": "ports", "value": 5}))
    engine.set_threshold(parse_threshold("fast", {"metric": "bps", "value": 10,
                                                  "filter": {"ifspeed": ["10000000000"]}}))
    engine.set_threshold(parse_threshold("util", {"metric": "ifinutilization", "value": 0.5}))
    engine.set_flow(parse_flow("logged", {"keys": "ipsource,ipdestination", "value": "bytes",
                                          "log": True, "activeTimeout": 1}))
    assert engine.compiled == use_compiled
    return engine


def state(engine: Engine, now: float) -> tuple[Any, ...]:
    return (engine.analyzer(), engine.agents(now), engine.flow_keys(now),
            engine.events(max_events=10_000),
            {n: engine.active_flows(n, now, max_flows=1000) for n in FLOWS},
            {n: engine.flow_metric(n, now) for n in FLOWS}, engine.port_map(now),
            [tuple(s) for s in engine.counter_snapshot()], dict(engine._fired),
            engine.flow_log.select(-1, 100_000), engine.flow_log.open_flows)


def same_state(payloads: list[bytes], times: list[float], batch: int = 7) -> tuple[Engine, Engine]:
    fast, slow = build(True), build(False)
    for i in range(0, len(payloads), batch):
        chunk = [(p, "127.0.0.1") for p in payloads[i:i + batch]]
        fast.receive_batch(chunk, times[i])
        slow.receive_batch(chunk, times[i])
        if i % (3 * batch) == 0:
            fast.tick(times[i])
            slow.tick(times[i])
    now = times[-1] + 0.5
    assert state(fast, now) == state(slow, now)
    return fast, slow


def test_generated_datagrams() -> None:
    payloads = generated(1500)
    fast, _ = same_state(payloads, [1000.0 + i * 0.01 for i in range(len(payloads))])
    assert fast.evicted and fast.events(max_events=10)


def test_capture_counters_and_flows(captures_dir: Path) -> None:
    capture = pcap_payloads(captures_dir / "ovs-seed-elephant.pcap")
    fast, _ = same_state([p for _, p in capture], [t for t, _ in capture])
    assert fast.analyzer()["sFlowCounterSamplesReceived"] >= 222
    assert fast.port_map(capture[-1][0])


def test_whole_corpus(corpus_dir: Path) -> None:
    payloads = corpus_payloads(corpus_dir)
    same_state(payloads, [1000.0 + i * 0.01 for i in range(len(payloads))])


def test_mutated_datagrams(captures_dir: Path) -> None:
    capture = [p for _, p in pcap_payloads(captures_dir / "ovs-seed-elephant.pcap")]
    rng = random.Random(5)
    mutated = []
    for k in range(3000):
        payload = bytearray(make_datagram(random.Random(k), 5, 3) if k % 2 else capture[k % len(capture)])
        for _ in range(rng.randint(1, 4)):
            payload[rng.randrange(len(payload))] = rng.randrange(256)
        mutated.append(bytes(payload[:rng.randint(0, len(payload))]))
    fast, _ = same_state(mutated, [1000.0 + i * 0.01 for i in range(len(mutated))])
    assert fast.dropped  # some mutations are malformed: counted, never raised


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=600), st.integers(0, 400))
def test_arbitrary_bytes_never_crash(junk: bytes, cut: int) -> None:
    base = make_datagram(random.Random(cut), 3, 2)
    payloads = [junk, base[:cut] + junk, base + junk, junk + base]
    same_state(payloads, [1.0, 2.0, 3.0, 4.0], batch=2)


def test_refused_by_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(COMPILED_ENV, "0")
    assert compiled() is None and not Engine().compiled
