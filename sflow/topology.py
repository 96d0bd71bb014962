"""The network topology an operator (or sFlow-RT's Mininet helper) PUTs at ``/topology/json``.

sFlow-RT's ``Topology`` object (its REST reference, and ``topology.php``)::

    {"nodes": {"s1": {"agent": "10.0.0.1", "dpid": "0000000000000001",
                      "ports": {"s1-eth1": {"ifindex": "417", "ofport": "1"}}}},
     "links": {"s1-s2": {"node1": "s1", "port1": "s1-eth2",
                         "node2": "s2", "port2": "s2-eth1"}}}

``nodes`` ties a (node, port name) to an sFlow (agent, ifIndex); ``links``
names the inter-switch links. A link may name ports that ``nodes`` does not
list (fabric-view's demo topology has links only): then the port is found by
its name among the names the agents report themselves (counter record 0:1005,
``ifName``), as sFlow-RT learns them: when the node's agent is known, the
one port of that agent with that name; otherwise only a port name that no
other node of the topology uses and exactly one (agent, ifIndex) reports.

Pure: :class:`Topology` validates a body and answers lookups through an
index built for a given set of learned port names (:meth:`Topology.index`).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, Iterable, Mapping

__all__ = ["Topology", "TopologyError", "TopologyIndex", "PortRef", "MAX_TOPOLOGY_BYTES",
           "MAX_NODES", "MAX_LINKS"]

#: sizes we accept (a body above them is refused with 400): generous for real fabrics
MAX_TOPOLOGY_BYTES = 4 << 20
MAX_NODES = 10_000
MAX_LINKS = 50_000
_MAX_PORTS_PER_NODE = 10_000
_MAX_NAME = 200


class TopologyError(ValueError):
    """A topology body we refuse; the message names the offending field."""


@dataclass(frozen=True)
class PortRef:
    """Where an sFlow data source sits in the topology."""

    node: str
    port: str
    link: str | None = None  # the inter-switch link this port is an end of


def _name(value: Any, where: str) -> str:
    if not isinstance(value, str) or not value or len(value) > _MAX_NAME:
        raise TopologyError(f"{where}: expected a name (1-{_MAX_NAME} characters), got {value!r}")
    return value


def _ifindex(value: Any, where: str) -> str:
    """ifIndex as sFlow-RT's Mininet helper writes it (a string of digits); ints accepted."""
    if isinstance(value, bool):
        raise TopologyError(f"{where}: expected an ifIndex, got {value!r}")
    if isinstance(value, int):
        value = str(value)
    if not isinstance(value, str) or not value.isdigit() or len(value) > 10:
        raise TopologyError(f"{where}: expected an ifIndex (digits), got {value!r}")
    return str(int(value))


def _tags(value: Any, where: str) -> None:
    if value is None:
        return
    if not isinstance(value, dict):
        raise TopologyError(f"{where}: expected an object of tag: value")


def _object(value: Any, where: str) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise TopologyError(f"{where}: expected an object")
    return value


@dataclass
class TopologyIndex:
    """Lookups for one topology and one set of learned port names."""

    #: (agent, ifIndex) -> where it is
    ports: dict[tuple[str, str], PortRef] = field(default_factory=dict)
    #: agents that some node or resolved port names
    agents: set[str] = field(default_factory=set)
    #: (agent, ifIndex) of both ends of every resolved link
    core: set[tuple[str, str]] = field(default_factory=set)
    #: link name -> ((agent, ifIndex) of end 1 or None, of end 2 or None)
    link_ends: dict[str, tuple[tuple[str, str] | None, tuple[str, str] | None]] = field(
        default_factory=dict)

    def link(self, agent: str, if_index: str) -> str | None:
        ref = self.ports.get((agent, if_index))
        return ref.link if ref is not None else None

    def node(self, agent: str, if_index: str) -> str | None:
        ref = self.ports.get((agent, if_index))
        return ref.node if ref is not None else None

    def is_core(self, agent: str, data_source: str) -> bool:
        return (agent, data_source) in self.core


