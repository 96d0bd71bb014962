"""The API over the engine fed the OVS capture at its own timestamps (``now`` = pcap time):
counter rates against the counters' deltas, utilisation, link: keys from the topology,
the flow log, and every answer's shape against sFlow-RT's reference fixtures."""

from __future__ import annotations

import json
import struct
from pathlib import Path
from typing import Any, Iterator

import pytest
import requests
from prometheus_client.parser import text_string_to_metric_families

from sflow.decode import decode_datagram
from sflow.engine import Engine
from sflow.httpapi import EngineAPI
from sflow.pcap import read_udp
from sflow.webserve import BackgroundServer

from ..conftest import shared_path

CAPTURES = shared_path() / "captures"
REFERENCE = Path(__file__).resolve().parent.parent / "fixtures" / "sflowrt-reference"
ELEPHANT_PORT = "1478"  # s1-eth1, where h1's 200 Mbit/s iperf3 elephant enters s1
TCP = {"keys": "ipsource,ipdestination,tcpsourceport,tcpdestinationport", "value": "bytes"}


def _datagrams() -> list[tuple[float, bytes]]:
    path = CAPTURES / "ovs-seed-elephant.pcap"
    if not path.exists():
        pytest.skip(f"capture not found at {path}")
    return [(d.timestamp, d.payload) for d in read_udp(path)]


def with_if_speed(payload: bytes, if_index: int, speed: int) -> bytes:
    """The datagram with ``ifSpeed`` of ``if_index``'s generic interface counters (0:1)
    set to ``speed`` (the capture's veths report 10 Gbit/s)."""
    data = bytearray(payload)
    off = 8 + (4 if struct.unpack_from(">I", data, 4)[0] == 1 else 16)  # agent address
    off += 12  # sub-agent, sequence, uptime
    (count,) = struct.unpack_from(">I", data, off)
    off += 4
    for _ in range(count):
        tag, length = struct.unpack_from(">II", data, off)
        body, end = off + 8, off + 8 + length
        if tag in (2, 4):  # counter sample, compact / expanded
            rec = body + (12 if tag == 2 else 16)
            (nrec,) = struct.unpack_from(">I", data, rec - 4)
            for _ in range(nrec):
                fmt, rlen = struct.unpack_from(">II", data, rec)
                if fmt == 1 and struct.unpack_from(">I", data, rec + 8)[0] == if_index:
                    struct.pack_into(">Q", data, rec + 16, speed)  # after ifIndex, ifType
                rec += 8 + rlen
        off = end
    return bytes(data)


class Fed:
    """An engine fed the capture up to ``until`` s after its first datagram, its API served
    with the clock stopped at the last datagram fed."""

    def __init__(self, until: float | None = None, speed_1g: bool = False,
                 flows: dict[str, dict[str, Any]] | None = None,
                 topology: dict[str, Any] | None = None) -> None:
        self.engine = Engine()
        self.items = _datagrams()
        first = self.items[0][0]
        self.fed = [(ts, p) for ts, p in self.items if until is None or ts - first <= until]
        self.now = self.fed[-1][0]
        self.api = EngineAPI(self.engine, clock=lambda: self.now)
        self.server = BackgroundServer(self.api.app, "127.0.0.1", 0, name="test").start()
        self.url = self.server.url
        if topology is not None:
            assert requests.put(self.url + "/topology/json", data=json.dumps(topology),
                                timeout=5).status_code == 204
        for name, body in (flows or {}).items():
            resp = requests.put(f"{self.url}/flow/{name}/json", data=json.dumps(body), timeout=5)
            assert resp.status_code == 204, resp.text
        with self.engine.lock:
            for ts, payload in self.fed:
                if speed_1g:
                    payload = with_if_speed(payload, int(ELEPHANT_PORT), 1_000_000_000)
                self.engine.receive(payload, ts, "127.0.0.1")
                self.engine.tick(ts)

    def get(self, path: str) -> Any:
        resp = requests.get(self.url + path, timeout=10)
        assert resp.status_code == 200, (path, resp.status_code, resp.text)
        return resp.json() if "json" in resp.headers["Content-Type"] else resp.text

    def stop(self) -> None:
        self.server.stop()


@pytest.fixture
def mid_elephant() -> Iterator[Fed]:
    fed = Fed(until=6.0, flows={"tcp": TCP, "total": {"value": "bytes"}})
    yield fed
    fed.stop()


def _last_two(fed: Fed, if_index: int) -> tuple[tuple[float, dict], tuple[float, dict]]:
    seen = []
    for ts, payload in fed.fed:
        for cs in decode_datagram(payload).counter_samples:
            if cs.source_class == 0 and cs.source_index == if_index:
                seen.append((ts, cs.record(0, 1).fields))
    return seen[-2], seen[-1]


