"""Engine state with an injected clock: rates, smoothing, thresholds, events, top-N."""

from __future__ import annotations

import math

import pytest

from sflow.engine import Engine
from sflow.flowdef import DefinitionError, parse_flow, parse_threshold
from sflow.model import CounterSample, Datagram, Record

T0 = 1_800_000_000.0
PAIR = "ipsource,ipdestination"


def keys(src: str = "10.0.0.1", dst: str = "10.0.0.2", size: int = 1000, **extra: str) -> dict:
    return {"agent": "127.0.0.1", "ipsource": src, "ipdestination": dst, "ipprotocol": "6",
            "bytes": size, "frames": 1, **extra}


def port_name_datagram(if_index: int, name: str) -> Datagram:
    """A counter sample carrying a port name (0:1005), as Open vSwitch sends it."""
    return Datagram("127.0.0.1", 0, 1, 1000, counter_samples=[
        CounterSample(1, 0, if_index, [Record(0, 1005, 12, {"ifName": name})])])


def engine_with(flow: dict, name: str = "f", **kwargs) -> Engine:
    engine = Engine(**kwargs)
    engine.set_flow(parse_flow(name, flow))
    return engine


def stream(engine: Engine, start: float, seconds: float, rate_per_s: float = 100,
           ds: str = "1", sampling: int = 10, **key_args) -> float:
    """Samples every 1/rate_per_s s from ``start``; returns the time of the last one."""
    n = int(seconds * rate_per_s)
    now = start
    for i in range(n):
        now = start + i / rate_per_s
        engine.add_sample(now, "127.0.0.1", ds, keys(**key_args), sampling)
    return now


def top(engine: Engine, now: float, name: str = "f", **kwargs) -> list[dict]:
    flows = engine.active_flows(name, now, **kwargs)
    assert flows is not None
    return flows


# --- rates and smoothing ---------------------------------------------------------------

def test_rate_is_scaled_per_second_and_converges() -> None:
    engine = engine_with({"keys": PAIR, "value": "bytes", "t": 2})
    # 100 samples/s of 1000-byte frames at 1-in-10 sampling = 1,000,000 bytes/s
    last = stream(engine, T0, 30)
    value = top(engine, last)[0]["value"]
    assert value == pytest.approx(1_000_000, rel=0.01)


@pytest.mark.parametrize("value, factor", [("bytes", 1000), ("bps", 8000), ("frames", 1), ("fps", 1)])
def test_value_kinds(value: str, factor: float) -> None:
    engine = engine_with({"keys": PAIR, "value": value, "t": 1})
    last = stream(engine, T0, 20)
    assert top(engine, last)[0]["value"] == pytest.approx(1000 * factor, rel=0.01)


def test_step_response_follows_time_constant() -> None:
    engine = engine_with({"keys": PAIR, "value": "bytes", "t": 4})
    last = stream(engine, T0, 4)  # one time constant
    assert top(engine, last)[0]["value"] == pytest.approx(1_000_000 * (1 - math.exp(-1)), rel=0.02)


def test_value_decays_by_e_per_time_constant_when_traffic_stops() -> None:
    engine = engine_with({"keys": PAIR, "value": "bytes", "t": 2})
    last = stream(engine, T0, 20)
    before = top(engine, last)[0]["value"]
    assert top(engine, last + 2)[0]["value"] == pytest.approx(before / math.e, rel=1e-9)
    assert top(engine, last + 6)[0]["value"] == pytest.approx(before * math.exp(-3), rel=1e-9)


