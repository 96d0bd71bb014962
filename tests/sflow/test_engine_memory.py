"""Bounded state: memory per tracked flow, and flat memory while many distinct flows pass."""

from __future__ import annotations

import gc
import tracemalloc

from sflow.engine import Engine
from sflow.flowdef import parse_flow

FLOW = {"keys": "ipsource,ipdestination,tcpsourceport,tcpdestinationport", "value": "bytes"}


def _sample(i: int) -> dict:
    return {"ipsource": f"10.{i >> 16}.{(i >> 8) & 255}.{i & 255}", "ipdestination": "10.0.0.2",
            "tcpsourceport": str(i % 60000), "tcpdestinationport": "80", "bytes": 1500, "frames": 1}


def _feed(engine: Engine, start: int, stop: int) -> None:
    for i in range(start, stop):
        engine.add_sample(1000.0 + i * 1e-5, "127.0.0.1", "1", _sample(i), 100)


def test_memory_per_tracked_flow_within_target() -> None:
    """Target: <= 30 MB per 100,000 active flows, i.e. 300 bytes per flow."""
    engine = Engine(max_flows=100_000)
    engine.set_flow(parse_flow("f", FLOW))
    gc.collect()
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        _feed(engine, 0, 20_000)
        gc.collect()
        used = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert engine.flow_count("f") == 20_000
    assert used / 20_000 < 300, f"{used / 20_000:.0f} bytes per flow"


def test_state_stays_flat_while_distinct_flows_pass() -> None:
    """Fifteen times the cap of distinct flows: the tracked set and its memory stay bounded."""
    cap = 5_000
    engine = Engine(max_flows=cap)
    engine.set_flow(parse_flow("f", FLOW))
    tracemalloc.start()  # it counts only blocks allocated while tracing: start first
    try:
        _feed(engine, 0, 2 * cap)  # reach the cap and one shrink
        gc.collect()
        base = tracemalloc.get_traced_memory()[0]
        _feed(engine, 2 * cap, 15 * cap)
        gc.collect()
        grown = tracemalloc.get_traced_memory()[0] - base
    finally:
        tracemalloc.stop()
    assert engine.flow_count("f") <= cap
    assert engine.evicted >= 14 * cap - cap
    # a flat state: no more than a tenth of the cap's worth of flows (300 B each) added
    assert grown < cap * 300 / 10, f"grew {grown} bytes"
