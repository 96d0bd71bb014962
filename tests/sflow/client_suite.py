"""One client suite, two engines.

The ``test_*`` functions here are imported by ``test_client_recorded.py``
(recorded JSON served by ``responses``) and ``test_client_live.py`` (the
embedded engine fed by replaying an OVS capture over loopback UDP). Each module
provides the ``sflowrt`` fixture, an :class:`EngineHarness`; the test asks it for
a scenario (the fixture directory ``tests/fixtures/sflowrt/<scenario>/`` in the
recorded case) and for the things only a live engine needs (traffic, waiting, an
outage, a restart), which are no-ops when the answers are recorded.

The recorded fixtures are made by running the live module with
``DEMON_RECORD_FIXTURES=1``: every scenario's exchanges are written as numbered
files, so both runs make the very same requests.
"""

from __future__ import annotations

import json
import re
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any, Protocol

import pytest

from sflow.client import (
    EngineUnreachable,
    EventStream,
    NotFound,
    ReadOnly,
    Rejected,
    SFlowRTClient,
)

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures" / "sflowrt"
CAPTURE = "ovs-seed-elephant.pcap"
TOPOLOGY = "ovs-seed-elephant.topo.json"

#: Ground truth of the capture (captures/README.md): the iperf3 elephant.
ELEPHANT = ["10.0.0.1", "10.0.0.2", "51792", "5201"]
ELEPHANT_BYTES_PER_S = 200e6 / 8
#: Flow and threshold definitions the scenarios use (InMon's elephant recipe).
TCP_FLOW = {"keys": "ipsource,ipdestination,tcpsourceport,tcpdestinationport",
            "value": "bytes", "t": 2}
#: Short smoothing so a flow's rate falls quickly once its traffic stops.
QUICK_FLOW = {"keys": "ipsource,ipdestination,tcpsourceport,tcpdestinationport",
              "value": "bytes", "t": 0.5}
PAIR_FLOW = {"keys": "ipsource,ipdestination", "value": "bytes", "t": 0.5}
#: Client settings both harnesses use, so a recording has the very same attempts.
RETRIES = 2
BACKOFF = 0.05


def make_client(url: str, **kwargs: Any) -> SFlowRTClient:
    return SFlowRTClient(url, timeout=5.0, retries=RETRIES, backoff=BACKOFF, **kwargs)


#: 1 Mbit/s: crossed by the elephant (200 Mbit/s), its ACKs (~3.5 Mbit/s) and the mouse.
LOW_BYTES_PER_S = 125_000


class EngineHarness(Protocol):
    """What a suite test needs from an engine; see the module docstring."""

    kind: str  # "recorded" or "live"

    def scenario(self, name: str) -> SFlowRTClient:
        """Start scenario ``name``; the client to use for it."""

    def traffic(self, speed: float = 1.0) -> AbstractContextManager[None]:
        """Replay the capture into the engine while the block runs (and to its end)."""

    def sleep(self, seconds: float) -> None:
        """Let the engine's clock run (live only)."""

    def outage(self) -> None:
        """Make the engine unreachable (connections refused), keeping its state."""

    def restore(self) -> None:
        """End :meth:`outage`: the same engine answers again on the same URL."""

    def restart_engine(self) -> None:
        """Replace the engine by a fresh one (empty state) on the same URL."""

    def readonly_scenario(self, name: str) -> SFlowRTClient:
        """Like :meth:`scenario`, against an engine running read-only (or skip)."""


def capture_datagrams(captures_dir: Path) -> int:
    """sFlow datagrams in the capture (UDP to port 6343)."""
    import dpkt

    count = 0
    with open(captures_dir / CAPTURE, "rb") as handle:
        for _ts, frame in dpkt.pcap.Reader(handle):
            ip = dpkt.ethernet.Ethernet(frame).data
            if isinstance(getattr(ip, "data", None), dpkt.udp.UDP) and ip.data.dport == 6343:
                count += 1
    return count


# -- definitions ---------------------------------------------------------------

def test_version(sflowrt: EngineHarness) -> None:
    client = sflowrt.scenario("version")
    assert re.fullmatch(r"\d+\.\d+-r?\d+", client.version())


def test_flow_define_get_delete(sflowrt: EngineHarness) -> None:
    client = sflowrt.scenario("flow_lifecycle")
    name = "demon_suite_tcp"
    client.delete_flow(name)
    assert client.get_flow(name) is None
    client.define_flow(name, TCP_FLOW)
    stored = client.get_flow(name)
    assert stored is not None
    assert {k: stored[k] for k in TCP_FLOW} == TCP_FLOW
    assert stored["fs"] == ","  # defaults are echoed (InMon clients read them)
    assert name in client.flows()
    client.delete_flow(name)
    assert client.get_flow(name) is None
    assert name not in client.flows()
    client.delete_flow(name)  # deleting an absent flow is fine