def test_counter_rates_agree_with_the_counters_deltas(mid_elephant: Fed) -> None:
    (t0, before), (t1, after) = _last_two(mid_elephant, int(ELEPHANT_PORT))
    dt = t1 - t0
    dump = mid_elephant.get(f"/dump/127.0.0.1/{ELEPHANT_PORT}.ifinoctets,"
                            f"{ELEPHANT_PORT}.ifoutoctets,{ELEPHANT_PORT}.ifinucastpkts/json")
    got = {m["metricName"]: m["metricValue"] for m in dump}
    assert got["ifinoctets"] == pytest.approx((after["ifInOctets"] - before["ifInOctets"]) / dt)
    assert got["ifoutoctets"] == pytest.approx((after["ifOutOctets"] - before["ifOutOctets"]) / dt)
    assert got["ifinucastpkts"] == pytest.approx(
        (after["ifInUcastPkts"] - before["ifInUcastPkts"]) / dt)
    # the elephant: 200 Mbit/s = 25 MB/s into s1-eth1 (±10 %: iperf3's own pacing)
    assert 22e6 < got["ifinoctets"] < 28e6
    # the capture's veths say 10 Gbit/s: 200 Mbit/s is ~2 %
    util = mid_elephant.get(f"/metric/127.0.0.1/{ELEPHANT_PORT}.ifinutilization/json")[0]
    assert util["metricValue"] == pytest.approx(got["ifinoctets"] * 8 / 10e9 * 100)


def test_ifinutilization_of_the_elephant_on_a_1g_link_is_about_20_percent() -> None:
    fed = Fed(until=6.0, speed_1g=True)
    try:
        stat = fed.get("/metric/ALL/max:ifinutilization/json")[0]
        # the busiest port of the fabric is the elephant's, at ~20 % of 1 Gbit/s
        assert stat["agent"] == "127.0.0.1" and stat["dataSource"] == ELEPHANT_PORT
        assert 17.5 < stat["metricValue"] < 22.5
        filtered = fed.get("/metric/ALL/ifinutilization,sum:ifspeed/json?ifspeed=1000000000")
        assert filtered[0]["metricN"] == 1 and filtered[1]["metricValue"] == 1e9
        text = fed.get("/prometheus/metrics/ALL/ifinutilization,ifoututilization,ifinerrors,"
                       "ifouterrors,ifindiscards,ifoutdiscards/txt")
        families = {f.name: f for f in text_string_to_metric_families(text)}
        sample = next(s for s in families["sflow_ifinutilization"].samples
                      if s.labels["datasource"] == ELEPHANT_PORT)
        assert sample.labels["agent"] == "127.0.0.1" and sample.labels["ifname"] == "s1-eth1"
        assert 17.5 < sample.value < 22.5
        assert {"sflow_ifoututilization", "sflow_ifinerrors", "sflow_ifindiscards"} <= set(families)
    finally:
        fed.stop()


def test_flows_as_metrics_tables_and_totals(mid_elephant: Fed) -> None:
    top = mid_elephant.get("/table/ALL/sort:total:-2,ifname/json")
    assert top[0][0]["dataSource"] == ELEPHANT_PORT and top[0][1]["metricValue"] == "s1-eth1"
    assert 20e6 < top[0][0]["metricValue"] < 30e6  # the keyless flow: all bytes/s at that port
    stat = mid_elephant.get("/metric/ALL/tcp/json")[0]
    assert stat["topKeys"][0]["key"] == "10.0.0.1,10.0.0.2,51792,5201"
    names = mid_elephant.get("/metrics/json")
    assert {"ifinoctets", "ifinutilization", "ifname", "tcp", "total"} <= set(names)
    per_agent = mid_elephant.get("/metric/127.0.0.1/json")
    assert per_agent[f"{ELEPHANT_PORT}.ifname"] == "s1-eth1"
    assert requests.get(mid_elephant.url + "/metric/10.9.9.9/json", timeout=5).status_code == 404
    where = mid_elephant.get("/flowlocations/ALL/tcp/json?key=10.0.0.1,10.0.0.2,51792,5201")
    assert where[0]["dataSource"] == ELEPHANT_PORT
    value = mid_elephant.get(f"/flowvalue/127.0.0.1/{ELEPHANT_PORT}.tcp/json"
                             "?key=10.0.0.1,10.0.0.2,51792,5201")
    assert value["value"] == pytest.approx(where[0]["value"])


