"""The fabric as the daemon knows it, for the dashboard's picture.

The switches (role, host ports, uplinks, capture port, ports and their names)
come from the controller component's ``list_switches`` answer the runtime
already holds; port names the controller did not give come from the engine's
port map (sFlow counter records 1004/1005); the mirrors are the live taps'
placements. Nothing here asks anyone anything: it reads what is held.
"""

from __future__ import annotations

from typing import Any, Iterable, Mapping

from demon.model import LIVE_STATES, Tap


def _ints(values: Any) -> list[int]:
    out = []
    for v in values or ():
        try:
            out.append(int(v))
        except (TypeError, ValueError):
            continue
    return out


def switch_json(sw: Mapping[str, Any], names: Mapping[tuple[int, int], str]) -> dict[str, Any]:
    dpid = int(sw.get("dpid") or 0)
    ports = []
    for p in sw.get("ports") or ():
        try:
            no = int(p.get("port_no"))
        except (TypeError, ValueError, AttributeError):
            continue
        ports.append({"port_no": no, "name": p.get("name") or names.get((dpid, no)),
                      "up": bool(p.get("up", True))})
    known = {p["port_no"] for p in ports}
    listed = set(_ints(sw.get("host_ports"))) | set(_ints(sw.get("uplinks")))
    if sw.get("capture_port") is not None:
        listed |= set(_ints([sw.get("capture_port")]))
    for no in sorted(listed - known):  # a role port the controller gave no status for
        ports.append({"port_no": no, "name": names.get((dpid, no)), "up": None})
    ports.sort(key=lambda p: p["port_no"])
    capture = sw.get("capture_port")
    return {"dpid": dpid, "name": sw.get("name") or f"dpid {dpid}", "role": sw.get("role"),
            "connected_at": sw.get("connected_at"), "host_ports": _ints(sw.get("host_ports")),
            "uplinks": _ints(sw.get("uplinks")),
            "capture_port": None if capture is None else int(capture), "ports": ports}


def mirror_json(tap: Tap) -> dict[str, Any]:
    return {"tap_id": tap.tap_id, "policy": tap.policy, "state": tap.state,
            "flow_key": tap.flow_key, "dpid": tap.dpid, "in_port": tap.in_port,
            "copy_port": tap.copy_port, "vlan_tag": tap.vlan_tag,
            "bidirectional": tap.bidirectional, "rate_bps": tap.rate_bps}


def port_names(port_map: Iterable[Any]) -> dict[tuple[int, int], str]:
    names = {}
    for e in port_map or ():
        dpid = getattr(e, "dpid", None)
        port = getattr(e, "of_port", None)
        name = getattr(e, "name", None)
        if dpid is not None and port is not None and name:
            names[(int(dpid), int(port))] = str(name)
    return names


def fabric_json(switches: Iterable[Mapping[str, Any]], port_map: Iterable[Any],
                taps: Iterable[Tap], *, controller_reachable: bool, at: float) -> dict[str, Any]:
    names = port_names(port_map)
    out = sorted((switch_json(sw, names) for sw in switches), key=lambda s: s["dpid"])
    mirrors = [mirror_json(t) for t in taps if t.state in LIVE_STATES and t.dpid]
    mirrors.sort(key=lambda m: (m["dpid"], m["in_port"] or 0, m["tap_id"]))
    return {"as_of": at, "controller_reachable": controller_reachable, "switches": out,
            "mirrors": mirrors}
