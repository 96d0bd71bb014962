"""The engine's HTTP API: sFlow-RT's REST paths, JSON shapes, status codes and units.

Standard library only (``http.server.ThreadingHTTPServer``). Every request
takes the engine's lock for the time of one query; ``/events/json`` waits on
it (a condition) for new events. See ``docs/engine-api.md``.
"""

from __future__ import annotations

import json
import logging
import math
import re
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Callable
from urllib.parse import parse_qs, unquote, urlsplit

from sflow.engine import AGG_MODES, VERSION, Engine
from sflow.flowdef import DefinitionError, parse_flow, parse_threshold

__all__ = ["EngineHTTPServer", "serve_http", "MAX_LONG_POLL"]

log = logging.getLogger(__name__)

#: Upper bound on one long poll, seconds (clients use 20-60).
MAX_LONG_POLL = 300.0
_MAX_BODY = 1 << 20
_ALL_AGENTS = {"ALL", "TOPOLOGY", "EDGE", "CORE"}


class HTTPError(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def _agents(path_part: str) -> set[str] | None:
    """The ``{agent}`` path parameter: ``ALL`` (or a topology token) or ``a;b;c``."""
    if path_part in _ALL_AGENTS:
        return None
    return {a for a in path_part.split(";") if a}


class _Query:
    """Typed access to query parameters with 400s that name the parameter."""

    def __init__(self, query: str) -> None:
        self.params = parse_qs(query, keep_blank_values=True)

    def text(self, name: str) -> str | None:
        values = self.params.get(name)
        return values[-1] if values else None

    def number(self, name: str, default: float, low: float = -math.inf) -> float:
        raw = self.text(name)
        if raw is None or raw == "":
            return default
        try:
            value = float(raw)
        except ValueError:
            raise HTTPError(400, f"{name}: expected a number, got {raw!r}") from None
        if not math.isfinite(value) or value < low:
            raise HTTPError(400, f"{name}: must be a finite number >= {low}, got {raw!r}")
        return value


class EngineHTTPServer(ThreadingHTTPServer):
    """Serves one :class:`Engine`; ``readonly`` refuses PUT/DELETE with 403."""

    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, address: tuple[str, int], engine: Engine, readonly: bool = False,
                 clock: Callable[[], float] = time.time, extra_analyzer: Callable[[], dict[str, Any]] | None = None) -> None:
        if ":" in address[0]:
            self.address_family = socket.AF_INET6
        super().__init__(address, _Handler)
        self.engine = engine
        self.readonly = readonly
        self.clock = clock
        self.extra_analyzer = extra_analyzer
        self.closing = threading.Event()
        self._connections: set[socket.socket] = set()
        self._connections_lock = threading.Lock()

    def track(self, conn: socket.socket, open_: bool) -> None:
        with self._connections_lock:
            (self._connections.add if open_ else self._connections.discard)(conn)

    def server_close(self) -> None:
        """Close the listener *and* every open connection (keep-alive, long polls).

        Otherwise a stopped engine would go on answering clients that hold a
        persistent connection, and a restart would go unnoticed by them.
        """
        self.closing.set()
        super().server_close()
        with self._connections_lock:
            conns = list(self._connections)
        for conn in conns:
            try:
                conn.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    @property
    def url(self) -> str:
        host, port = self.server_address[:2]
        host = f"[{host}]" if ":" in str(host) else host
        return f"http://{host}:{port}"


