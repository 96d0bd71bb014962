"""Client for the sFlow-RT REST API, for a real InMon sFlow-RT or the embedded engine.

The daemon reaches its analytics engine only through :class:`SFlowRTClient`.
Every call is idempotent (GETs, and PUT/DELETE that create-or-replace/remove by
name), so connection errors, timeouts and 5xx answers are retried with
exponential backoff before the client gives up with :class:`EngineUnreachable`
(or :class:`ServerError`). HTTP answers that retrying cannot fix map to specific
exceptions: 400 → :class:`Rejected` (with the server's message), 403 →
:class:`ReadOnly`, 404 → :class:`NotFound` (or ``None`` where absence is a normal
answer), an unparsable or wrongly shaped body → :class:`BadResponse`.

:class:`EventStream` turns the ``/events/json`` long poll into a loss-free,
duplicate-free stream that survives disconnections and engine restarts.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass, field
from typing import Any, Callable
from urllib.parse import quote

import requests

log = logging.getLogger(__name__)

#: Extra seconds a long poll's read timeout allows beyond the server-side wait.
LONG_POLL_MARGIN = 5.0
#: ``fs`` (key separator) sFlow-RT uses when a flow definition does not set one.
DEFAULT_FS = ","


class SFlowRTError(Exception):
    """Base of every error the client raises."""


class EngineUnreachable(SFlowRTError):
    """Connection refused, reset or timed out, after all retries."""


class ServerError(SFlowRTError):
    """The engine kept answering 5xx after all retries."""

    def __init__(self, message: str, status: int) -> None:
        super().__init__(message)
        self.status = status


class ReadOnly(SFlowRTError):
    """403: the engine runs read-only (sFlow-RT ``http.readonly=yes``); or 401: it wants
    a bearer token for writes (the embedded engine bound beyond loopback) and
    got none or a wrong one."""


class Rejected(SFlowRTError):
    """400: the engine refused a definition or a query; ``message`` is its reason."""

    def __init__(self, message: str, path: str) -> None:
        super().__init__(f"{path}: rejected by the engine: {message}")
        self.message = message
        self.path = path


class NotFound(SFlowRTError):
    """404 for a named resource the caller expected to exist."""


class BadResponse(SFlowRTError):
    """The body is not JSON, or not the shape the API documents."""


class Unsupported(SFlowRTError):
    """The engine has no way to answer this (e.g. no port map on a real sFlow-RT)."""


@dataclass(frozen=True, slots=True)
class ActiveFlow:
    """One ``/activeflows`` record; ``keys`` is ``key`` split on the flow's ``fs``."""

    key: str
    value: float
    agent: str
    data_source: str
    keys: list[str]


@dataclass(frozen=True, slots=True)
class Event:
    """One threshold event. ``timestamp_ms`` is ms since the epoch; ``raw`` the JSON object."""

    event_id: int
    timestamp_ms: int
    threshold_id: str
    metric: str
    agent: str
    data_source: str
    value: float
    threshold: float
    flow_key: str | None
    raw: dict[str, Any] = field(repr=False, compare=False)


@dataclass(frozen=True, slots=True)
class PortMapEntry:
    """Where an sFlow (agent, ifIndex) is in OpenFlow terms.

    ``dpid``/``of_port`` are None when the source does not know them;
    ``last_seen_ms`` is an age in ms (None from a topology fallback), left out
    of equality so two reads of an unchanged map compare equal.
    """

    agent: str
    if_index: int
    dpid: int | None
    of_port: int | None
    name: str | None
    # an age that changes on every read: not part of what the entry says
    last_seen_ms: int | None = field(default=None, compare=False)

    @property
    def dpid_hex(self) -> str | None:
        return None if self.dpid is None else f"{self.dpid:016x}"


def _field(obj: dict[str, Any], name: str, kind: type | tuple[type, ...], where: str) -> Any:
    try:
        value = obj[name]
    except KeyError:
        raise BadResponse(f"{where}: field {name!r} missing in {obj!r}") from None
    if isinstance(value, bool) or not isinstance(value, kind):
        raise BadResponse(f"{where}: field {name!r} has wrong type {type(value).__name__}: {value!r}")
    return value


