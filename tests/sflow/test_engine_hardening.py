"""Issue 14 regressions for the engine: hostile filters (#1), crafted datagrams growing
state (#6), definitions without limits (#7)."""

from __future__ import annotations

import json
import struct
import threading
import tracemalloc
from pathlib import Path

import pytest
import requests

from sflow.collector import pcap_payloads
from sflow.counters import port_map_rows
from sflow.embedded import EmbeddedEngine
from sflow.engine import Engine
from sflow.flowdef import (MAX_FS_LENGTH, DefinitionError, parse_flow, parse_threshold)

AGENT = "127.0.0.1"


def flow_datagrams(captures_dir: Path, count: int) -> list[bytes]:
    payloads = [p for _, p in pcap_payloads(captures_dir / "ovs-seed-elephant.pcap")]
    return [p for p in payloads if len(p) > 500][:count]


# --- #1: a catastrophic regular expression -------------------------------------------------

def distinct_mac_datagrams(count: int, per: int = 5) -> list[bytes]:
    """Datagrams whose every sample has a new source MAC (no memo can help)."""
    out = []
    for d in range(count):
        samples = []
        for k in range(per):
            n = d * per + k
            frame = (b"\x02\x00\x00\x00\x00\x02" + struct.pack(">HI", 0x0216, n) + b"\x08\x00"
                     + struct.pack(">BBHHHBBH4s4s", 0x45, 0, 1500, 0, 0x4000, 64, 6, 0,
                                   b"\x0a\x00\x00\x01", b"\x0a\x00\x00\x02")
                     + struct.pack(">HHIIBBHHH", 1000, 5201, 1, 1, 0x50, 0x10, 1024, 0, 0)
                     + bytes(10))
            record = struct.pack(">IIII", 1, 1518, 4, len(frame)) + frame
            body = struct.pack(">8I", n, (2 << 24) | 1000, 100, n * 100, 0, 1, 2, 1) \
                + struct.pack(">II", 1, len(record)) + record
            samples.append(struct.pack(">II", 1, len(body)) + body)
        out.append(struct.pack(">II4sIIII", 5, 1, b"\x7f\x00\x00\x01", 0, d + 1, 1, per)
                   + b"".join(samples))
    return out


@pytest.mark.parametrize("compiled", [True, False])
def test_catastrophic_filter_does_not_stall_ingest(compiled: bool) -> None:
    """Python's re took 0.3-1.5 s per distinct MAC on this pattern (the issue: 52 s for
    10 datagrams); RE2 is linear. A liveness bound on 200 distinct samples (the thread
    must finish), not a timing assertion."""
    engine = Engine(compiled=compiled)
    engine.set_flow(parse_flow("evil", {"keys": "macsource",
                                        "filter": "macsource~((.*)*)*Z"}))
    engine.set_flow(parse_flow("ok", {"keys": "macsource"}))
    payloads = distinct_mac_datagrams(40)
    done = threading.Event()

    def feed() -> None:
        for i, payload in enumerate(payloads):
            engine.receive(payload, 1000.0 + i, AGENT)
        done.set()

    threading.Thread(target=feed, daemon=True).start()
    assert done.wait(60), "ingest stalled on a hostile filter"
    assert engine.flow_count("evil") == 0 and engine.flow_count("ok") == 200


def test_regex_features_without_a_linear_bound_are_refused() -> None:
    for pattern in (r"(a)\1", r"(?=a)b", r"a(?!b)"):
        with pytest.raises(DefinitionError, match="filter: bad regular expression"):
            parse_flow("f", {"filter": f"macsource~{pattern}"})
    parse_flow("f", {"filter": "tcpflags~....1..1.|macsource~00163E.*"})  # RE2 still matches


def test_queries_copy_under_the_lock_and_rank_outside(captures_dir: Path) -> None:
    engine = Engine()
    engine.set_flow(parse_flow("f", {"keys": "ipsource,ipdestination"}))
    for i, payload in enumerate(flow_datagrams(captures_dir, 50)):
        engine.receive(payload, 1000.0 + i * 0.01, AGENT)
    with engine.lock:
        snap = engine.flow_snapshot("f", 1001.0)
        counters = engine.counter_snapshot()
    for payload in flow_datagrams(captures_dir, 50):  # ingest goes on; the copies do not move
        engine.receive(payload, 1002.0, AGENT)
    from sflow.flowtable import active_flows
    assert active_flows(snap, 10) != engine.active_flows("f", 1002.0, max_flows=10)
    assert port_map_rows(counters, 1001.0) == port_map_rows(counters, 1001.0)


# --- #6: crafted, well-formed datagrams ----------------------------------------------------

def crafted(i: int) -> bytes:
    """From one agent address: a new sub-agent, flow sampler, counter source, ifIndex."""
    header = bytes(64)
    record = struct.pack(">IIII", 1, 100, 4, len(header)) + header
    flow = struct.pack(">8I", 1, i & 0xFFFFFF, 100, 100, 0, i & 0xFFFF, 1, 1) \
        + struct.pack(">II", 1, len(record)) + record
    name = f"p{i}".encode()
    name_rec = struct.pack(">I", len(name)) + name + b"\x00" * (-len(name) % 4)
    counters = struct.pack(">III", 1, i & 0xFFFFFF, 2) \
        + struct.pack(">II", 1004, 12) + struct.pack(">QI", 1, i) \
        + struct.pack(">II", 1005, len(name_rec)) + name_rec
    return (struct.pack(">II4sIIII", 5, 1, b"\x0a\x09\x09\x09", i, 1, 1, 2)
            + struct.pack(">II", 1, len(flow)) + flow
            + struct.pack(">II", 2, len(counters)) + counters)