class _Handler(BaseHTTPRequestHandler):
    server: EngineHTTPServer
    protocol_version = "HTTP/1.1"
    server_version = f"demon-sflow/{VERSION}"

    def setup(self) -> None:
        super().setup()
        self.server.track(self.connection, True)

    def finish(self) -> None:
        try:
            super().finish()
        finally:
            self.server.track(self.connection, False)

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - stdlib signature
        log.debug("%s %s", self.address_string(), format % args)

    # --- plumbing --------------------------------------------------------------------

    def _send(self, status: int, body: bytes, content_type: str) -> None:
        self.send_response(status)
        if status != 204:
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
        else:
            self.send_header("Content-Length", "0")
        self.end_headers()
        if status != 204 and self.command != "HEAD":
            self.wfile.write(body)

    def _json(self, obj: Any, status: int = 200) -> None:
        self._send(status, json.dumps(obj).encode(), "application/json")

    def _dispatch(self, method: str) -> None:
        try:
            parts = urlsplit(self.path)
            segments = [unquote(s) for s in parts.path.split("/")[1:]]
            raw = self._read_raw()  # always drained: leftovers would corrupt a keep-alive stream
            body = self._parse_body(raw) if method == "PUT" else None
            if method in ("PUT", "DELETE") and self.server.readonly:
                raise HTTPError(403, "read-only engine: PUT and DELETE are disabled")
            self._route(method, segments, _Query(parts.query), body)
        except HTTPError as exc:
            self._send(exc.status, (exc.message + "\n").encode(), "text/plain; charset=utf-8")
        except DefinitionError as exc:
            self._send(400, (str(exc) + "\n").encode(), "text/plain; charset=utf-8")
        except (BrokenPipeError, ConnectionResetError):
            pass
        except Exception:  # noqa: BLE001 - one bad request must not kill the server
            log.exception("error serving %s %s", method, self.path)
            self._send(500, b"internal error\n", "text/plain; charset=utf-8")

    def _read_raw(self) -> bytes:
        try:
            length = int(self.headers.get("Content-Length") or 0)
        except ValueError:
            raise HTTPError(400, "Content-Length: not a number") from None
        if length > _MAX_BODY:
            self.close_connection = True
            raise HTTPError(413, f"body: larger than {_MAX_BODY} bytes")
        return self.rfile.read(length) if length > 0 else b""

    @staticmethod
    def _parse_body(raw: bytes) -> Any:
        try:
            return json.loads(raw or b"null")  # JSON whatever the Content-Type says
        except ValueError as exc:
            raise HTTPError(400, f"body: not JSON: {exc}") from None

    def do_GET(self) -> None:  # noqa: N802 - stdlib naming
        self._dispatch("GET")

    def do_HEAD(self) -> None:  # noqa: N802
        self._dispatch("GET")

    def do_PUT(self) -> None:  # noqa: N802
        self._dispatch("PUT")

    def do_POST(self) -> None:  # noqa: N802
        self._dispatch("PUT")

    def do_DELETE(self) -> None:  # noqa: N802
        self._dispatch("DELETE")

    # --- routes ----------------------------------------------------------------------

    def _route(self, method: str, seg: list[str], q: _Query, body: Any) -> None:
        engine = self.server.engine
        n = len(seg)
        if seg == ["version"] and method == "GET":
            self._send(200, VERSION.encode(), "text/plain; charset=utf-8")
            return
        if n < 2 or seg[-1] != "json":
            raise HTTPError(404, f"no such resource: {self.path}")
        head = seg[0]
        if head in ("flow", "threshold") and n in (2, 3):
            self._definitions(method, head, seg[1] if n == 3 else None, body)
            return
        if method != "GET":
            raise HTTPError(405, f"{method} not allowed on {self.path}")
        now = self.server.clock()
        if seg == ["events", "json"]:
            self._json(self._events(q))
        elif head == "activeflows" and n == 4:
            self._json(self._activeflows(seg[1], seg[2], q, now))
        elif head == "metric" and n == 4:
            self._json(self._metric(seg[1], seg[2], now))
        elif seg == ["agents", "json"]:
            only = set(q.params.get("agent", [])) or None
            with engine.lock:
                body = engine.agents(now, only)
            self._json(body)
        elif seg == ["flowkeys", "json"]:
            with engine.lock:
                body = engine.flow_keys(now)
            self._json(body)
        elif seg == ["analyzer", "json"]:
            with engine.lock:
                body = engine.analyzer()
            if self.server.extra_analyzer is not None:
                body.update(self.server.extra_analyzer())
            self._json(body)
        elif seg == ["demon", "portmap", "json"]:
            with engine.lock:
                body = engine.port_map(now)
            self._json(body)
        else:
            raise HTTPError(404, f"no such resource: {self.path}")

    def _definitions(self, method: str, kind: str, name: str | None, body: Any) -> None:
        engine = self.server.engine
        flows = kind == "flow"
        if name is None:
            if method != "GET":
                raise HTTPError(405, f"{method} not allowed on /{kind}/json")
            with engine.lock:  # answer outside the lock: a slow client must not stall ingest
                defs = engine.flows() if flows else engine.thresholds()
            self._json({k: v.to_json() for k, v in defs.items()})
            return
        if method == "GET":
            with engine.lock:
                found = engine.flow(name) if flows else engine.threshold(name)
            if found is None:
                raise HTTPError(404, f"no {kind} named {name!r}")
            self._json(found.to_json())
        elif method == "PUT":
            if flows:
                fd = parse_flow(name, body)
                with engine.lock:
                    engine.set_flow(fd)
            else:
                td = parse_threshold(name, body)
                with engine.lock:
                    engine.set_threshold(td)
            self._send(204, b"", "")
        else:
            with engine.lock:
                existed = engine.delete_flow(name) if flows else engine.delete_threshold(name)
            if not existed:
                raise HTTPError(404, f"no {kind} named {name!r}")
            self._send(204, b"", "")

    def _events(self, q: _Query) -> list[dict[str, Any]]:
        engine = self.server.engine
        cursor = int(q.number("eventID", -1))
        max_events = int(q.number("maxEvents", 100, low=0))
        timeout = min(q.number("timeout", 0, low=0), MAX_LONG_POLL)
        threshold_id = q.text("thresholdID") or None
        deadline = time.monotonic() + timeout
        with engine.lock:
            while True:
                events = engine.events(cursor, max_events, threshold_id)
                remaining = deadline - time.monotonic()
                if events or remaining <= 0 or self.server.closing.is_set():
                    return events
                engine.lock.wait(min(remaining, 1.0))

    def _activeflows(self, agent: str, name: str, q: _Query, now: float) -> list[dict[str, Any]]:
        agg = (q.text("aggMode") or "max").lower()
        if agg not in AGG_MODES:
            raise HTTPError(400, f"aggMode: expected one of {', '.join(AGG_MODES)}, got {agg!r}")
        if q.text("filter"):
            raise HTTPError(400, "filter: not supported by the embedded engine")
        max_flows = int(q.number("maxFlows", 100, low=0))
        min_value = q.number("minValue", 0)
        with self.server.engine.lock:
            flows = self.server.engine.active_flows(name, now, _agents(agent), max_flows,
                                                    min_value, agg)
        if flows is None:
            raise HTTPError(404, f"no flow named {name!r}")
        return flows

    def _metric(self, agent: str, metrics: str, now: float) -> list[dict[str, Any]]:
        out = []
        engine = self.server.engine
        for metric in metrics.split(","):
            data_source = None
            name = metric.split(":", 1)[1] if metric.startswith("max:") else metric
            match = re.fullmatch(r"([0-9.]+)\.([^.].*)", name)
            with engine.lock:
                if engine.flow(name) is None and match and engine.flow(match.group(2)):
                    data_source, name = match.group(1), match.group(2)
                stat = engine.flow_metric(name, now, _agents(agent), data_source)
            if stat is None:
                stat = {"metricName": metric, "metricN": 0}
            else:
                stat["metricName"] = metric
            out.append(stat)
        return out


def serve_http(engine: Engine, host: str = "127.0.0.1", port: int = 8008, readonly: bool = False,
               clock: Callable[[], float] = time.time,
               extra_analyzer: Callable[[], dict[str, Any]] | None = None) -> EngineHTTPServer:
    """Bind the API (port 0: ephemeral); the caller runs ``serve_forever()``."""
    return EngineHTTPServer((host, port), engine, readonly, clock, extra_analyzer)