def parse_event(obj: Any) -> Event:
    """Build an :class:`Event` from one element of an ``/events/json`` array."""
    where = "/events/json"
    if not isinstance(obj, dict):
        raise BadResponse(f"{where}: event is not an object: {obj!r}")
    flow_key = obj.get("flowKey")
    if flow_key is not None and not isinstance(flow_key, str):
        raise BadResponse(f"{where}: field 'flowKey' is not a string: {flow_key!r}")
    return Event(
        event_id=int(_field(obj, "eventID", int, where)),
        timestamp_ms=int(_field(obj, "timestamp", (int, float), where)),
        threshold_id=str(_field(obj, "thresholdID", str, where)),
        metric=str(obj.get("metric", "")),
        agent=str(_field(obj, "agent", str, where)),
        data_source=str(_field(obj, "dataSource", (str, int), where)),
        value=float(_field(obj, "value", (int, float), where)),
        threshold=float(obj.get("threshold", 0.0)),
        flow_key=flow_key,
        raw=obj,
    )


def _int_or_none(value: Any, where: str, name: str, base: int = 10) -> int | None:
    if value is None or value == "":
        return None
    if isinstance(value, bool):
        raise BadResponse(f"{where}: field {name!r} is not a number: {value!r}")
    if isinstance(value, int):
        return value
    try:
        return int(str(value), base)
    except ValueError:
        raise BadResponse(f"{where}: field {name!r} is not a number: {value!r}") from None


def parse_port_map_entry(obj: Any) -> PortMapEntry:
    """Build a :class:`PortMapEntry` from one element of ``/demon/portmap/json``."""
    where = "/demon/portmap/json"
    if not isinstance(obj, dict):
        raise BadResponse(f"{where}: entry is not an object: {obj!r}")
    dpid = obj.get("dpid")
    if isinstance(dpid, str):
        dpid_int = _int_or_none(dpid, where, "dpid", 16)
    else:
        dpid_int = _int_or_none(dpid, where, "dpid")
    if dpid_int is None and obj.get("dpidHex"):
        dpid_int = _int_or_none(obj["dpidHex"], where, "dpidHex", 16)
    if_index = _int_or_none(_field(obj, "ifIndex", (int, str), where), where, "ifIndex")
    name = obj.get("name")
    return PortMapEntry(
        agent=str(_field(obj, "agent", str, where)),
        if_index=if_index if if_index is not None else 0,
        dpid=dpid_int,
        of_port=_int_or_none(obj.get("ofPort"), where, "ofPort"),
        name=str(name) if name is not None else None,
        last_seen_ms=_int_or_none(obj.get("lastSeen"), where, "lastSeen"),
    )


def port_map_from_topology(topology: Any) -> list[PortMapEntry]:
    """Port map from an sFlow-RT ``/topology/json`` body (ports that carry an ifindex).

    Raises :class:`Unsupported` when no port has an ifindex: then nothing ties
    sFlow data sources to switch ports.
    """
    where = "/topology/json"
    if not isinstance(topology, dict):
        raise BadResponse(f"{where}: body is not an object")
    nodes = topology.get("nodes") or {}
    if not isinstance(nodes, dict):
        raise BadResponse(f"{where}: 'nodes' is not an object")
    entries: list[PortMapEntry] = []
    for node_name, node in nodes.items():
        if not isinstance(node, dict):
            raise BadResponse(f"{where}: node {node_name!r} is not an object")
        agent = node.get("agent")
        node_dpid = _int_or_none(node.get("dpid"), where, f"nodes.{node_name}.dpid", 16)
        ports = node.get("ports") or {}
        if not isinstance(ports, dict):
            raise BadResponse(f"{where}: 'nodes.{node_name}.ports' is not an object")
        for port_name, port in ports.items():
            if not isinstance(port, dict) or agent is None:
                continue
            if_index = _int_or_none(port.get("ifindex"), where, f"{port_name}.ifindex")
            if if_index is None:
                continue
            port_dpid = _int_or_none(port.get("dpid"), where, f"{port_name}.dpid", 16)
            entries.append(PortMapEntry(
                agent=str(agent),
                if_index=if_index,
                dpid=port_dpid if port_dpid is not None else node_dpid,
                of_port=_int_or_none(port.get("ofport"), where, f"{port_name}.ofport"),
                name=str(port_name),
            ))
    if not entries:
        raise Unsupported("engine has no /demon/portmap/json and its /topology/json "
                          "has no ports with an ifindex: load a topology with ifindex/ofport/dpid")
    return entries


