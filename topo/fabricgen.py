"""The fabric description (docs/fabric.md) generated from a lab topology.

Roles come from the cabling: the switch the capture host hangs off is the
aggregation switch (its switch-facing ports are uplinks, the capture host's port
is ``capture_port``); every other switch with hosts is a filter switch (host
ports, and switch-facing ports as uplinks).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable, Mapping

from topo.seed import PortLink

if TYPE_CHECKING:
    from mininet.topo import Topo

FABRIC_VERSION = 1

# The 2013 prototype's static mode as its mirrorPorts.txt meant it (baseline §1.4: s1 mirrors
# port 1 to uplink 6, s2 port 2 to uplink 7; the prototype's bug sent s2's copies to 6).
PROTOTYPE_STATIC: dict[str, Any] = {
    "timeout": 120,
    "switches": {
        "1": {"pairs": [[1, 2], [3, 4]], "mirror_sources": [1], "mirror_destinations": [6]},
        "2": {"pairs": [[1, 2]], "mirror_sources": [2], "mirror_destinations": [7]},
        "3": {"to_capture": list(range(1, 11)), "capture_port": 11},
    },
}


class FabricError(ValueError):
    """The topology cannot be described as filter + aggregation switches."""


def _ports(topo: Topo) -> dict[str, list[tuple[int, str]]]:
    """switch name -> [(its port, the node on the other end)] of a Mininet Topo."""
    ports: dict[str, list[tuple[int, str]]] = {sw: [] for sw in topo.switches()}
    for a, b, info in topo.links(withInfo=True):
        for near, far, port_key in ((a, b, "port1"), (b, a, "port2")):
            if near in ports:
                port = info.get(port_key)
                if port is None:
                    raise FabricError(f"link {a}-{b}: no explicit port on {near}")
                ports[near].append((int(port), far))
    return ports


def fabric_from_topo(topo: Topo, capture_host: str,
                     static: dict[str, Any] | None = None) -> dict[str, Any]:
    """The fabric description for a Mininet ``topo`` with ``capture_host`` behind the
    aggregation switch."""
    dpids = {name: int(topo.nodeInfo(name)["dpid"], 16) for name in topo.switches()}
    return _describe(dpids, set(topo.hosts()), _ports(topo), capture_host, static)


def fabric_from_links(dpids: Mapping[str, int], links: Iterable[PortLink], capture_host: str,
                      static: dict[str, Any] | None = None) -> dict[str, Any]:
    """The same from a cabling list (no Mininet needed): ``dpids`` names the switches,
    every other node of ``links`` is a host (its port is ignored)."""
    ports: dict[str, list[tuple[int, str]]] = {sw: [] for sw in dpids}
    hosts: set[str] = set()
    for link in links:
        for near, port, far in ((link.a, link.a_port, link.b), (link.b, link.b_port, link.a)):
            if near in ports:
                ports[near].append((port, far))
            else:
                hosts.add(near)
    return _describe(dpids, hosts, ports, capture_host, static)


def _describe(dpids: Mapping[str, int], hosts: set[str], ports: Mapping[str, list[tuple[int, str]]],
              capture_host: str, static: dict[str, Any] | None) -> dict[str, Any]:
    switches = set(dpids)
    if capture_host not in hosts:
        raise FabricError(f"capture_host: {capture_host!r} is not a host of the topology")
    entries = []
    for name, sw_ports in sorted(ports.items(), key=lambda kv: dpids[kv[0]]):
        dpid = dpids[name]
        uplinks = sorted(p for p, far in sw_ports if far in switches)
        host_ports = sorted(p for p, far in sw_ports if far not in switches and far != capture_host)
        capture = [p for p, far in sw_ports if far == capture_host]
        if capture:
            if host_ports:
                raise FabricError(f"{name}: aggregation switch also has production hosts on "
                                  f"{host_ports}")
            entries.append({"dpid": dpid, "name": name, "role": "aggregation",
                            "uplinks": uplinks, "capture_port": capture[0]})
        else:
            entries.append({"dpid": dpid, "name": name, "role": "filter",
                            "host_ports": host_ports, "uplinks": uplinks})
    if not any(e["role"] == "aggregation" for e in entries):
        raise FabricError("no aggregation switch: the capture host is not on a switch")
    return {"version": FABRIC_VERSION, "switches": entries, "static": static}


def seed_fabric(static: bool = False) -> dict[str, Any]:
    """The seed topology's fabric; ``static=True`` adds the prototype's static mode."""
    from topo.seed import CAPTURE_HOST, seed_links, seed_switches

    return fabric_from_links(seed_switches(), seed_links(), CAPTURE_HOST,
                             PROTOTYPE_STATIC if static else None)


def write_fabric(path: Path, fabric: dict[str, Any]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(fabric, indent=2) + "\n")
    return path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m topo.fabricgen",
                                     description="print the seed topology's fabric description")
    parser.add_argument("--static", action="store_true", help="include the prototype's static mode")
    parser.add_argument("-o", "--output", type=Path, help="write here instead of stdout")
    args = parser.parse_args(argv)
    fabric = seed_fabric(args.static)
    if args.output:
        write_fabric(args.output, fabric)
    else:
        json.dump(fabric, sys.stdout, indent=2)
        sys.stdout.write("\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