def test_threshold_define_get_delete(sflowrt: EngineHarness) -> None:
    client = sflowrt.scenario("threshold_lifecycle")
    client.define_flow("demon_suite_tcp", TCP_FLOW)
    spec = {"metric": "demon_suite_tcp", "value": LOW_BYTES_PER_S, "byFlow": True, "timeout": 2}
    client.define_threshold("demon_suite_elephant", spec)
    stored = client.get_threshold("demon_suite_elephant")
    assert stored is not None and {k: stored[k] for k in spec} == spec
    assert "demon_suite_elephant" in client.thresholds()
    client.delete_threshold("demon_suite_elephant")
    assert client.get_threshold("demon_suite_elephant") is None
    client.delete_threshold("demon_suite_elephant")
    client.delete_flow("demon_suite_tcp")


def test_bad_definition_is_rejected_with_reason(sflowrt: EngineHarness) -> None:
    client = sflowrt.scenario("rejected")
    with pytest.raises(Rejected) as info:
        client.define_threshold("demon_suite_bad", {"value": LOW_BYTES_PER_S})  # no metric
    assert info.value.message.strip()
    assert client.get_threshold("demon_suite_bad") is None


def test_unknown_names(sflowrt: EngineHarness) -> None:
    client = sflowrt.scenario("not_found")
    assert client.get_flow("demon_suite_absent") is None
    assert client.get_threshold("demon_suite_absent") is None
    with pytest.raises(NotFound):
        client.activeflows("demon_suite_absent")
    client.delete_flow("demon_suite_absent")


def test_read_only_engine_refuses_writes(sflowrt: EngineHarness) -> None:
    client = sflowrt.readonly_scenario("readonly")
    assert client.version()
    with pytest.raises(ReadOnly):
        client.define_flow("demon_suite_tcp", TCP_FLOW)
    with pytest.raises(ReadOnly):
        client.delete_threshold("demon_suite_elephant")


# -- analytics -----------------------------------------------------------------

def test_top_active_flow_is_the_elephant(sflowrt: EngineHarness, captures_dir: Path) -> None:
    client = sflowrt.scenario("elephant_basic")
    client.define_flow("demon_suite_tcp", TCP_FLOW)
    with sflowrt.traffic(speed=1.0):
        sflowrt.sleep(6.0)  # the EWMA (t = 2 s) has settled on the elephant's rate
        flows = client.activeflows("demon_suite_tcp", max_flows=10)
    assert flows, "no active flows"
    top = flows[0]
    assert top.keys == ELEPHANT
    assert top.key == ",".join(ELEPHANT)
    # 200 Mbit/s, estimated from 1-in-100 samples: well within ±40 %
    assert 0.6 * ELEPHANT_BYTES_PER_S < top.value < 1.4 * ELEPHANT_BYTES_PER_S
    assert [f.value for f in flows] == sorted((f.value for f in flows), reverse=True)
    # sampled where it enters: s1-eth1 (h1), by the agent address inside the datagrams
    topo = json.loads((captures_dir / TOPOLOGY).read_text())
    assert top.agent == "127.0.0.1"
    assert top.data_source == str(topo["switch_ports"]["s1-eth1"]["ifindex"])


def test_events_cursor(sflowrt: EngineHarness) -> None:
    client = sflowrt.scenario("events_cursor")
    client.define_flow("demon_suite_tcp", QUICK_FLOW)
    client.define_threshold("demon_suite_elephant", {"metric": "demon_suite_tcp",
                                                     "value": LOW_BYTES_PER_S, "byFlow": True})
    with sflowrt.traffic(speed=4.0):
        pass
    sflowrt.sleep(1.5)
    events = client.events(threshold_id="demon_suite_elephant")
    assert events, "no threshold event for the elephant"
    ids = [e.event_id for e in events]
    assert ids == sorted(set(ids))  # oldest first, each once
    assert all(e.threshold_id == "demon_suite_elephant" and e.metric == "demon_suite_tcp"
               for e in events)
    assert all(e.value > e.threshold == LOW_BYTES_PER_S for e in events)
    assert ",".join(ELEPHANT) in {e.flow_key for e in events}
    assert client.events(event_id=ids[-1], threshold_id="demon_suite_elephant") == []
    after_first = client.events(event_id=ids[0], threshold_id="demon_suite_elephant")
    assert [e.event_id for e in after_first] == ids[1:]