class SFlowRTClient:
    """The sFlow-RT REST API, with retries and specific errors.

    ``timeout`` is the connect and read timeout of ordinary calls; a long poll
    reads for its own wait plus :data:`LONG_POLL_MARGIN`. ``retries`` extra
    attempts are made after connection errors, timeouts and 5xx, sleeping
    ``backoff * 2**n`` seconds before attempt ``n+1``.
    """

    def __init__(self, base_url: str, timeout: float = 5.0, retries: int = 3,
                 backoff: float = 0.2, session: requests.Session | None = None,
                 sleep: Callable[[float], None] = time.sleep, token: str | None = None) -> None:
        if not base_url.startswith(("http://", "https://")):
            raise ValueError(f"base_url must be an http(s) URL, got {base_url!r}")
        if retries < 0:
            raise ValueError(f"retries must be >= 0, got {retries}")
        self.base_url = base_url.rstrip("/")
        self.timeout = timeout
        self.retries = retries
        self.backoff = backoff
        self.session = session if session is not None else requests.Session()
        self._sleep = sleep
        self._fs: dict[str, str] = {}
        #: bearer token sent with writes (an engine bound beyond loopback asks for one)
        self.token = token

    def __repr__(self) -> str:
        return f"SFlowRTClient({self.base_url!r})"

    # -- transport -------------------------------------------------------------

    def _request(self, method: str, path: str, *, params: dict[str, Any] | None = None,
                 body: Any = None, read_timeout: float | None = None) -> requests.Response:
        """One call with retries; returns any response below 500 for the caller to map."""
        url = self.base_url + path
        data = None if body is None else json.dumps(body)
        headers = {"Content-Type": "application/json"} if data is not None else {}
        if self.token and method in ("PUT", "POST", "DELETE"):
            headers["Authorization"] = f"Bearer {self.token}"
        timeout = (self.timeout, read_timeout if read_timeout is not None else self.timeout)
        attempt = 0
        while True:
            try:
                response = self.session.request(method, url, params=params, data=data,
                                                headers=headers, timeout=timeout)
            except (requests.ConnectionError, requests.Timeout) as exc:
                failure: str = f"{type(exc).__name__}: {exc}"
                status = None
            else:
                if response.status_code < 500:
                    return response
                failure = f"HTTP {response.status_code}: {response.text[:200]}"
                status = response.status_code
            if attempt >= self.retries:
                message = f"{method} {url} failed after {attempt + 1} attempt(s): {failure}"
                if status is None:
                    raise EngineUnreachable(message)
                raise ServerError(message, status)
            delay = self.backoff * (2 ** attempt)
            log.warning("%s %s: %s; retry %d/%d in %.2fs", method, path, failure,
                        attempt + 1, self.retries, delay)
            self._sleep(delay)
            attempt += 1

    @staticmethod
    def _message(response: requests.Response) -> str:
        text = response.text.strip()
        try:
            parsed = response.json()
        except ValueError:
            return text or response.reason or f"HTTP {response.status_code}"
        if isinstance(parsed, dict):
            for name in ("error", "message", "reason"):
                if isinstance(parsed.get(name), str):
                    return parsed[name]
        return text

    def _check(self, response: requests.Response, path: str) -> None:
        status = response.status_code
        if status < 300:
            return
        if status == 400:
            raise Rejected(self._message(response), path)
        if status == 401:
            raise ReadOnly(f"{path}: engine refused the write (HTTP 401, token): "
                           f"{self._message(response)}")
        if status == 403:
            raise ReadOnly(f"{path}: engine is read-only (HTTP 403): {self._message(response)}")
        if status == 404:
            raise NotFound(f"{path}: not found (HTTP 404)")
        raise SFlowRTError(f"{path}: unexpected HTTP {status}: {self._message(response)}")

    def _json(self, response: requests.Response, path: str) -> Any:
        try:
            return response.json()
        except ValueError:
            raise BadResponse(f"{path}: body is not JSON: {response.text[:200]!r}") from None

    def _get(self, path: str, params: dict[str, Any] | None = None,
             read_timeout: float | None = None) -> Any:
        response = self._request("GET", path, params=params, read_timeout=read_timeout)
        self._check(response, path)
        return self._json(response, path)

    def _get_optional(self, path: str) -> Any | None:
        response = self._request("GET", path)
        if response.status_code == 404:
            return None
        self._check(response, path)
        return self._json(response, path)

    def _put(self, path: str, body: Any) -> None:
        self._check(self._request("PUT", path, body=body), path)

    def _delete(self, path: str) -> None:
        response = self._request("DELETE", path)
        if response.status_code != 404:
            self._check(response, path)

    @staticmethod
    def _name(name: str, what: str) -> str:
        if not isinstance(name, str) or not name or "/" in name:
            raise ValueError(f"{what} name must be a non-empty string without '/', got {name!r}")
        return quote(name, safe="")

    @staticmethod
    def _spec(spec: Any, what: str) -> dict[str, Any]:
        if not isinstance(spec, dict):
            raise ValueError(f"{what} spec must be a dict, got {type(spec).__name__}")
        return spec

    # -- engine ----------------------------------------------------------------

    def version(self) -> str:
        """The engine's version string, e.g. ``3.0-1702`` (``/version`` is text/plain)."""
        response = self._request("GET", "/version")
        self._check(response, "/version")
        text = response.text.strip()
        if not text or "\n" in text or text.startswith(("{", "[", "<")):
            raise BadResponse(f"/version: not a version string: {text[:80]!r}")
        return text

    def agents(self) -> dict[str, dict[str, Any]]:
        """``/agents/json``: agent address → its datagram/sample counters."""
        body = self._get("/agents/json")
        if not isinstance(body, dict) or not all(isinstance(v, dict) for v in body.values()):
            raise BadResponse("/agents/json: expected an object of agent objects")
        return body

    def analyzer(self) -> dict[str, Any]:
        """``/analyzer/json``: the engine's own counters."""
        body = self._get("/analyzer/json")
        if not isinstance(body, dict):
            raise BadResponse("/analyzer/json: expected an object")
        return body

    # -- flows -----------------------------------------------------------------

    def define_flow(self, name: str, spec: dict[str, Any]) -> None:
        """Create or replace flow ``name`` (PUT ``/flow/{name}/json``)."""
        self._put(f"/flow/{self._name(name, 'flow')}/json", self._spec(spec, "flow"))
        self._fs[name] = str(spec.get("fs") or DEFAULT_FS)

    def get_flow(self, name: str) -> dict[str, Any] | None:
        """The stored definition (defaults filled in), or None if there is none."""
        body = self._get_optional(f"/flow/{self._name(name, 'flow')}/json")
        if body is None:
            self._fs.pop(name, None)
            return None
        if not isinstance(body, dict):
            raise BadResponse(f"/flow/{name}/json: expected an object")
        self._fs[name] = str(body.get("fs") or DEFAULT_FS)
        return body

    def delete_flow(self, name: str) -> None:
        """Remove flow ``name``; removing an absent one is not an error."""
        self._delete(f"/flow/{self._name(name, 'flow')}/json")
        self._fs.pop(name, None)

    def flows(self) -> dict[str, dict[str, Any]]:
        """Every flow definition, by name (``/flow/json``)."""
        body = self._get("/flow/json")
        if not isinstance(body, dict):
            raise BadResponse("/flow/json: expected an object")
        return body

    # -- thresholds ------------------------------------------------------------

    def define_threshold(self, name: str, spec: dict[str, Any]) -> None:
        """Create or replace threshold ``name``."""
        self._put(f"/threshold/{self._name(name, 'threshold')}/json",
                  self._spec(spec, "threshold"))

    def get_threshold(self, name: str) -> dict[str, Any] | None:
        """The stored threshold, or None if there is none."""
        body = self._get_optional(f"/threshold/{self._name(name, 'threshold')}/json")
        if body is not None and not isinstance(body, dict):
            raise BadResponse(f"/threshold/{name}/json: expected an object")
        return body

    def delete_threshold(self, name: str) -> None:
        """Remove threshold ``name``; removing an absent one is not an error."""
        self._delete(f"/threshold/{self._name(name, 'threshold')}/json")

    def thresholds(self) -> dict[str, dict[str, Any]]:
        """Every threshold, by name (``/threshold/json``)."""
        body = self._get("/threshold/json")
        if not isinstance(body, dict):
            raise BadResponse("/threshold/json: expected an object")
        return body

    # -- data ------------------------------------------------------------------

    def _separator(self, name: str) -> str:
        if name not in self._fs:
            if self.get_flow(name) is None:
                raise NotFound(f"flow {name!r} is not defined on {self.base_url}")
        return self._fs[name]

    def activeflows(self, name: str, agent: str = "ALL", max_flows: int = 100,
                    min_value: float = 0.0, agg_mode: str | None = None,
                    filter: str | None = None) -> list[ActiveFlow]:
        """Largest flows of definition ``name``, value descending (same unit as the flow).

        Raises :class:`NotFound` if the flow is not defined (its ``fs`` is needed
        to split keys).
        """
        separator = self._separator(name)
        params: dict[str, Any] = {"maxFlows": int(max_flows), "minValue": min_value}
        if agg_mode is not None:
            params["aggMode"] = agg_mode
        if filter is not None:
            params["filter"] = filter
        path = f"/activeflows/{quote(agent, safe=';')}/{self._name(name, 'flow')}/json"
        body = self._get(path, params)
        if not isinstance(body, list):
            raise BadResponse(f"{path}: expected an array")
        flows = []
        for obj in body:
            if not isinstance(obj, dict):
                raise BadResponse(f"{path}: record is not an object: {obj!r}")
            key = obj.get("key")
            key = "" if key is None else str(key)
            flows.append(ActiveFlow(
                key=key,
                value=float(_field(obj, "value", (int, float), path)),
                agent=str(obj.get("agent", "")),
                data_source=str(obj.get("dataSource", "")),
                keys=key.split(separator) if key else [],
            ))
        return flows

    def events(self, event_id: int = -1, max_events: int = 100, timeout: float = 0,
               threshold_id: str | None = None) -> list[Event]:
        """One ``/events/json`` long poll: events newer than ``event_id``, OLDEST first.

        The server waits up to ``timeout`` s for a newer event; the read timeout
        allows that plus :data:`LONG_POLL_MARGIN`.
        """
        # whole seconds go out as integers ("20", not "20.0"): sFlow-RT parses an int
        wait: float = int(timeout) if float(timeout).is_integer() else timeout
        params: dict[str, Any] = {"eventID": int(event_id), "maxEvents": int(max_events),
                                  "timeout": wait}
        if threshold_id is not None:
            params["thresholdID"] = threshold_id
        body = self._get("/events/json", params,
                         read_timeout=max(self.timeout, timeout + LONG_POLL_MARGIN))
        if not isinstance(body, list):
            raise BadResponse("/events/json: expected an array")
        events = [parse_event(obj) for obj in body]
        events.sort(key=lambda e: e.event_id)
        return events

    def topology(self) -> dict[str, Any] | None:
        """``/topology/json``, or None when the engine has none."""
        body = self._get_optional("/topology/json")
        if body is not None and not isinstance(body, dict):
            raise BadResponse("/topology/json: expected an object")
        return body

    def port_map(self) -> list[PortMapEntry]:
        """(agent, ifIndex) → (dpid, OpenFlow port, name) for every known port.

        From the embedded engine's ``/demon/portmap/json``; a real sFlow-RT lacks
        it, so fall back to a loaded ``/topology/json``. Raises
        :class:`Unsupported` when neither can tell.
        """
        body = self._get_optional("/demon/portmap/json")
        if body is None:
            topology = self.topology()
            if not topology:
                raise Unsupported("engine has neither /demon/portmap/json nor a topology")
            return port_map_from_topology(topology)
        if not isinstance(body, list):
            raise BadResponse("/demon/portmap/json: expected an array")
        return [parse_port_map_entry(obj) for obj in body]