def seed_topology(hosts_as_links: bool = False) -> dict[str, Any]:
    """The capture's ``.topo.json`` as an sFlow-RT topology: s1, s2, s3 (one agent,
    127.0.0.1), uplinks s1-eth6..10 <-> s3-eth1..5 and s2-eth6..10 <-> s3-eth6..10;
    ``hosts_as_links`` adds h1-s1 and h2-s1 as links (host nodes without an agent)."""
    path = CAPTURES / "ovs-seed-elephant.topo.json"
    if not path.exists():
        pytest.skip(f"topology not found at {path}")
    ports = json.loads(path.read_text())["switch_ports"]
    nodes: dict[str, Any] = {}
    for name, port in ports.items():
        node = name.split("-")[0]
        nodes.setdefault(node, {"agent": "127.0.0.1", "ports": {}})["ports"][name] = {
            "ifindex": str(port["ifindex"]), "ofport": str(port["ofport"])}
    links = {}
    for i in range(1, 6):
        links[f"s1-s3-{i}"] = {"node1": "s1", "port1": f"s1-eth{5 + i}",
                               "node2": "s3", "port2": f"s3-eth{i}"}
        links[f"s2-s3-{i}"] = {"node1": "s2", "port1": f"s2-eth{5 + i}",
                               "node2": "s3", "port2": f"s3-eth{5 + i}"}
    if hosts_as_links:
        links["h1-s1"] = {"node1": "h1", "port1": "h1-eth0", "node2": "s1", "port2": "s1-eth1"}
        links["h2-s1"] = {"node1": "h2", "port1": "h2-eth0", "node2": "s1", "port2": "s1-eth2"}
    return {"nodes": nodes, "links": links}


def test_topology_makes_link_keys_name_the_right_link() -> None:
    flows = {"bylink": {"keys": "null:[link:inputifindex]:edge,node:inputifindex,ipsource,"
                                "ipdestination", "value": "bytes"},
             "pair": {"keys": "ipsource,ipdestination", "value": "bytes"}}
    fed = Fed(until=6.0, flows=flows, topology=seed_topology(hosts_as_links=True))
    try:
        keys = {f["key"]: f for f in fed.get("/activeflows/ALL/bylink/json")}
        assert "h1-s1,s1,10.0.0.1,10.0.0.2" in keys  # the elephant enters through h1-s1
        assert "h2-s1,s1,10.0.0.2,10.0.0.1" in keys  # its ACKs through h2-s1
        assert "edge,s2,10.0.0.6,10.0.0.7" in keys    # the mouse: an edge port of s2
        # h1-s1 makes s1-eth1 a core port: EDGE and aggMode=edge leave it out, CORE keeps it
        edge = {f["key"] for f in fed.get("/activeflows/EDGE/pair/json")}
        core = {f["key"] for f in fed.get("/activeflows/ALL/pair/json?aggMode=core")}
        assert "10.0.0.1,10.0.0.2" in core and "10.0.0.1,10.0.0.2" not in edge
        assert "10.0.0.6,10.0.0.7" in edge and "10.0.0.6,10.0.0.7" not in core
        # the seed's own topology: every host port is an edge port
        assert requests.put(fed.url + "/topology/json", data=json.dumps(seed_topology()),
                            timeout=5).status_code == 204
        assert fed.get("/activeflows/ALL/pair/json?aggMode=core") == []
        edge = fed.get("/activeflows/TOPOLOGY/pair/json?aggMode=edge")
        assert edge[0]["key"] == "10.0.0.1,10.0.0.2" and edge[0]["dataSource"] == ELEPHANT_PORT
    finally:
        fed.stop()


def test_flow_log_writes_the_elephant_once_it_ends() -> None:
    fed = Fed(flows={"logged": {**TCP, "log": True}, "starts": {**TCP, "log": True,
                                                                "flowStart": True}})
    try:
        with fed.engine.lock:
            fed.engine.tick(fed.now + 30)  # everything has ended by then
        records = fed.get("/flows/json?name=logged&maxFlows=100")
        elephant = next(r for r in records if r["flowKeys"] == "10.0.0.1,10.0.0.2,51792,5201")
        # iperf3 sent 200,015,872 bytes; the sampled estimate is within ~6 % (1,359 samples)
        assert 0.9 * 200_015_872 < elephant["value"] < 1.1 * 200_015_872
        assert 7000 < elephant["end"] - elephant["start"] < 9000  # ms: the ~8 s it ran
        assert elephant["dataSource"] == ELEPHANT_PORT and elephant["agent"] == "127.0.0.1"
        starts = fed.get("/flows/json?name=starts")
        first = next(r for r in starts if r["flowKeys"] == "10.0.0.1,10.0.0.2,51792,5201")
        assert first["start"] == first["end"] <= elephant["start"] + 1
        newest = records[0]["flowID"]
        assert fed.get(f"/flows/json?flowID={newest}&timeout=0.2") == []
    finally:
        fed.stop()


