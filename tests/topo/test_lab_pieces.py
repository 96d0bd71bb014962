"""The lab's pure pieces: fabric generation, the picture, settings validation, traffic CLI parsing."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from topo.fabricgen import FabricError, fabric_from_topo, main as fabric_main, seed_fabric
from topo.seed import SeedTopo, seed_links
from topo.sflowcfg import SflowConfigError, SflowSettings
from topo.traffic import build_parser, parse_rate


def test_seed_fabric_is_the_documented_one(tmp_path: Path) -> None:
    fabric = seed_fabric()
    assert fabric == {"version": 1, "static": None, "switches": [
        {"dpid": 1, "name": "s1", "role": "filter", "host_ports": [1, 2, 3, 4, 5], "uplinks": [6, 7, 8, 9, 10]},
        {"dpid": 2, "name": "s2", "role": "filter", "host_ports": [1, 2, 3, 4, 5], "uplinks": [6, 7, 8, 9, 10]},
        {"dpid": 3, "name": "s3", "role": "aggregation", "uplinks": list(range(1, 11)), "capture_port": 11}]}
    static = seed_fabric(static=True)["static"]
    assert static["switches"]["2"]["mirror_destinations"] == [7]  # not the prototype's mix-up (6)
    out = tmp_path / "fabric.json"
    assert fabric_main(["--static", "-o", str(out)]) == 0
    assert json.loads(out.read_text())["static"]["timeout"] == 120


def test_fabric_needs_the_capture_host_on_a_switch() -> None:
    with pytest.raises(FabricError, match="capture_host: 'h99'"):
        fabric_from_topo(SeedTopo(), "h99")
    with pytest.raises(FabricError, match="s1: aggregation switch also has production hosts"):
        fabric_from_topo(SeedTopo(), "h1")


def test_seed_links_are_the_prototypes_port_map() -> None:
    ports = {(l.b, l.b_port): l.a for l in seed_links() if l.a.startswith("h")}
    assert ports[("s1", 3)] == "h3" and ports[("s2", 1)] == "h6" and ports[("s3", 11)] == "h11"
    uplinks = {(l.a, l.a_port): (l.b, l.b_port) for l in seed_links() if l.a.startswith("s")}
    assert uplinks[("s1", 6)] == ("s3", 1) and uplinks[("s2", 10)] == ("s3", 10)
    assert len(uplinks) == 10


def test_sflow_settings_name_the_bad_field() -> None:
    for kwargs, field in (({"collector": "nohost"}, "collector"), ({"sampling": 0}, "sampling"),
                          ({"polling": -1}, "polling"), ({"header": 4}, "header")):
        with pytest.raises(SflowConfigError, match=f"^{field}:"):
            SflowSettings(**kwargs)
    assert SflowSettings("127.0.0.1:9").collector_port == 9


def test_traffic_rates_and_arguments() -> None:
    assert parse_rate("200M") == 200_000_000 and parse_rate("1.5k") == 1500 and parse_rate("42") == 42
    with pytest.raises(Exception, match="rate"):
        parse_rate("fast")
    args = build_parser().parse_args(["elephant", "--dst", "10.0.0.2", "--rate", "50M", "--cport", "5"])
    assert (args.rate, args.cport, args.udp) == (50_000_000, 5, False)