def _collect(stream: EventStream, polls: int) -> list[int]:
    got: list[int] = []
    for _ in range(polls):
        got += [e.event_id for e in stream.poll()]
    return got


def test_event_stream_survives_an_outage(sflowrt: EngineHarness) -> None:
    client = sflowrt.scenario("engine_outage")
    client.define_flow("demon_suite_tcp", QUICK_FLOW)
    client.define_threshold("demon_suite_tcp", {"metric": "demon_suite_tcp",
                                                "value": LOW_BYTES_PER_S, "byFlow": True})
    stream = EventStream(client, max_events=100, poll_timeout=0)
    with sflowrt.traffic(speed=4.0):
        pass
    sflowrt.sleep(1.5)
    before = _collect(stream, 1)
    assert before, "no events before the outage"
    # a second flow that sees only the traffic sent while the client is cut off
    client.define_flow("demon_suite_pairs", PAIR_FLOW)
    client.define_threshold("demon_suite_pairs", {"metric": "demon_suite_pairs",
                                                  "value": LOW_BYTES_PER_S, "byFlow": True})
    sflowrt.outage()
    with pytest.raises(EngineUnreachable):
        stream.poll()
    with sflowrt.traffic(speed=4.0):
        pass
    sflowrt.sleep(1.5)
    with pytest.raises(EngineUnreachable):
        stream.poll()
    sflowrt.restore()
    after = _collect(stream, 2)
    assert after, "no events delivered after the outage"
    assert stream.restarts == 0
    everything = [e.event_id for e in client.events(max_events=1000)]
    assert before + after == everything  # nothing lost, nothing twice, in order
    pair_events = client.events(threshold_id="demon_suite_pairs", max_events=1000)
    assert pair_events and {e.event_id for e in pair_events} <= set(after)


def test_event_stream_follows_an_engine_restart(sflowrt: EngineHarness) -> None:
    client = sflowrt.scenario("engine_restart")

    def define() -> None:
        client.define_flow("demon_suite_tcp", QUICK_FLOW)
        client.define_threshold("demon_suite_elephant", {"metric": "demon_suite_tcp",
                                                         "value": LOW_BYTES_PER_S,
                                                         "byFlow": True})

    define()
    stream = EventStream(client, threshold_id="demon_suite_elephant", poll_timeout=0,
                         on_restart=define)
    with sflowrt.traffic(speed=4.0):
        pass
    sflowrt.sleep(1.5)
    first_life = [e.event_id for e in stream.poll()]
    assert first_life
    sflowrt.outage()
    with pytest.raises(EngineUnreachable):
        stream.poll()
    sflowrt.restart_engine()
    sflowrt.restore()
    # the daemon re-asserts its definitions (they died with the engine); traffic goes on
    define()
    with sflowrt.traffic(speed=4.0):
        pass
    sflowrt.sleep(1.5)
    second_life = _collect(stream, 3)
    assert stream.restarts == 1
    new_engine = [e.event_id for e in client.events(threshold_id="demon_suite_elephant",
                                                    max_events=1000)]
    assert second_life == new_engine  # all of the new engine's events, once each
    assert stream.last_event_id == new_engine[-1]


def test_agents(sflowrt: EngineHarness, captures_dir: Path) -> None:
    client = sflowrt.scenario("agents")
    with sflowrt.traffic(speed=8.0):
        pass
    agents = client.agents()
    assert set(agents) == {"127.0.0.1"}
    sent = capture_datagrams(captures_dir)
    assert agents["127.0.0.1"]["sFlowDatagramsReceived"] == sent
    analyzer = client.analyzer()  # fields sFlow-RT's own UI reads
    assert analyzer["sFlowDatagramsReceived"] == sent and analyzer["sFlowAgents"] == 1


def test_port_map_matches_the_capture_topology(sflowrt: EngineHarness,
                                               captures_dir: Path) -> None:
    client = sflowrt.scenario("port_map")
    with sflowrt.traffic(speed=8.0):
        pass
    topo = json.loads((captures_dir / TOPOLOGY).read_text())
    expected = {name: (port["ifindex"], int(name.split("-")[0][1:]), port["ofport"])
                for name, port in topo["switch_ports"].items()}
    entries = client.port_map()
    assert {e.agent for e in entries} == {"127.0.0.1"}
    assert {e.name: (e.if_index, e.dpid, e.of_port) for e in entries} == expected