def test_long_runs_and_out_of_order_samples_keep_exact_rates() -> None:
    """Rates survive many time constants (internal rescaling) and samples out of time order."""
    engine = engine_with({"keys": PAIR, "value": "bytes", "t": 0.2})
    last = stream(engine, T0, 100)  # 500 time constants
    assert top(engine, last)[0]["value"] == pytest.approx(1_000_000, rel=0.03)
    ordered = engine_with({"keys": PAIR, "t": 2})
    shuffled = engine_with({"keys": PAIR, "t": 2})
    times = [T0 + i / 100 for i in range(500)]
    for now in times:
        ordered.add_sample(now, "a", "1", keys(), 10)
    for now in times[1::2] + times[0::2]:
        shuffled.add_sample(now, "a", "1", keys(), 10)
    assert top(shuffled, times[-1])[0]["value"] == pytest.approx(top(ordered, times[-1])[0]["value"],
                                                                rel=1e-9)


def test_defaults_and_clamps_are_echoed() -> None:
    fd = parse_flow("f", {"keys": PAIR})
    assert fd.to_json()["fs"] == "," and fd.value == "bytes" and fd.t == 2 and fd.n == 5
    assert parse_flow("f", {"t": 0.01}).t == 0.2
    assert parse_flow("f", {"t": 10_000}).t == 600
    assert parse_flow("f", {"n": 1}).n == 5
    assert parse_flow("f", {"n": 99}).n == 20


@pytest.mark.parametrize("body, field", [
    ({"filter": "ipsource=1)"}, "filter: unexpected ')' at 10"),
    ({"keys": "or:ipsource"}, "keys:"),
    ({"value": "rate:bytes"}, "value:"),
    ({"t": "fast"}, "t:"),
    ({"fs": ""}, "fs:"),
    ({"dropped": True}, "dropped:"),
    ({"log": True, "activeTimeout": -1}, "activeTimeout:"),
    ({"colour": "red"}, "colour:"),
])
def test_bad_flow_definitions_name_the_field(body: dict, field: str) -> None:
    with pytest.raises(DefinitionError) as info:
        parse_flow("f", body)
    assert str(info.value).startswith(field)


def test_filter_selects_samples_and_missing_keys_skip_them() -> None:
    engine = engine_with({"keys": "ipsource,tcpsourceport", "value": "frames",
                          "filter": "ipdestination=10.0.0.2", "t": 1})
    for i in range(50):
        now = T0 + i / 10
        engine.add_sample(now, "a", "1", keys(tcpsourceport="1"), 1)
        engine.add_sample(now, "a", "1", keys(dst="10.0.0.9", tcpsourceport="2"), 1)
        engine.add_sample(now, "a", "1", keys(), 1)  # no tcpsourceport: not a flow of this def
    assert [f["key"] for f in top(engine, now)] == ["10.0.0.1,1"]
    assert top(engine, now)[0]["value"] == pytest.approx(10, rel=0.05)


def test_keyless_flow_is_one_total_per_data_source_and_fs_joins_keys() -> None:
    engine = engine_with({"value": "bytes", "t": 1}, name="total")
    engine.set_flow(parse_flow("sep", {"keys": PAIR, "fs": "_SEP_", "t": 1}))
    for i in range(1000):
        last = T0 + i / 100
        engine.add_sample(last, "127.0.0.1", "1", keys(src="10.0.0.1"), 10)
        engine.add_sample(last, "127.0.0.1", "1", keys(src="10.0.0.3"), 10)
    total = top(engine, last, "total")
    assert len(total) == 1 and total[0]["key"] == ""
    assert total[0]["value"] == pytest.approx(2_000_000, rel=0.02)
    assert {f["key"] for f in top(engine, last, "sep")} == {"10.0.0.1_SEP_10.0.0.2",
                                                          "10.0.0.3_SEP_10.0.0.2"}


def test_redefining_a_flow_resets_it_but_an_identical_put_keeps_state() -> None:
    engine = engine_with({"keys": PAIR, "t": 1})
    last = stream(engine, T0, 5)
    engine.set_flow(parse_flow("f", {"keys": PAIR, "t": 1}))
    assert top(engine, last)
    engine.set_flow(parse_flow("f", {"keys": "ipsource", "t": 1}))
    assert top(engine, last) == []
    assert engine.delete_flow("f") and engine.active_flows("f", last) is None


