"""Metric queries (/metric, /dump, /table, /metrics), Prometheus text and the flow log: pure."""

from __future__ import annotations

import math

import pytest
from prometheus_client.parser import text_string_to_metric_families

from sflow.flowlog import FlowLog, LogSpec, idle_timeout
from sflow.metricquery import (
    MetricError,
    agent_metrics,
    dump,
    metric_ages,
    parse_metric,
    row_matches,
    statistic,
    table,
)
from sflow.promexport import analyzer_text, metrics_text

ROWS = [
    {"agent": "10.0.0.1", "dataSource": "1", "lastUpdate": 100,
     "metrics": {"ifinoctets": 100.0, "ifspeed": 1_000_000_000, "ifname": "swp1",
                 "ifoperstatus": "up"}},
    {"agent": "10.0.0.1", "dataSource": "2", "lastUpdate": 300,
     "metrics": {"ifinoctets": 300.0, "ifspeed": 10_000_000_000, "ifname": "swp2"}},
    {"agent": "10.0.0.2", "dataSource": "1", "lastUpdate": 200,
     "metrics": {"ifinoctets": 200.0, "ifspeed": 1_000_000_000, "ifname": "eth0"}},
    {"agent": "10.0.0.2", "dataSource": "2.1", "lastUpdate": 50,
     "metrics": {"load_one": 0.4, "host_name": "leaf2"}},
]


def test_parse_metric_prefixes_and_scopes() -> None:
    spec = parse_metric("sum:ifinoctets")
    assert (spec.agg, spec.datasource, spec.name) == ("sum", None, "ifinoctets")
    spec = parse_metric("2.1.load_one")
    assert (spec.agg, spec.datasource, spec.name) == ("max", "2.1", "load_one")
    assert parse_metric("1478.tcp").datasource == "1478"
    assert parse_metric("a.b", known=["a.b"]).name == "a.b"
    with pytest.raises(MetricError, match="unknown aggregation"):
        parse_metric("median:ifinoctets")
    with pytest.raises(MetricError):
        parse_metric("max:")


def test_statistic_shapes_follow_the_reference() -> None:
    best = statistic(parse_metric("ifinoctets"), ROWS)
    # max (the default): the winner's agent/dataSource/lastUpdate, like the api's Statistic
    assert best == {"metricName": "ifinoctets", "metricValue": 300.0, "metricN": 3,
                    "lastUpdateMin": 100, "lastUpdateMax": 300, "agent": "10.0.0.1",
                    "dataSource": "2", "lastUpdate": 300}
    low = statistic(parse_metric("min:ifinoctets"), ROWS)
    assert low["metricValue"] == 100.0 and low["dataSource"] == "1" and low["agent"] == "10.0.0.1"
    total = statistic(parse_metric("sum:ifinoctets"), ROWS)
    # the reference's med:ifinoctets example has no agent/dataSource: a summary of many
    assert set(total) == {"metricName", "metricValue", "metricN", "lastUpdateMin", "lastUpdateMax"}
    assert total["metricValue"] == 600.0
    assert statistic(parse_metric("avg:ifinoctets"), ROWS)["metricValue"] == 200.0
    assert statistic(parse_metric("med:ifinoctets"), ROWS)["metricValue"] == 200.0
    assert statistic(parse_metric("q1:ifinoctets"), ROWS)["metricValue"] == 150.0
    assert statistic(parse_metric("iqr:ifinoctets"), ROWS)["metricValue"] == 100.0
    var = statistic(parse_metric("var:ifinoctets"), ROWS)["metricValue"]
    assert math.isclose(var, 20000 / 3)
    assert math.isclose(statistic(parse_metric("sdev:ifinoctets"), ROWS)["metricValue"],
                        math.sqrt(var))
    assert statistic(parse_metric("1.ifinoctets"), ROWS)["metricN"] == 2
    assert statistic(parse_metric("nothing"), ROWS) == {"metricName": "nothing", "metricN": 0}
    assert statistic(parse_metric("any:host_name"), ROWS)["metricValue"] == "leaf2"
    assert statistic(parse_metric("sum:host_name"), ROWS)["metricN"] == 0


def test_query_filters_select_data_sources() -> None:
    gig = [r for r in ROWS if row_matches(r, {"ifspeed": ["1000000000"]})]
    assert [(r["agent"], r["dataSource"]) for r in gig] == [("10.0.0.1", "1"), ("10.0.0.2", "1")]
    assert [r["dataSource"] for r in ROWS if row_matches(r, {"ifname": ["swp*"]})] == ["1", "2"]
    assert [r["dataSource"] for r in ROWS if row_matches(r, {"host_name": ["*leaf*"]})] == ["2.1"]


