"""The RPC server a controller component runs (``docs/rpc-protocol.md``).

Lines come and go through :class:`~demon.rpc.lineserver.LineServer`: one selector
thread for every connection, with its limits (connections, authentication and
idle timeouts, slow readers, descriptors running out). This module decides what
a line means: it answers bad lines and refused tokens itself, on that thread,
and hands only authenticated calls to a bounded pool of worker threads
(pipelined requests are answered in any order; a call waiting on a switch never
holds up the others). So a connection costs no thread of its own, however many
there are and whatever they send. Every bad line gets an error reply and the
connection stays usable; refused tokens are logged at most once per
``log_every`` seconds, with a count.

Standard library only: it runs inside POX.
"""

from __future__ import annotations

import logging
import queue
import threading
from typing import Any, Callable, Optional, Protocol

from demon.rpc import protocol as p
from demon.rpc.lineserver import Connection, LineServer
from demon.rpc.token import tokens_equal

log = logging.getLogger("demon.rpc.server")

Executor = Callable[[Callable[[], Any]], Any]


class Handler(Protocol):
    """What a component implements. ``call`` may raise ``RpcError``."""

    def methods(self) -> set[str]: ...

    def call(self, method: str, params: dict[str, Any]) -> Any: ...


def _direct(fn: Callable[[], Any]) -> Any:
    return fn()


class _Pool:
    """At most ``size`` daemon threads, started as work arrives and kept for the next."""

    def __init__(self, size: int) -> None:
        self.size = size
        self._tasks: "queue.SimpleQueue[Optional[Callable[[], None]]]" = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._threads = 0
        self._idle = 0

    def submit(self, fn: Callable[[], None]) -> None:
        with self._lock:
            start = self._idle == 0 and self._threads < self.size
            if start:
                self._threads += 1
            else:
                self._idle = max(0, self._idle - 1)
        self._tasks.put(fn)
        if start:
            threading.Thread(target=self._work, name="rpc-worker", daemon=True).start()

    def _work(self) -> None:
        while True:
            fn = self._tasks.get()
            if fn is None:
                return
            try:
                fn()
            finally:
                with self._lock:
                    self._idle += 1

    def stop(self) -> None:
        with self._lock:
            threads = self._threads
        for _ in range(threads):
            self._tasks.put(None)


