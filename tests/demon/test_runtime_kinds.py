"""The new kinds through the real runtime (scripted sFlow-RT, fake controller): what
they define in the engine and what they install."""

from __future__ import annotations

import time
from datetime import datetime, timezone
from typing import Callable

import pytest

from tests.demon.fakes import Harness, wait_for

pytestmark = pytest.mark.replay

FAN_IN = """\
name: ddos
kind: fan_in
threshold: 10Mbps
min_sources: 3
interval: 1s
duration: 5s
"""
WATCH = """\
name: telnet
kind: watch_list
keys: ipsource,ipdestination,tcpsourceport,tcpdestinationport
filter: tcpdestinationport=23
interval: 1s
duration: 5s
"""


def installs(h: Harness) -> list[dict]:
    return [params for method, params in h.controller.calls if method == "install_mirror"]


def test_fan_in_defines_target_source_flows_and_mirrors_the_target(
        make: Callable[..., Harness]) -> None:
    h = make({"ddos": FAN_IN})
    assert h.engine.flows["demon_ddos"]["keys"] == "ipdestination,ipsource"
    assert "demon_ddos" not in h.engine.thresholds
    h.engine.set_flows("demon_ddos", [(f"10.0.0.2,10.1.0.{n}", 1e6, "103") for n in range(4)])
    wait_for(lambda: h.controller.mirrors, what="the fan-in's mirror")
    (params,) = installs(h)
    assert params["dpid"] == 1 and params["match"] == {"ipv4_dst": "10.0.0.2"}


def test_watch_list_taps_on_the_first_event(make: Callable[..., Harness]) -> None:
    h = make({"telnet": WATCH})
    spec = h.engine.thresholds["demon_telnet"]
    assert spec["byFlow"] is True and 0 < spec["value"] < 1
    assert h.engine.flows["demon_telnet"]["filter"] == "tcpdestinationport=23"
    h.engine.fire("demon_telnet", "10.0.0.3,10.0.0.4,40001,23", value=3.0, data_source="102")
    wait_for(lambda: h.controller.mirrors, what="the watched flow's mirror")
    assert installs(h)[0]["match"]["tcp_dst"] == 23


def test_scheduled_needs_no_engine_and_taps_its_window(make: Callable[..., Harness]) -> None:
    start = datetime.fromtimestamp(time.time() + 3, timezone.utc).isoformat()
    h = make({"nightly": f"name: nightly\nkind: scheduled\nkeys: ipsource\nflow: 10.0.0.5\n"
                         f"at: 1/5\nstart: '{start}'\nduration: 5s\nmax_duration: 5s\n"})
    assert "demon_nightly" not in h.engine.flows
    wait_for(lambda: h.controller.mirrors, timeout=5, what="the window's mirror")
    (params,) = installs(h)
    assert params["match"] == {"ipv4_src": "10.0.0.5", "in_port": 5}
    wait_for(lambda: not h.controller.mirrors, timeout=5, what="the window's end")
    assert not any(path.startswith("/activeflows/") and "nightly" in path
                   for _, path in h.engine.requests)
