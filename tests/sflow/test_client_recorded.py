"""The client suite against recorded engine answers (``tests/fixtures/sflowrt/``),
plus real sFlow-RT bodies from the shared corpus."""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Iterator

import pytest
import responses

from sflow.client import SFlowRTClient, Unsupported
from sflow.recorder import load_recording, register_recording

from .client_suite import (  # noqa: F401 (collected by pytest)
    FIXTURES,
    make_client,
    test_agents,
    test_bad_definition_is_rejected_with_reason,
    test_event_stream_follows_an_engine_restart,
    test_event_stream_survives_an_outage,
    test_events_cursor,
    test_flow_define_get_delete,
    test_port_map_matches_the_capture_topology,
    test_read_only_engine_refuses_writes,
    test_threshold_define_get_delete,
    test_top_active_flow_is_the_elephant,
    test_unknown_names,
    test_version,
)

pytestmark = pytest.mark.replay

BASE = "http://sflowrt.recorded:8008"


class RecordedEngine:
    """Serves a scenario's recorded exchanges; everything live is a no-op.

    Every recorded exchange must be asked for (``assert_all_requests_are_fired``),
    and a request the recording does not hold fails the test.
    """

    kind = "recorded"

    def __init__(self) -> None:
        self.mock: responses.RequestsMock | None = None

    def scenario(self, name: str) -> SFlowRTClient:
        directory = FIXTURES / name
        if not directory.is_dir():
            pytest.fail(f"no recorded scenario {directory}")
        self.mock = responses.RequestsMock(assert_all_requests_are_fired=True)
        self.mock.start()
        register_recording(self.mock, load_recording(directory), BASE)
        return make_client(BASE, sleep=lambda _s: None)

    readonly_scenario = scenario

    def traffic(self, speed: float = 1.0) -> contextlib.AbstractContextManager[None]:
        return contextlib.nullcontext()

    def sleep(self, seconds: float) -> None:
        pass

    def outage(self) -> None:
        pass

    def restore(self) -> None:
        pass

    def restart_engine(self) -> None:
        pass

    def close(self, passed: bool) -> None:
        if self.mock is not None:
            self.mock.stop(allow_assert=passed)
            self.mock.reset()


@pytest.fixture
def sflowrt(request: pytest.FixtureRequest) -> Iterator[RecordedEngine]:
    engine = RecordedEngine()
    failed_before = request.session.testsfailed
    yield engine
    # unused recorded exchanges are an error, unless the test already failed
    engine.close(passed=request.session.testsfailed == failed_before)


def test_every_fixture_scenario_is_used() -> None:
    used = {"version", "flow_lifecycle", "threshold_lifecycle", "rejected", "not_found",
            "readonly", "elephant_basic", "events_cursor", "engine_outage", "engine_restart",
            "agents", "port_map"}
    assert {p.name for p in FIXTURES.iterdir() if p.is_dir()} == used


# -- real sFlow-RT answers (shared corpus, read in place) -------------------------

@pytest.fixture
def sflowrt_json(corpus_dir: Path) -> Path:
    path = corpus_dir / "sflowrt-json"
    if not path.is_dir():
        pytest.skip(f"no sFlow-RT JSON corpus at {path}")
    return path


@responses.activate
def test_real_sflowrt_version_and_agents(sflowrt_json: Path) -> None:
    version = (sflowrt_json / "version_sflow-rt-2.0-r1180.txt").read_text()
    responses.add("GET", BASE + "/version", body=version, content_type="text/plain")
    responses.add("GET", BASE + "/agents/json",
                  body=(sflowrt_json / "agents_json_sflow-rt-2.0-r1180.json").read_text(),
                  content_type="application/json")
    client = make_client(BASE)
    assert client.version() == version.strip()
    agents = client.agents()
    assert agents["192.168.199.148"]["sFlowDatagramsReceived"] == 441
    assert agents["192.168.199.148"]["sFlowDatagramSource"] == ["192.168.199.148"]


@responses.activate
def test_real_sflowrt_topology_without_ports_is_unsupported(sflowrt_json: Path) -> None:
    # a real sFlow-RT has no /demon/portmap/json; its fabric-view topology names
    # links but no port ifindexes, so nothing maps sFlow data sources to ports
    responses.add("GET", BASE + "/demon/portmap/json", status=404)
    responses.add("GET", BASE + "/topology/json",
                  body=(sflowrt_json / "fabric-view_demo_topology.json").read_text(),
                  content_type="application/json")
    with pytest.raises(Unsupported):
        make_client(BASE).port_map()