# --- top-N -------------------------------------------------------------------------------

def test_active_flows_sorted_limited_and_min_value() -> None:
    engine = engine_with({"keys": PAIR, "value": "frames", "t": 1})
    now = T0
    for step in range(100):
        now = T0 + step / 10
        for i in range(10):  # flow i gets i+1 samples per step
            for _ in range(i + 1):
                engine.add_sample(now, "a", "1", keys(src=f"10.0.1.{i}"), 1)
    flows = top(engine, now)
    values = [f["value"] for f in flows]
    assert values == sorted(values, reverse=True) and len(flows) == 10
    assert flows[0]["key"] == "10.0.1.9,10.0.0.2"
    assert [f["key"] for f in top(engine, now, max_flows=3)] == [f["key"] for f in flows[:3]]
    assert all(f["value"] >= 55 for f in top(engine, now, min_value=55))
    assert len(top(engine, now, min_value=55)) == 5  # 60, 70, 80, 90, 100 frames/s


def test_aggregation_across_data_sources() -> None:
    engine = engine_with({"keys": PAIR, "value": "frames", "t": 1})
    stream(engine, T0, 10, rate_per_s=100, ds="1", sampling=1)   # 100 frames/s at port 1
    last = stream(engine, T0, 10, rate_per_s=50, ds="2", sampling=1)  # 50 at port 2
    engine.add_sample(last, "other", "9", keys(), 1)
    by_mode = {mode: top(engine, last, agents={"127.0.0.1"}, agg_mode=mode)[0]
               for mode in ("max", "sum", "avg", "edge")}
    assert by_mode["max"]["value"] == pytest.approx(100, rel=0.02)
    assert by_mode["max"]["dataSource"] == "1"
    assert by_mode["sum"]["value"] == pytest.approx(150, rel=0.02)
    assert by_mode["avg"]["value"] == pytest.approx(75, rel=0.02)
    assert by_mode["edge"]["value"] == by_mode["max"]["value"]  # no topology: as max
    assert {f["agent"] for f in top(engine, last, agents={"other"})} == {"other"}


def test_flow_metric_top_keys() -> None:
    engine = engine_with({"keys": PAIR, "value": "frames", "t": 1, "n": 5})
    for i in range(8):
        last = stream(engine, T0, 5, rate_per_s=10 * (i + 1), ds="3", sampling=1, src=f"10.9.0.{i}")
    stat = engine.flow_metric("f", last)
    assert stat is not None and stat["dataSource"] == "3" and stat["metricN"] == 1
    assert len(stat["topKeys"]) == 5
    assert stat["topKeys"][0]["key"] == "10.9.0.7,10.0.0.2"
    assert stat["metricValue"] == stat["topKeys"][0]["value"]


# --- thresholds and events ----------------------------------------------------------------

def elephant_engine(by_flow: bool = True, timeout: float = 2) -> Engine:
    engine = engine_with({"keys": PAIR, "value": "bytes", "t": 1}, name="tcp")
    engine.set_threshold(parse_threshold("big", {"metric": "tcp", "value": 500_000,
                                                 "byFlow": by_flow, "timeout": timeout}))
    return engine


def test_by_flow_threshold_fires_once_per_flow_with_its_key() -> None:
    engine = elephant_engine()
    stream(engine, T0, 5, src="10.0.0.1")                    # 1 MB/s: crosses
    stream(engine, T0, 5, src="10.0.0.3", sampling=1)        # 100 kB/s: never
    last = stream(engine, T0 + 5, 5, src="10.0.0.5")         # crosses later
    events = engine.events()
    assert [e["flowKey"] for e in events] == ["10.0.0.5,10.0.0.2", "10.0.0.1,10.0.0.2"]
    ev = events[-1]
    assert ev["thresholdID"] == "big" and ev["metric"] == "tcp" and ev["threshold"] == 500_000
    assert ev["agent"] == "127.0.0.1" and ev["dataSource"] == "1"
    assert ev["value"] > 500_000 and isinstance(ev["timestamp"], int)
    # the crossing sample: 1 MB/s with t=1 passes 500 kB/s after ln 2 s
    assert ev["timestamp"] / 1000 - T0 == pytest.approx(math.log(2), abs=0.02)
    assert last > T0 + 5


