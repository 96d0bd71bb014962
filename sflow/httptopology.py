"""The engine's HTTP API: topology, address groups and value maps, and the
``{agent}`` path parameter they give meaning to (``TOPOLOGY``, ``EDGE``, ``CORE``).

``PUT/GET/DELETE /topology/json``, ``/group/{name}/json``, ``/map/{name}/json``:
small, rarely changed state with its own lock (not the engine's). When any of
it changes, the flow keys the engine memoised for ``group:``/``map:``/``link:``/
``node:`` are computed anew.
"""

from __future__ import annotations

import re
import threading
from dataclasses import dataclass
from typing import Any, Callable

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response

from sflow.counters import port_map_rows
from sflow.groups import MAX_SETS, AddressGroup, GroupError, ValueMap, parse_json_bytes
from sflow.httpbase import ApiError, EngineAccess, json_response, no_content
from sflow.topology import Topology, TopologyError, TopologyIndex

__all__ = ["AgentSelection", "TopologyRoutes"]

_TOKENS = {"ALL", "TOPOLOGY", "EDGE", "CORE"}


@dataclass(frozen=True)
class AgentSelection:
    """The ``{agent}`` path parameter: ``ALL``, ``TOPOLOGY``, ``EDGE``, ``CORE`` or ``a;b;c``.

    ``agents`` is the set of addresses (None: any); ``where`` further restricts
    (agent, dataSource) pairs for the topology tokens. With no topology loaded,
    ``TOPOLOGY`` and ``EDGE`` mean every data source (no link is known, so every
    port is an edge port) and ``CORE`` none.
    """

    token: str
    agents: frozenset[str] | None
    index: TopologyIndex | None

    def accepts(self, agent: str, data_source: str) -> bool:
        if self.agents is not None and agent not in self.agents:
            return False
        if self.index is None:
            return self.token != "CORE"
        if self.token == "EDGE":
            return not self.index.is_core(agent, data_source)
        if self.token == "CORE":
            return self.index.is_core(agent, data_source)
        return True

    @property
    def narrows(self) -> bool:
        """True when :meth:`accepts` is more than an agent-set test."""
        return self.token in ("TOPOLOGY", "EDGE", "CORE")


class TopologyRoutes(EngineAccess):
    """Topology, groups and maps (their state is set up by ``EngineAPI.__init__``)."""

    _state_lock: threading.Lock
    topology: Topology | None
    groups: dict[str, AddressGroup]
    maps: dict[str, ValueMap]
    _index: TopologyIndex | None
    _index_key: tuple[int, int] | None
    _topology_version: int

    def topology_index(self) -> TopologyIndex | None:
        """The topology resolved against the port names agents report (cached)."""
        with self._state_lock:
            topo = self.topology
            version = self._topology_version
        if topo is None:
            return None
        names = self.engine_learned_names()
        key = (version, hash(names))
        with self._state_lock:
            if self._index_key == key and self._index is not None:
                return self._index
        index = topo.index(names)
        with self._state_lock:
            current = self._topology_version == version
            if current:
                self._index, self._index_key = index, key
        if current and (self.keys.index is None or self.keys.index.ports != index.ports):
            self.keys.index = index  # link:/node: see it at once; memoised keys are redone
            self.sets_changed()
        return index

    def engine_learned_names(self) -> tuple[tuple[str, int, str | None], ...]:
        """(agent, ifIndex, ifName) the agents reported (0:1005): a snapshot taken under
        the lock, read outside it."""
        snapshot = self._locked(self.engine.counter_snapshot)
        rows = port_map_rows(snapshot, self.clock())
        return tuple((row["agent"], row["ifIndex"], row["name"]) for row in rows if row["name"])

    def select_agents(self, text: str) -> AgentSelection:
        if text in _TOKENS:
            index = self.topology_index() if text != "ALL" else None
            agents = None
            if text == "TOPOLOGY" and index is not None:
                agents = frozenset(index.agents)
            return AgentSelection(text, agents, index)
        agents = frozenset(a for a in text.split(";") if a)
        if not agents:
            raise ApiError(400, f"agent: expected ALL or addresses separated by ';', got {text!r}")
        return AgentSelection("set", agents, None)

    async def topology_route(self, request: Request) -> Response:
        method = request.method
        if method in ("GET", "HEAD"):
            with self._state_lock:
                topo = self.topology
            return json_response(topo.body if topo is not None else {})
        if method == "DELETE":
            await run_in_threadpool(self._set_topology, None)
            return no_content()
        raw = await self.read_body(request)
        try:
            topo = await run_in_threadpool(Topology.parse_bytes, raw)
        except TopologyError as exc:
            raise ApiError(400, str(exc)) from None
        except RecursionError:
            raise ApiError(400, "body: nested too deeply") from None
        await run_in_threadpool(self._set_topology, topo if topo else None)
        return no_content()

    def _set_topology(self, topo: Topology | None) -> None:
        with self._state_lock:
            self.topology = topo
            self._topology_version += 1
            self._index = self._index_key = None
        self.keys.index = None
        if topo is not None:
            self.topology_index()
        else:
            self.sets_changed()

    async def groups_all(self, request: Request) -> Response:
        with self._state_lock:
            return json_response({name: g.body for name, g in self.groups.items()})

    async def maps_all(self, request: Request) -> Response:
        with self._state_lock:
            return json_response({name: m.body for name, m in self.maps.items()})

    async def group(self, request: Request) -> Response:
        return await self._named_set(request, self.groups, "group", AddressGroup.parse)

    async def map(self, request: Request) -> Response:
        return await self._named_set(request, self.maps, "map", ValueMap.parse)

    async def _named_set(self, request: Request, store: dict[str, Any], kind: str,
                         parse: Callable[[Any], Any]) -> Response:
        name = request.path_params["name"]
        if not re.fullmatch(r"[A-Za-z0-9_.-]{1,100}", name):
            raise ApiError(400, f"name: {kind} name {name!r} must be 1-100 of A-Z a-z 0-9 _ . -")
        method = request.method
        if method in ("GET", "HEAD"):
            with self._state_lock:
                found = store.get(name)
            if found is None:
                raise ApiError(404, f"no {kind} named {name!r}")
            return json_response(found.body)
        if method == "DELETE":
            with self._state_lock:
                found = store.pop(name, None)
            if found is None:
                raise ApiError(404, f"no {kind} named {name!r}")
            await run_in_threadpool(self.sets_changed)
            return no_content()
        raw = await self.read_body(request)

        def build() -> Any:
            return parse(parse_json_bytes(raw))
        try:
            parsed = await run_in_threadpool(build)
        except GroupError as exc:
            raise ApiError(400, str(exc)) from None
        except RecursionError:
            raise ApiError(400, "body: nested too deeply") from None
        with self._state_lock:
            if name not in store and len(store) >= MAX_SETS:
                raise ApiError(400, f"name: at most {MAX_SETS} {kind}s; delete one first")
            store[name] = parsed
        await run_in_threadpool(self.sets_changed)
        return no_content()

    def sets_changed(self) -> None:
        """Groups, maps or the topology changed: memoised flow keys are computed anew."""
        self._locked(self.engine.key_functions_changed)