class Topology:
    """A validated topology body (kept as given, for GET) and its structure."""

    def __init__(self, body: Mapping[str, Any]) -> None:
        self.body = body
        #: node -> (agent or None, dpid or None, {port name: ifIndex or None})
        self.nodes: dict[str, tuple[str | None, str | None, dict[str, str | None]]] = {}
        #: link -> (node1, port1, node2, port2)
        self.links: dict[str, tuple[str, str, str, str]] = {}

    @classmethod
    def parse(cls, body: Any) -> "Topology":
        """Validate a ``PUT /topology/json`` body (``{}`` is an empty topology)."""
        if not isinstance(body, dict):
            raise TopologyError("body: expected a JSON object with 'nodes' and/or 'links'")
        extra = sorted(set(body) - {"nodes", "links", "tags", "version"})
        if extra:
            raise TopologyError(f"{extra[0]}: unknown topology attribute (known: links, nodes)")
        topo = cls(body)
        nodes = _object(body.get("nodes"), "nodes")
        if len(nodes) > MAX_NODES:
            raise TopologyError(f"nodes: at most {MAX_NODES} nodes")
        for node_name, node in nodes.items():
            where = f"nodes.{node_name}"
            _name(node_name, "nodes")
            node = _object(node, where)
            agent = node.get("agent")
            if agent is not None:
                agent = _name(agent, f"{where}.agent")
            dpid = node.get("dpid")
            if dpid is not None and not isinstance(dpid, (str, int)):
                raise TopologyError(f"{where}.dpid: expected a string, got {dpid!r}")
            _tags(node.get("tags"), f"{where}.tags")
            ports_body = _object(node.get("ports"), f"{where}.ports")
            if len(ports_body) > _MAX_PORTS_PER_NODE:
                raise TopologyError(f"{where}.ports: at most {_MAX_PORTS_PER_NODE} ports")
            ports: dict[str, str | None] = {}
            for port_name, port in ports_body.items():
                pwhere = f"{where}.ports.{port_name}"
                _name(port_name, f"{where}.ports")
                port = _object(port, pwhere)
                raw = port.get("ifindex")
                ports[port_name] = None if raw is None else _ifindex(raw, f"{pwhere}.ifindex")
                _tags(port.get("tags"), f"{pwhere}.tags")
            topo.nodes[node_name] = (agent, None if dpid is None else str(dpid), ports)
        links = _object(body.get("links"), "links")
        if len(links) > MAX_LINKS:
            raise TopologyError(f"links: at most {MAX_LINKS} links")
        for link_name, link in links.items():
            where = f"links.{link_name}"
            _name(link_name, "links")
            link = _object(link, where)
            ends = tuple(_name(link.get(k), f"{where}.{k}")
                         for k in ("node1", "port1", "node2", "port2"))
            _tags(link.get("tags"), f"{where}.tags")
            topo.links[link_name] = ends  # type: ignore[assignment]
        return topo

    @classmethod
    def parse_bytes(cls, raw: bytes) -> "Topology":
        if len(raw) > MAX_TOPOLOGY_BYTES:
            raise TopologyError(f"body: larger than {MAX_TOPOLOGY_BYTES} bytes")
        try:
            body = json.loads(raw)
        except ValueError as exc:
            raise TopologyError(f"body: not JSON: {exc}") from None
        return cls.parse(body)

    def index(self, learned: Iterable[tuple[str, int | str, str | None]] = ()) -> TopologyIndex:
        """Resolve every node port and link end to an (agent, ifIndex).

        ``learned``: (agent, ifIndex, ifName) the agents reported (0:1005), used
        for ports that ``nodes`` does not map.
        """
        by_name: dict[str, list[tuple[str, str]]] = {}
        for agent, if_index, name in learned:
            if name:
                by_name.setdefault(name, []).append((agent, str(if_index)))
        # a port name found on several nodes is resolved only through its node's agent
        uses: dict[str, set[str]] = {}
        for node_name, (_agent, _dpid, ports) in self.nodes.items():
            for port_name in ports:
                uses.setdefault(port_name, set()).add(node_name)
        for n1, p1, n2, p2 in self.links.values():
            uses.setdefault(p1, set()).add(n1)
            uses.setdefault(p2, set()).add(n2)
        idx = TopologyIndex()
        resolved: dict[tuple[str, str], tuple[str, str]] = {}  # (node, port) -> (agent, ifIndex)
        for node_name, (agent, _dpid, ports) in self.nodes.items():
            if agent is not None:
                idx.agents.add(agent)
            for port_name, if_index in ports.items():
                where = None
                if agent is not None and if_index is not None:
                    where = (agent, if_index)
                elif agent is not None or len(uses[port_name]) == 1:
                    where = self._learned(by_name, port_name, agent)
                if where is not None:
                    resolved[(node_name, port_name)] = where
                    idx.ports[where] = PortRef(node_name, port_name)
        for link_name, (n1, p1, n2, p2) in self.links.items():
            ends = []
            for node_name, port_name in ((n1, p1), (n2, p2)):
                where = resolved.get((node_name, port_name))
                if where is None:
                    agent = self.nodes.get(node_name, (None, None, {}))[0]
                    if agent is not None or len(uses[port_name]) == 1:
                        where = self._learned(by_name, port_name, agent)
                if where is not None:
                    idx.ports[where] = PortRef(node_name, port_name, link_name)
                    idx.core.add(where)
                    idx.agents.add(where[0])
                ends.append(where)
            idx.link_ends[link_name] = (ends[0], ends[1])
        for where in list(idx.ports):
            idx.agents.add(where[0])
        return idx

    @staticmethod
    def _learned(by_name: Mapping[str, list[tuple[str, str]]], port: str,
                 agent: str | None) -> tuple[str, str] | None:
        found = by_name.get(port, [])
        if agent is not None:
            found = [w for w in found if w[0] == agent]
        return found[0] if len(found) == 1 else None

    def __bool__(self) -> bool:
        return bool(self.nodes or self.links)