def test_threshold_rearms_only_after_timeout_below() -> None:
    engine = elephant_engine(timeout=2)
    last = stream(engine, T0, 5)
    assert len(engine.events()) == 1
    # stops; 1 MB/s with t=1 falls below 500 kB/s after ln 2 = 0.69 s. Back after 1.5 s:
    # below for 0.8 s < timeout, no new event
    last = stream(engine, last + 1.5, 5)
    assert len(engine.events()) == 1
    # stops again; back after 4 s: below for 3.3 s > timeout, fires again
    stream(engine, last + 4, 5)
    assert len(engine.events()) == 2


def test_tick_expires_rearm_state() -> None:
    engine = elephant_engine(timeout=1)
    last = stream(engine, T0, 3)
    engine.tick(last + 10)
    assert engine._fired == {}
    stream(engine, last + 10, 3)
    assert len(engine.events()) == 2


def test_non_by_flow_threshold_fires_per_data_source() -> None:
    engine = elephant_engine(by_flow=False)
    stream(engine, T0, 3, ds="1", src="10.0.0.1")
    stream(engine, T0, 3, ds="1", src="10.0.0.3")
    stream(engine, T0, 3, ds="2", src="10.0.0.1")
    events = engine.events()
    assert sorted(e["dataSource"] for e in events) == ["1", "2"]
    assert all("flowKey" not in e for e in events)


def test_threshold_on_a_flow_defined_later_and_deleted() -> None:
    engine = Engine()
    engine.set_threshold(parse_threshold("big", {"metric": "tcp", "value": 500_000, "byFlow": True}))
    engine.set_flow(parse_flow("tcp", {"keys": PAIR, "t": 1}))
    last = stream(engine, T0, 3)
    assert len(engine.events()) == 1
    assert engine.delete_threshold("big") and not engine.delete_threshold("big")
    stream(engine, last + 20, 3)
    assert len(engine.events()) == 1


def test_threshold_filter_on_data_source_attributes() -> None:
    engine = elephant_engine()
    engine.set_threshold(parse_threshold("big", {"metric": "tcp", "value": 500_000, "byFlow": True,
                                                 "filter": {"ifname": ["s1-eth1"]}}))
    stream(engine, T0, 3, ds="1")
    assert engine.events() == []  # port 1's name is not known yet
    engine.ingest(port_name_datagram(2, "s1-eth1"), T0 + 3)
    stream(engine, T0 + 3, 3, ds="2")
    assert [e["dataSource"] for e in engine.events()] == ["2"]


@pytest.mark.parametrize("body, field", [
    ({"value": 1}, "metric:"),
    ({"metric": "tcp"}, "value:"),
    ({"metric": "tcp", "value": "x"}, "value:"),
    ({"metric": "tcp", "value": 1, "timeout": -1}, "timeout:"),
    ({"metric": "tcp", "value": 1, "filter": "ifspeed=1"}, "filter:"),
])
def test_bad_thresholds_name_the_field(body: dict, field: str) -> None:
    with pytest.raises(DefinitionError) as info:
        parse_threshold("t", body)
    assert str(info.value).startswith(field)