def test_dump_table_metrics_and_agent_metrics() -> None:
    rows = dump([parse_metric("ifinoctets"), parse_metric("ifoperstatus")], ROWS)
    assert rows[0] == {"agent": "10.0.0.1", "dataSource": "1", "metricName": "ifinoctets",
                       "metricValue": 100.0, "lastUpdate": 100}
    assert len(rows) == 4
    assert len(dump(None, ROWS)) == sum(len(r["metrics"]) for r in ROWS)
    t = table(["ifname", "sort:ifinoctets:-2"], ROWS)
    assert [[c.get("metricValue") for c in row] for row in t] == [["swp2", 300.0], ["eth0", 200.0]]
    t = table(["ifname", "ifoperstatus"], ROWS)
    assert len(t) == 3 and "metricValue" not in t[1][1]  # missing value: no metricValue
    assert table(["sort:ifinoctets:2"], ROWS)[0][0]["metricValue"] == 100.0
    with pytest.raises(MetricError):
        table(["sort:ifinoctets:x"], ROWS)
    ages = metric_ages(ROWS)
    assert ages["ifinoctets"] == 100 and ages["load_one"] == 50
    assert agent_metrics([r for r in ROWS if r["agent"] == "10.0.0.2"]) == {
        "1.ifinoctets": 200.0, "1.ifname": "eth0", "1.ifspeed": 1_000_000_000,
        "2.1.host_name": "leaf2", "2.1.load_one": 0.4}


def test_prometheus_text_parses_and_labels_series() -> None:
    text = metrics_text(["ifinoctets", "ifname", "load_one"], ROWS, {"10.0.0.2": "leaf2"}).decode()
    families = {f.name: f for f in text_string_to_metric_families(text)}
    assert set(families) == {"sflow_ifinoctets", "sflow_load_one"}  # text metrics left out
    samples = families["sflow_ifinoctets"].samples
    assert len(samples) == 3
    first = next(s for s in samples if s.labels["agent"] == "10.0.0.2")
    assert first.labels == {"agent": "10.0.0.2", "datasource": "1", "ifname": "eth0",
                            "host": "leaf2"} and first.value == 200.0
    load = families["sflow_load_one"].samples[0]
    assert load.labels["datasource"] == "2.1" and load.value == 0.4
    analyzer = analyzer_text({"sFlowAgents": 2, "sFlowDatagramsReceived": 10,
                              "cpuLoadProcess": 0.25}).decode()
    names = {f.name: f.samples[0].value for f in text_string_to_metric_families(analyzer)}
    assert names["sflow_analyzer_agents"] == 2 and names["sflow_analyzer_agent_count"] == 2
    assert names["sflow_analyzer_received_datagrams"] == 10


def test_flow_log_end_active_timeout_and_flow_start() -> None:
    log = FlowLog()
    spec = LogSpec("tcp", t=2.0, active_timeout=60, flow_start=False)
    for i in range(10):
        log.observe(spec, "a", "1", "k1", 100.0, 1000.0 + i * 0.5)
    log.tick(1005.0)
    assert log.records == deque_empty()  # still within the idle timeout (4 s after 1004.5)
    log.tick(1004.5 + idle_timeout(2.0) + 0.1)
    [rec] = list(log.records)
    assert rec == {"flowID": 1, "name": "tcp", "flowKeys": "k1", "value": 1000.0,
                   "start": 1000000, "end": 1004500, "agent": "a", "dataSource": "1"}
    # a long flow is written every activeTimeout seconds
    spec10 = LogSpec("tcp", t=2.0, active_timeout=10, flow_start=False)
    for i in range(25):
        log.observe(spec10, "a", "1", "k2", 1.0, 2000.0 + i)
        log.tick(2000.0 + i)
    # samples at 2000..2010 (observed before the tick at 2010), then 2011..2020
    assert [r["value"] for r in log.records][1:] == [11.0, 10.0]
    # flowStart: one record when the flow starts, none at its end
    starts = LogSpec("syn", t=2.0, active_timeout=60, flow_start=True)
    log.observe(starts, "a", "1", "k3", 5.0, 3000.0)
    log.observe(starts, "a", "1", "k3", 5.0, 3000.5)
    log.tick(3100.0)
    syn = [r for r in log.records if r["name"] == "syn"]
    assert len(syn) == 1 and syn[0]["start"] == syn[0]["end"] == 3000000 and syn[0]["value"] == 5.0
    # the cursor: newest first; after a cursor, the oldest ones after it
    # ids: 1 k1, 2-3 k2's active records, 4 syn's start, 5 k2's end (written at 3100)
    newest = log.select(-1, 2)
    assert [r["flowID"] for r in newest] == [5, 4]
    assert [r["flowID"] for r in log.select(1, 2)] == [3, 2]
    assert [r["flowID"] for r in log.select(-1, 10, name="syn")] == [4]


def deque_empty() -> object:
    from collections import deque
    return deque()


def test_flow_log_bounds_open_flows() -> None:
    log = FlowLog(max_open=3)
    spec = LogSpec("f", 2.0, 60, False)
    for i in range(5):
        log.observe(spec, "a", "1", f"k{i}", 1.0, 10.0 + i)
    assert log.open_flows == 3 and log.closed_early == 2
    assert [r["flowKeys"] for r in log.records] == ["k0", "k1"]