class EventStream:
    """Loss-free, duplicate-free consumption of ``/events/json``.

    ``poll()`` long-polls from :attr:`last_event_id` and advances it only after
    a batch has been parsed, so a failed poll (which raises the client's
    :class:`SFlowRTError`) leaves the cursor where it was and the next poll
    resumes from it: nothing is skipped and nothing is delivered twice. Events
    at or below the cursor are dropped even if an engine returns them.

    Engine restarts: a restarted engine numbers its events from the start
    again, so the cursor may be *ahead* of every id it has (a plain resume
    would wait for ids that will not come) or point at a different event. So
    the stream verifies the cursor after any error, on the first poll with a
    cursor set from outside (one the daemon persisted), and after every empty
    long poll: it asks, without waiting, for the events from the cursor's id on
    (``eventID=cursor-1``). If there are none, or the event with the cursor's
    id is not the one delivered under that id (timestamp, threshold, flow key,
    agent or data source differ), the engine restarted: the cursor goes back to
    -1 and the stream delivers what the new engine holds (its newest
    ``max_events``), counting :attr:`restarts`; the caller should then define
    its flows and thresholds again (``on_restart``). A restart is always seen
    by a pending long poll (its connection breaks); one that happens between
    two polls is seen at the next empty poll, unless the new engine has by
    then produced more events than the cursor and the stream has no
    fingerprint to compare (cursor set from storage).
    """

    def __init__(self, client: SFlowRTClient, threshold_id: str | None = None,
                 max_events: int = 100, poll_timeout: float = 20,
                 on_restart: Callable[[], None] | None = None) -> None:
        if max_events < 1:
            raise ValueError(f"max_events must be >= 1, got {max_events}")
        if poll_timeout < 0:
            raise ValueError(f"poll_timeout must be >= 0, got {poll_timeout}")
        self.client = client
        self.threshold_id = threshold_id
        self.max_events = max_events
        self.poll_timeout = poll_timeout
        self.on_restart = on_restart
        self._last_event_id = -1
        self._last_fingerprint: tuple[Any, ...] | None = None
        self._verify = False
        self.restarts = 0

    @property
    def last_event_id(self) -> int:
        """Id of the newest event delivered (-1 before the first)."""
        return self._last_event_id

    @last_event_id.setter
    def last_event_id(self, value: int) -> None:
        self._last_event_id = int(value)
        self._last_fingerprint = None
        self._verify = self._last_event_id >= 0

    @staticmethod
    def _fingerprint(event: Event) -> tuple[Any, ...]:
        return (event.timestamp_ms, event.threshold_id, event.flow_key, event.agent,
                event.data_source)

    def _engine_restarted(self) -> bool:
        cursor = self._last_event_id
        since = self.client.events(event_id=cursor - 1, max_events=self.max_events, timeout=0,
                                   threshold_id=self.threshold_id)
        if not since:
            # The engine that gave us event `cursor` would still hold it, or newer ones.
            return True
        at_cursor = [e for e in since if e.event_id == cursor]
        if at_cursor and self._last_fingerprint is not None:
            return self._fingerprint(at_cursor[0]) != self._last_fingerprint
        return since[0].event_id < cursor

    def poll(self) -> list[Event]:
        """New events, oldest first (``[]`` when the long poll timed out).

        Raises the client's :class:`SFlowRTError` on failure; the cursor is kept.
        """
        try:
            if self._verify:
                if self._engine_restarted():
                    log.warning("engine restarted (event %d is gone or another event): "
                                "resuming from its newest %d events", self._last_event_id,
                                self.max_events)
                    self.restarts += 1
                    self._last_event_id = -1
                    self._last_fingerprint = None
                    if self.on_restart is not None:
                        self.on_restart()
                self._verify = False
            events = self.client.events(event_id=self._last_event_id,
                                        max_events=self.max_events,
                                        timeout=self.poll_timeout,
                                        threshold_id=self.threshold_id)
        except SFlowRTError:
            self._verify = self._last_event_id >= 0
            raise
        fresh = [e for e in events if e.event_id > self._last_event_id]
        if len(fresh) < len(events):
            log.debug("dropped %d event(s) at or below cursor %d",
                      len(events) - len(fresh), self._last_event_id)
        if len(events) >= self.max_events:
            log.warning("a poll returned max_events (%d) events: older ones after cursor %d "
                        "may be missing; raise max_events", self.max_events, self._last_event_id)
        if fresh:
            self._last_event_id = fresh[-1].event_id
            self._last_fingerprint = self._fingerprint(fresh[-1])
        elif self._last_event_id >= 0:
            self._verify = True
        return fresh