def test_events_cursor_order_limit_and_threshold_filter() -> None:
    engine = engine_with({"keys": PAIR, "value": "frames", "t": 1}, name="tcp")
    engine.set_threshold(parse_threshold("a", {"metric": "tcp", "value": 5, "byFlow": True}))
    engine.set_threshold(parse_threshold("b", {"metric": "tcp", "value": 5, "byFlow": True}))
    for i in range(10):
        stream(engine, T0 + i, 1, sampling=1, src=f"10.0.2.{i}")
    events = engine.events(max_events=100)
    ids = [e["eventID"] for e in events]
    assert ids == list(range(20, 0, -1))  # newest first, ids increasing by one
    assert [e["eventID"] for e in engine.events(max_events=3)] == [20, 19, 18]
    # after a cursor: the oldest ones after it (so a client advancing its cursor loses none)
    assert [e["eventID"] for e in engine.events(event_id=5, max_events=3)] == [8, 7, 6]
    assert engine.events(event_id=20) == []
    only_a = engine.events(threshold_id="a")
    assert len(only_a) == 10 and {e["thresholdID"] for e in only_a} == {"a"}
    assert engine.last_event_id == 20


def test_events_are_a_bounded_ring() -> None:
    engine = engine_with({"keys": PAIR, "value": "frames", "t": 1}, name="tcp", max_events=5)
    engine.set_threshold(parse_threshold("a", {"metric": "tcp", "value": 5, "byFlow": True}))
    for i in range(8):
        stream(engine, T0 + i, 1, sampling=1, src=f"10.0.2.{i}")
    assert [e["eventID"] for e in engine.events()] == [8, 7, 6, 5, 4]


# --- bounds --------------------------------------------------------------------------------

def test_idle_flows_are_evicted_when_decayed_below_the_floor() -> None:
    """Floor: e^-10 of the smallest impulse (one 1000-byte sample at 1-in-10, t = 1: 10 kB/s)."""
    engine = engine_with({"keys": PAIR, "t": 1})
    engine.add_sample(T0, "127.0.0.1", "1", keys(src="10.0.0.1"), 10)  # seen once
    last = stream(engine, T0 + 1, 8, src="10.0.0.3")
    rate = top(engine, last)[0]["value"]
    engine.tick(T0 + 10.2)  # the single sample has decayed by e^-10.2
    assert [f["key"] for f in top(engine, T0 + 10.2)] == ["10.0.0.3,10.0.0.2"]
    assert engine.flow_count("f") == 1
    # the stream stays until its rate is below the floor: 10 t + t ln(rate / 10 kB/s)
    gone_at = last + 10 + math.log(rate / 10_000)
    engine.tick(gone_at - 0.1)
    assert engine.flow_count("f") == 1
    engine.tick(gone_at + 1.1)  # sweeps run at most once per max(1 s, t)
    assert engine.flow_count("f") == 0 and top(engine, gone_at + 1.1) == []


def test_flow_cap_evicts_the_smallest() -> None:
    engine = engine_with({"keys": PAIR, "value": "frames", "t": 60}, max_flows=100)
    for _ in range(50):  # ten big flows first
        for i in range(10):
            engine.add_sample(T0, "a", "1", keys(src=f"10.1.0.{i}"), 100)
    for i in range(1000):
        engine.add_sample(T0 + 0.001 * i, "a", "1", keys(src=f"10.2.{i // 250}.{i % 250}"), 1)
    assert engine.flow_count("f") <= 100
    assert engine.evicted >= 900
    big = {f"10.1.0.{i},10.0.0.2" for i in range(10)}
    assert big <= {f["key"] for f in top(engine, T0 + 1)}


def test_flow_keys_format_non_string_values() -> None:
    fd = parse_flow("f", {"keys": "inputifindex,ipsource"})
    assert fd.flow_key({"inputifindex": 7, "ipsource": "10.0.0.1"}) == "7,10.0.0.1"
    assert fd.flow_key({"inputifindex": "7"}) is None
    assert parse_flow("f", {"keys": "or:a:b,c"}).flow_key({"b": 2, "c": True}) == "2,true"