@pytest.mark.parametrize("compiled", [True, False])
def test_crafted_datagrams_keep_every_map_bounded(compiled: bool) -> None:
    engine = Engine(max_datasources=2000, max_flows=1000, compiled=compiled)
    engine.set_flow(parse_flow("f", {"keys": "inputifindex"}))
    batch = [(crafted(i), "192.0.2.1") for i in range(6000)]
    for i in range(0, len(batch), 256):
        engine.receive_batch(batch[i:i + 256], 1000.0 + i)
    agent = engine.agent_table.agents["10.9.9.9"]
    assert len(agent.subagents) <= engine.agent_table.max_subagents
    assert len(agent.samplers) <= engine.agent_table.max_samplers
    assert len(agent.counter_sources) <= engine.agent_table.max_counter_sources
    assert len(engine.counters.sources) <= 2000
    assert len(engine.port_map(7000.0)) <= 2000
    evictions = engine.evictions()
    assert evictions["subagents"] >= 6000 - 64 and evictions["samplers"] >= 6000 - 4096
    assert evictions["datasources"] >= 4000
    # flat: further waves of new ids cost no more than the bounded caches hold
    # (header keys and contexts: 8,192 entries each, cleared when full)
    tracemalloc.start()
    for wave in range(2):
        if wave == 1:
            before = tracemalloc.get_traced_memory()[0]
        ids = range(100_000 + wave * 20_000, 120_000 + wave * 20_000)
        more = [(crafted(i), "192.0.2.1") for i in ids]
        for i in range(0, len(more), 256):
            engine.receive_batch(more[i:i + 256], 9000.0 + wave * 100 + i / 1000)
        del more
    grown = tracemalloc.get_traced_memory()[0] - before
    tracemalloc.stop()
    assert grown < 12 << 20, f"state grew {grown} bytes under 20,000 more crafted datagrams"
    assert engine.analyzer()["evictions"] == engine.evictions()


def test_agents_are_bounded_and_evictions_counted() -> None:
    engine = Engine(max_agents=50)
    for i in range(500):
        payload = bytearray(crafted(i))
        payload[8:12] = struct.pack(">I", 0x0A000000 + i)
        engine.receive(bytes(payload), 100.0 + i)
    assert len(engine.agent_table.agents) <= 50
    assert engine.evictions()["agents"] >= 450
    assert {r["agent"] for r in engine.port_map(700.0)} <= set(engine.agent_table.agents)


# --- #7: limits on definitions -------------------------------------------------------------

def test_definition_field_limits() -> None:
    with pytest.raises(DefinitionError, match="^fs: longer than"):
        parse_flow("f", {"keys": "ipsource", "fs": "x" * 100_000})
    parse_flow("f", {"keys": "ipsource", "fs": "_" * MAX_FS_LENGTH})
    with pytest.raises(DefinitionError, match="^keys: longer than"):
        parse_flow("f", {"keys": ",".join(["ipsource"] * 500)})
    with pytest.raises(DefinitionError, match="^filter: longer than"):
        parse_flow("f", {"filter": "|".join(["ipsource=10.0.0.1"] * 500)})
    with pytest.raises(DefinitionError, match="^filter: parentheses nested deeper"):
        parse_flow("f", {"filter": "(" * 900 + "ipsource=1" + ")" * 900})
    with pytest.raises(DefinitionError, match="^keys: .*nested deeper"):
        parse_flow("f", {"keys": "or:" + "[or:" * 100 + "a:b" + "]" * 100 + ":c"})
    with pytest.raises(DefinitionError, match="^filter: more than"):
        parse_threshold("t", {"metric": "f", "value": 1,
                              "filter": {f"a{i}": ["1"] for i in range(100)}})


def test_definition_counts_are_limited() -> None:
    engine = Engine(max_flow_definitions=5, max_thresholds=3)
    for i in range(5):
        engine.set_flow(parse_flow(f"f{i}", {"keys": "ipsource"}))
    engine.set_flow(parse_flow("f0", {"keys": "ipdestination"}))  # replacing is fine
    with pytest.raises(DefinitionError, match="at most 5 flow definitions"):
        engine.set_flow(parse_flow("f5", {"keys": "ipsource"}))
    for i in range(3):
        engine.set_threshold(parse_threshold(f"t{i}", {"metric": "f0", "value": 1}))
    with pytest.raises(DefinitionError, match="at most 3 thresholds"):
        engine.set_threshold(parse_threshold("t3", {"metric": "f0", "value": 1}))


def test_limits_are_400s_over_http() -> None:
    with EmbeddedEngine(("127.0.0.1", 0), ("127.0.0.1", 0)) as service:
        service.engine.max_flow_definitions = 2
        url = service.url
        reply = requests.put(f"{url}/flow/big/json",
                             data=json.dumps({"keys": "ipsource", "fs": "x" * 100_000}), timeout=5)
        assert reply.status_code == 400 and reply.text.startswith("fs:")
        for name in ("a", "b"):
            assert requests.put(f"{url}/flow/{name}/json", data="{}", timeout=5).status_code == 204
        reply = requests.put(f"{url}/flow/c/json", data="{}", timeout=5)
        assert reply.status_code == 400 and "at most 2 flow definitions" in reply.text
