"""contrib/grafana/pytapdemon.json: a dashboard Grafana can import, whose every
query names metrics the components really export (scraped in process here; the
lab test scrapes the running ones, tests/topo/test_see_it_lab.py)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Iterator

import pytest
import responses
from prometheus_client import generate_latest

from tests.metricnames import GRAFANA, exported, grouping_labels, names_in, panels, queries

pytestmark = pytest.mark.replay


def test_the_dashboard_is_importable_json() -> None:
    dashboard = json.loads(GRAFANA.read_text())
    assert dashboard["uid"] == "pytapdemon" and dashboard["title"] and dashboard["schemaVersion"] >= 36
    ids = [p["id"] for p in panels(dashboard)]
    assert len(ids) == len(set(ids))
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource" and variables["datasource"]["query"] == "prometheus"
    for p in panels(dashboard):
        pos = p["gridPos"]
        assert 0 <= pos["x"] and pos["x"] + pos["w"] <= 24 and pos["h"] > 0, p["title"]
        if p["type"] == "row":
            continue
        assert p["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, p["title"]
        assert p["targets"] and all(t["expr"] and t["refId"] for t in p["targets"]), p["title"]
    parts = {name.split("_")[1] for _, expr, _ in queries() for name in names_in(expr)}
    assert parts == {"daemon", "engine", "controller", "capture"}


def _daemon_exposition(tmp: Path) -> str:
    from tests.dashboard.harness import Daemon

    with responses.RequestsMock(assert_all_requests_are_fired=False) as mock:
        mock.add_passthru("http://127.0.0.1")
        d = Daemon(tmp, mock).start()
        try:
            d.elephant()  # transitions, RPC calls and their latency
            return d.runtime.render_metrics()[0].decode()
        finally:
            d.stop()


def _engine_exposition() -> str:
    from sflow.engine import Engine

    engine = Engine()
    try:  # the engine's HTTP layer adds its request counter to the same registry
        from sflow.httpapi import EngineAPI  # type: ignore[attr-defined]

        EngineAPI(engine)
    except (ImportError, TypeError):
        pass
    return generate_latest(engine.metrics_registry).decode()


def _capture_exposition(tmp: Path) -> str:
    from demon.capture.filer import CaptureAgent
    from demon.capture.metrics import registry_for
    from demon.capture.taptable import TapTable

    agent = CaptureAgent(tmp / "capture", TapTable([]))
    return generate_latest(registry_for(agent, lambda: {"kernel_drops": 0, "kernel_packets": 0})).decode()


def _controller_exposition() -> str:
    """The controller's collector over the mirror book's harness (fake switches)."""
    from demon.controller import metrics
    from demon.rpc.server import RpcServer
    from tests.demon.controller.bookharness import FLOW, Harness, packet

    h = Harness("1.3")
    with RpcServer("tcp:127.0.0.1:0", "t" * 16, h.service) as server:
        h.install("a", FLOW, idle_timeout=2)
        h.tables[1].send(packet(), 3)
        h.advance(3)  # idles out: a flow-removed
        return generate_latest(metrics.registry_for(h.service, server)).decode()


@pytest.fixture(scope="module")
def exports(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, dict[str, set[str]]]]:
    tmp = tmp_path_factory.mktemp("grafana")
    yield {"daemon": exported(_daemon_exposition(tmp)), "engine": exported(_engine_exposition()),
           "capture": exported(_capture_exposition(tmp)),
           "controller": exported(_controller_exposition())}


def test_every_metric_the_dashboard_queries_is_exported(exports: dict[str, dict[str, set[str]]]) -> None:
    missing = []
    for title, expr, _ in queries():
        for name in names_in(expr):
            part = name.split("_")[1]
            if name not in exports[part]:
                missing.append((title, name))
    assert not missing, missing


def test_the_labels_the_dashboard_groups_by_are_on_those_metrics(exports: dict[str, dict[str, set[str]]]) -> None:
    """Where the in-process components have samples: every ``by (...)`` label and
    ``{{label}}`` of a legend is carried by a metric of the query."""
    wrong = []
    for title, expr, legend in queries():
        carried: set[str] = set()
        sampled = False
        for name in names_in(expr):
            labels = exports[name.split("_")[1]].get(name, set())
            sampled |= bool(labels)
            carried |= labels
        want = grouping_labels(expr, legend)
        if sampled and not want <= carried:
            wrong.append((title, sorted(want - carried)))
    assert not wrong, wrong