class RpcServer:
    """Serve ``handler`` on ``address`` (``tcp:127.0.0.1:7733``, ``tcp:127.0.0.1:0``, ``unix:/path``).

    ``executor(fn)`` runs ``fn`` and returns its result; a component whose state
    belongs to an event loop passes one that hands ``fn`` to that loop and
    waits. Defaults to ``handler.executor`` if present, else a direct call. The
    limits are :class:`~demon.rpc.lineserver.LineServer`'s.
    """

    def __init__(self, address: str, token: str, handler: Handler, *,
                 executor: Executor | None = None, max_queue: int = 10000,
                 max_in_flight: int = 64, call_timeout: float = 30.0, send_timeout: float = 10.0,
                 max_connections: int = 256, auth_timeout: float = 10.0, idle_timeout: float = 600.0,
                 workers: int = 32, log_every: float = 10.0, backlog: int = 128) -> None:
        if not token:
            raise ValueError("token: must not be empty")
        self.kind, where = p.parse_address(address)
        self.token = token
        self.handler = handler
        self.executor: Executor = executor or getattr(handler, "executor", None) or _direct
        self.call_timeout = call_timeout
        #: requests answered, by method (unknown methods count as "other", unparsable lines
        #: as "(bad line)"), and error replies by (method, code): read by the metrics
        self.requests_total: dict[str, int] = {}
        self.errors_total: dict[tuple[str, int], int] = {}
        self._io = LineServer(
            self.kind, where, self._dispatch, max_line=p.MAX_LINE,
            overlong=p.encode_error(None, p.INVALID_REQUEST, f"line longer than {p.MAX_LINE} bytes"),
            max_queue=max_queue, max_in_flight=max_in_flight, send_timeout=send_timeout,
            max_connections=max_connections, auth_timeout=auth_timeout, idle_timeout=idle_timeout,
            log_every=log_every, backlog=backlog, address_text=p.format_address)
        self._pool = _Pool(workers)

    # -- life cycle ---------------------------------------------------------

    def start(self) -> "RpcServer":
        self._io.start(name=f"rpc-io {self.address}")
        log.info("rpc: listening on %s", self.address)
        return self

    def __enter__(self) -> "RpcServer":
        return self if self._io.started else self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def address(self) -> str:
        """The bound address (with the real port when 0 was asked for)."""
        return p.format_address(self.kind, self._io.address)

    def close(self) -> None:
        self._io.close()
        self._pool.stop()

    # -- events -------------------------------------------------------------

    def publish(self, event: str, params: dict[str, Any]) -> int:
        """Queue an event for every subscribed connection; returns how many got it."""
        data = p.encode_event(event, params)
        targets = self._subscribed()
        for conn in targets:
            self._io.send(conn, data)
        return len(targets)

    def _subscribed(self) -> list[Connection]:
        with self._io.lock:
            return [c for c in self._io.connections.values() if c.subscribed and not c.closed]

    @property
    def subscribers(self) -> int:
        return len(self._subscribed())

    @property
    def connections(self) -> int:
        return len(self._io.connections)

    @property
    def _connections(self) -> dict[int, Connection]:
        return self._io.connections

    def methods(self) -> set[str]:
        return set(self.handler.methods())

    # -- lines --------------------------------------------------------------

    def _dispatch(self, conn: Connection, line: bytes) -> None:
        """One line (on the I/O thread): answered here unless it is a call to run."""
        try:
            request = p.decode_request(line)
        except p.BadRequest as exc:
            self._count("(bad line)", exc.code)
            self._io.send(conn, p.encode_error(exc.request_id, exc.code, exc.message))
            return
        method = request.method if request.method in self.methods() or request.method == "subscribe" else "other"
        if not tokens_equal(self.token, request.token):
            self._count(method, p.UNAUTHORIZED)
            self._io.throttled.warning("token", "rpc: %s token from %s (method %r): refused",
                                       "missing" if request.token is None else "wrong", conn.peer, request.method)
            self._io.send(conn, p.encode_error(request.id, p.UNAUTHORIZED, "missing or wrong token"))
            return
        conn.authed = True
        if request.method == "subscribe":
            self._count("subscribe", None)
            conn.subscribed = True
            self._io.send(conn, p.encode_result(request.id, {"subscribed": True}))
            return
        if method == "other":
            self._count(method, p.METHOD_NOT_FOUND)
            self._io.send(conn, p.encode_error(request.id, p.METHOD_NOT_FOUND, f"unknown method {request.method!r}"))
            return
        self._io.begin(conn)
        self._pool.submit(lambda: self._serve(conn, request))

    def _serve(self, conn: Connection, request: p.Request) -> None:
        try:
            self._io.send(conn, self._answer(request))
        finally:
            self._io.done(conn)

    def _answer(self, request: p.Request) -> bytes:
        handler = self.handler
        try:
            result = self.executor(lambda: handler.call(request.method, request.params))
            self._count(request.method, None)
            return p.encode_result(request.id, result)
        except p.RpcError as exc:
            self._count(request.method, exc.code)
            return p.encode_error(request.id, exc.code, exc.message)
        except Exception as exc:  # the component must keep serving whatever a call does
            log.exception("rpc: %s failed", request.method)
            self._count(request.method, p.INTERNAL_ERROR)
            return p.encode_error(request.id, p.INTERNAL_ERROR, f"{request.method}: {type(exc).__name__}: {exc}")

    def _count(self, method: str, code: int | None) -> None:
        with self._io.lock:
            self.requests_total[method] = self.requests_total.get(method, 0) + 1
            if code is not None:
                self.errors_total[(method, code)] = self.errors_total.get((method, code), 0) + 1
