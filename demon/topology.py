"""Where a flow enters the fabric, and which uplink its copy takes.

Built from two sources the runtime already has:

* the engine's port map (``/demon/portmap/json``, ``SFlowRTClient.port_map()``):
  (sFlow agent, ifIndex) → (dpid, OpenFlow port, interface name);
* the controller's ``list_switches``: each switch's role (``filter`` /
  ``aggregation``), host ports, uplinks, capture port, and port names.

A port-map entry without a dpid/port is resolved by its interface name
against the controller's port names (OVS names ports ``s1-eth1``).

A flow is mirrored at exactly one point: its ingress *filter switch host port*.
Sightings on uplinks or on the aggregation switch are the mirror copies
themselves (the aggregation switch is sampled too), never a place to tap.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Iterable, Mapping, NamedTuple


class Location(NamedTuple):
    dpid: int
    in_port: int


@dataclass(frozen=True)
class SwitchInfo:
    dpid: int
    name: str = ""
    role: str | None = None
    host_ports: tuple[int, ...] = ()
    uplinks: tuple[int, ...] = ()
    capture_port: int | None = None
    port_names: Mapping[str, int] = field(default_factory=dict)


def _get(entry: Any, *names: str) -> Any:
    for name in names:
        if isinstance(entry, Mapping):
            if name in entry:
                return entry[name]
        elif hasattr(entry, name):
            return getattr(entry, name)
    return None


def parse_data_source(data_source: str | int) -> int | None:
    """sFlow-RT ``dataSource`` → ifIndex: ``"17"`` or ``"0.17"``; other classes → None."""
    text = str(data_source).strip()
    if "." in text:
        cls, _, index = text.partition(".")
        if cls != "0":
            return None
        text = index
    return int(text) if text.isdigit() and int(text) > 0 else None


class Topology:
    """Immutable lookup tables; rebuild it when the port map or the switches change."""

    def __init__(self, port_map: Iterable[Any] = (), switches: Iterable[Mapping[str, Any]] = ()) -> None:
        self.switches: dict[int, SwitchInfo] = {}
        for sw in switches:
            ports = {str(p["name"]): int(p["port_no"]) for p in sw.get("ports", []) or []
                     if p.get("name") is not None and p.get("port_no") is not None}
            dpid = int(sw["dpid"])
            self.switches[dpid] = SwitchInfo(
                dpid=dpid, name=str(sw.get("name") or ""), role=sw.get("role"),
                host_ports=tuple(int(p) for p in sw.get("host_ports") or ()),
                uplinks=tuple(int(p) for p in sw.get("uplinks") or ()),
                capture_port=sw.get("capture_port"), port_names=ports)
        by_port_name = {name: (sw.dpid, port) for sw in self.switches.values()
                        for name, port in sw.port_names.items()}
        self._ports: dict[tuple[str, int], Location] = {}
        for entry in port_map:
            agent = _get(entry, "agent")
            if_index = _get(entry, "if_index", "ifIndex")
            dpid, of_port = _get(entry, "dpid"), _get(entry, "of_port", "ofPort")
            name = _get(entry, "name")
            if dpid is None or of_port is None:
                if name is None or name not in by_port_name:
                    continue
                dpid, of_port = by_port_name[name]
            if agent is None or if_index is None:
                continue
            self._ports[(str(agent), int(if_index))] = Location(int(dpid), int(of_port))

    def locate(self, agent: str, data_source: str | int) -> Location | None:
        """The switch port an sFlow (agent, dataSource) stands for, or None."""
        if_index = parse_data_source(data_source)
        if if_index is None:
            return None
        return self._ports.get((str(agent), if_index))

    def port_of(self, agent: str, if_index: int) -> int | None:
        """OpenFlow port for an ``inputifindex`` key value seen by ``agent``."""
        loc = self._ports.get((str(agent), int(if_index)))
        return loc.in_port if loc else None

    def ingress_problem(self, loc: Location) -> str | None:
        """Why ``loc`` is not a filter switch host port (None when it is one).

        Only switches the controller reported can be judged: an unknown switch
        gets a reason, so no tap is placed blind.
        """
        sw = self.switches.get(loc.dpid)
        if sw is None:
            return f"switch dpid {loc.dpid} is not connected to the controller"
        if sw.role != "filter":
            return f"switch {sw.name or loc.dpid} has role {sw.role!r}, not 'filter' (a mirror copy)"
        if loc.in_port in sw.uplinks:
            return f"port {loc.in_port} of switch {sw.name or loc.dpid} is an uplink (a mirror copy)"
        if sw.host_ports and loc.in_port not in sw.host_ports:
            return f"port {loc.in_port} of switch {sw.name or loc.dpid} is not a host port"
        return None

    def filter_switch_problem(self, dpid: int) -> str | None:
        """Why switch ``dpid`` cannot take a tap matching on any of its ports (a
        tap placed by switch only, ``in_port`` left out), or None."""
        sw = self.switches.get(dpid)
        if sw is None:
            return f"switch dpid {dpid} is not connected to the controller"
        if sw.role != "filter":
            return f"switch {sw.name or dpid} has role {sw.role!r}, not 'filter' (a mirror copy)"
        return None

    def is_copy(self, loc: Location) -> bool:
        """True where sFlow sees our own mirror copies: uplinks and non-filter switches."""
        sw = self.switches.get(loc.dpid)
        if sw is None:
            return False
        return sw.role == "aggregation" or loc.in_port in sw.uplinks

    def choose_uplink(self, dpid: int, current_taps: Iterable[Any]) -> int | None:
        """The uplink of ``dpid`` carrying the least tapped rate, then the fewest
        taps, then the lowest port number; None if the switch has no uplinks.

        ``current_taps``: live taps (anything with ``dpid``, ``copy_port``, ``rate_bps``).
        """
        load: dict[tuple[int, int], tuple[float, int]] = {}
        for tap in current_taps:
            rate, count = load.get((tap.dpid, tap.copy_port), (0.0, 0))
            load[(tap.dpid, tap.copy_port)] = (rate + tap.rate_bps, count + 1)
        return self.choose_uplink_by_load(dpid, load)

    def choose_uplink_by_load(self, dpid: int,
                              load: Mapping[tuple[int, int], tuple[float, int]]) -> int | None:
        """``choose_uplink`` from precomputed load: (dpid, port) → (tapped bps, taps)."""
        sw = self.switches.get(dpid)
        if sw is None or not sw.uplinks:
            return None
        return min(sw.uplinks, key=lambda port: (*load.get((dpid, port), (0.0, 0)), port))