# --- shapes against the reference fixtures -----------------------------------------------

def _reference(name: str) -> Any:
    return json.loads((REFERENCE / name).read_text())


def _same_shape(ours: dict[str, Any], reference: dict[str, Any], where: str) -> None:
    assert set(reference) <= set(ours), f"{where}: missing {set(reference) - set(ours)}"
    for field, value in reference.items():
        number = (int, float)
        if isinstance(value, bool):
            assert isinstance(ours[field], bool), (where, field)
        elif isinstance(value, number):
            assert isinstance(ours[field], number) and not isinstance(ours[field], bool), (where, field)
        else:
            assert isinstance(ours[field], type(value)), (where, field, ours[field])


def test_answers_have_the_reference_shapes(mid_elephant: Fed) -> None:
    fed = mid_elephant
    _same_shape(fed.get("/metric/ALL/max:ifinoctets/json")[0],
                _reference("statistic_max.json")["body"][0], "Statistic max")
    summary = fed.get("/metric/ALL/med:ifinoctets/json")[0]
    assert set(summary) == set(_reference("statistic_summary.json")["body"][0])
    _same_shape(summary, _reference("statistic_summary.json")["body"][0], "Statistic med")
    _same_shape(fed.get("/dump/ALL/ifinoctets/json")[0], _reference("metric.json")["body"][0],
                "Metric")
    _same_shape(fed.get("/table/ALL/ifinoctets/json")[0][0], _reference("metric.json")["body"][0],
                "table cell")
    _same_shape(fed.get("/activeflows/ALL/tcp/json")[0], _reference("activeflow.json")["body"][0],
                "activeflow")
    analyzer = fed.get("/analyzer/json")
    kinds = {"number": (int, float), "string": str, "boolean": bool}
    for field, kind in _reference("analyzer_fields.json")["fields"].items():
        assert isinstance(analyzer[field], kinds[kind]), field
    assert 0 <= analyzer["cpuLoadProcess"] <= 1 and 0 < analyzer["heapUsed"] <= analyzer["heapMax"]
    # Prometheus: the reference line parses to the same family/label layout as ours
    ref = list(text_string_to_metric_families(
        (REFERENCE / "prometheus_metrics.txt").read_text()))[0].samples[0]
    ours = list(text_string_to_metric_families(
        fed.get("/prometheus/metrics/ALL/ifinoctets/txt")))[0].samples[0]
    assert ref.name.startswith("sflow_") and ours.name == "sflow_ifinoctets"
    assert {"agent", "datasource"} <= set(ref.labels) & set(ours.labels)
    ref_an = list(text_string_to_metric_families(
        (REFERENCE / "prometheus_analyzer.txt").read_text()))[0].samples[0]
    ours_an = {s.name: s.value for f in text_string_to_metric_families(
        fed.get("/prometheus/analyzer/txt")) for s in f.samples}
    assert ref_an.name in ours_an and ours_an[ref_an.name] == 1.0
    agents_ref = shared_path() / "corpus" / "sflowrt-json" / "agents_json_sflow-rt-2.0-r1180.json"
    if agents_ref.exists():
        real = next(iter(json.loads(agents_ref.read_text()).values()))
        _same_shape(fed.get("/agents/json")["127.0.0.1"], real, "agents")


def test_definitions_topology_groups_maps_echo_the_reference_bodies(mid_elephant: Fed) -> None:
    url = mid_elephant.url
    for name in ("topology_leaf_spine.json", "topology_mininet_helper.json"):
        body = _reference(name)["body"]
        assert requests.put(url + "/topology/json", data=json.dumps(body), timeout=5).status_code == 204
        assert mid_elephant.get("/topology/json") == body
    for kind, name in (("group", "group.json"), ("map", "map.json")):
        body = _reference(name)["body"]
        assert requests.put(f"{url}/{kind}/ref/json", data=json.dumps(body),
                            timeout=5).status_code == 204
        assert mid_elephant.get(f"/{kind}/ref/json") == body
    flow = {**TCP, "log": True, "flowStart": False, "activeTimeout": 10}
    assert requests.put(url + "/flow/logged/json", data=json.dumps(flow), timeout=5).status_code == 204
    echo = mid_elephant.get("/flow/logged/json")
    assert echo["log"] is True and echo["activeTimeout"] == 10 and echo["fs"] == ","
