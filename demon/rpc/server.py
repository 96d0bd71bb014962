"""The RPC server a controller component runs (``docs/rpc-protocol.md``).

One reader thread per connection, and each request runs on a pooled worker
thread (daemon threads, reused while busy) so pipelined requests are answered
in any order and a call waiting on a switch never holds up the others. Every
bad line gets an error reply and the server keeps serving; only an oversized
line closes its connection (the stream cannot be resynchronised). Replies are
written by the worker (a send timeout bounds a peer that stops reading);
events go through a bounded per-connection queue and writer thread, so a slow
or dead subscriber is disconnected instead of blocking ``publish``.

Standard library only: it runs inside POX.
"""

from __future__ import annotations

import logging
import os
import queue
import socket
import stat
import struct
import threading
import time
from typing import Any, Callable, Optional, Protocol

from demon.rpc import protocol as p
from demon.rpc.token import tokens_equal

log = logging.getLogger("demon.rpc.server")

Executor = Callable[[Callable[[], Any]], Any]


class Handler(Protocol):
    """What a component implements. ``call`` may raise ``RpcError``.

    A handler may also have an ``executor`` attribute (see ``RpcServer``).
    """

    def methods(self) -> set[str]: ...

    def call(self, method: str, params: dict[str, Any]) -> Any: ...


def _direct(fn: Callable[[], Any]) -> Any:
    return fn()


class _WorkerPool:
    """Unbounded daemon threads, reused when idle (thread start-up costs more than a call)."""

    def __init__(self, idle_seconds: float = 60.0) -> None:
        self._tasks: "queue.SimpleQueue[Callable[[], None]]" = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._idle = 0
        self._idle_seconds = idle_seconds

    def submit(self, fn: Callable[[], None]) -> None:
        with self._lock:
            if self._idle:
                self._idle -= 1  # claimed: exactly one idle worker will take it
                self._tasks.put(fn)
                return
        threading.Thread(target=self._work, args=(fn,), name="rpc-worker", daemon=True).start()

    def _work(self, fn: Callable[[], None]) -> None:
        while True:
            fn()
            with self._lock:
                self._idle += 1
            while True:
                try:
                    fn = self._tasks.get(timeout=self._idle_seconds)
                    break
                except queue.Empty:
                    with self._lock:
                        if self._idle:  # not claimed meanwhile: retire
                            self._idle -= 1
                            return


class _Connection:
    def __init__(self, server: "RpcServer", sock: socket.socket, peer: str) -> None:
        self.server = server
        self.sock = sock
        self.peer = peer
        self.subscribed = False
        self.closed = threading.Event()
        self.outbox: "queue.Queue[Optional[bytes]]" = queue.Queue(server.max_queue)
        self.send_lock = threading.Lock()
        self.in_flight = threading.BoundedSemaphore(server.max_in_flight)
        self.reader = threading.Thread(target=self._read_loop, name=f"rpc-read {peer}", daemon=True)
        self.writer = threading.Thread(target=self._write_loop, name=f"rpc-write {peer}", daemon=True)

    def start(self) -> None:
        self.writer.start()
        self.reader.start()

    def reply(self, data: bytes) -> None:
        """Write a reply now, from the calling thread."""
        if self.closed.is_set():
            return
        try:
            with self.send_lock:
                self.sock.sendall(data)
        except OSError as exc:  # includes the send timeout of a peer that stopped reading
            log.info("rpc: %s: reply not delivered (%s): disconnecting it", self.peer, exc)
            self.close()

    def send(self, data: bytes) -> None:
        """Queue a line for the writer thread (events: never blocks the caller)."""
        if self.closed.is_set():
            return
        try:
            self.outbox.put_nowait(data)
        except queue.Full:
            log.warning("rpc: %s is not reading (%d lines queued): disconnecting it",
                        self.peer, self.server.max_queue)
            self.close()

    def close(self) -> None:
        if self.closed.is_set():
            return
        self.closed.set()
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        try:
            self.outbox.put_nowait(None)
        except queue.Full:
            pass  # the writer's sendall fails on the shut-down socket and it exits
        self.server._forget(self)

    def _write_loop(self) -> None:
        try:
            while True:
                data = self.outbox.get()
                if data is None or self.closed.is_set():
                    break
                with self.send_lock:
                    self.sock.sendall(data)
        except OSError:
            pass
        finally:
            self.close()
            try:
                self.sock.close()
            except OSError:
                pass

    def _read_loop(self) -> None:
        stream = self.sock.makefile("rb")
        try:
            while not self.closed.is_set():
                line = stream.readline(p.MAX_LINE + 2)
                if not line:
                    break
                if not line.endswith(b"\n"):
                    if len(line) < p.MAX_LINE + 2:
                        break  # peer went away mid-line: nobody to answer
                    log.warning("rpc: line longer than %d bytes from %s: closing", p.MAX_LINE, self.peer)
                    self.reply(p.encode_error(None, p.INVALID_REQUEST, f"line longer than {p.MAX_LINE} bytes"))
                    self._close_after_flush()
                    return
                if not line.strip():
                    continue
                self._dispatch(line)
        except (OSError, ValueError):
            pass
        finally:
            if not self.closed.is_set():
                # A peer that only half-closed still gets the replies in flight.
                self._close_after_flush()

    def _close_after_flush(self) -> None:
        # Wait for in-flight requests, then stop the writer after what is queued.
        def finish() -> None:
            deadline = time.monotonic() + self.server.call_timeout
            for _ in range(self.server.max_in_flight):
                if not self.in_flight.acquire(timeout=max(0.0, deadline - time.monotonic())):
                    break
            try:
                self.outbox.put(None, timeout=1.0)
            except queue.Full:
                pass
            self.writer.join(timeout=2.0)
            self.close()
        threading.Thread(target=finish, name=f"rpc-close {self.peer}", daemon=True).start()

    def _dispatch(self, line: bytes) -> None:
        try:
            request = p.decode_request(line)
        except p.BadRequest as exc:
            self.reply(p.encode_error(exc.request_id, exc.code, exc.message))
            return
        if not tokens_equal(self.server.token, request.token):
            log.warning("rpc: %s token from %s (method %s): refused",
                        "missing" if request.token is None else "wrong", self.peer, request.method)
            self.reply(p.encode_error(request.id, p.UNAUTHORIZED, "missing or wrong token"))
            return
        if request.method == "subscribe":
            self.subscribed = True
            self.reply(p.encode_result(request.id, {"subscribed": True}))
            return
        if request.method not in self.server.methods():
            self.reply(p.encode_error(request.id, p.METHOD_NOT_FOUND, f"unknown method {request.method!r}"))
            return
        self.in_flight.acquire()
        self.server._pool.submit(lambda: self._serve(request))

    def _serve(self, request: p.Request) -> None:
        try:
            self.reply(self.server._answer(request))
        finally:
            self.in_flight.release()


class RpcServer:
    """Serve ``handler`` on ``address`` (``tcp:127.0.0.1:7733``, ``tcp:127.0.0.1:0``, ``unix:/path``).

    ``executor(fn)`` runs ``fn`` and returns its result; a component whose state
    belongs to an event loop (POX) passes one that hands ``fn`` to that loop and
    waits. Defaults to ``handler.executor`` if present, else a direct call.
    """

    def __init__(self, address: str, token: str, handler: Handler, *,
                 executor: Executor | None = None, max_queue: int = 10000,
                 max_in_flight: int = 64, call_timeout: float = 30.0, send_timeout: float = 10.0) -> None:
        if not token:
            raise ValueError("token: must not be empty")
        self.kind, self._where = p.parse_address(address)
        self.token = token
        self.handler = handler
        self.executor: Executor = executor or getattr(handler, "executor", None) or _direct
        self.max_queue = max_queue
        self.max_in_flight = max_in_flight
        self.call_timeout = call_timeout
        self.send_timeout = max(1.0, send_timeout)
        self._listener: socket.socket | None = None
        self._accept_thread: threading.Thread | None = None
        self._connections: set[_Connection] = set()
        self._lock = threading.Lock()
        self._closing = threading.Event()
        self._pool = _WorkerPool()

    # -- life cycle ---------------------------------------------------------

    def start(self) -> "RpcServer":
        self._listener = self._bind()
        self._accept_thread = threading.Thread(target=self._accept_loop, name=f"rpc-accept {self.address}",
                                               daemon=True)
        self._accept_thread.start()
        log.info("rpc: listening on %s", self.address)
        return self

    def __enter__(self) -> "RpcServer":
        return self.start() if self._listener is None else self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def address(self) -> str:
        """The bound address (with the real port when 0 was asked for)."""
        if self._listener is not None and self.kind == "tcp":
            return p.format_address("tcp", self._listener.getsockname())
        return p.format_address(self.kind, self._where)

    def close(self) -> None:
        if self._closing.is_set():
            return
        self._closing.set()
        if self._listener is not None:
            try:
                self._listener.shutdown(socket.SHUT_RDWR)  # wakes accept() on Linux
            except OSError:
                pass
            self._listener.close()
        with self._lock:
            connections = list(self._connections)
        for conn in connections:
            conn.close()
        if self._accept_thread is not None:
            self._accept_thread.join(timeout=2.0)
        for conn in connections:
            conn.reader.join(timeout=1.0)
            conn.writer.join(timeout=1.0)
        if self.kind == "unix" and self._listener is not None:
            try:
                os.unlink(self._where)
            except OSError:
                pass

    # -- events -------------------------------------------------------------

    def publish(self, event: str, params: dict[str, Any]) -> int:
        """Push an event to every subscribed connection; returns how many got it queued."""
        data = p.encode_event(event, params)
        with self._lock:
            targets = [c for c in self._connections if c.subscribed and not c.closed.is_set()]
        for conn in targets:
            conn.send(data)
        return len(targets)

    @property
    def subscribers(self) -> int:
        with self._lock:
            return sum(1 for c in self._connections if c.subscribed and not c.closed.is_set())

    # -- internals ----------------------------------------------------------

    def methods(self) -> set[str]:
        return set(self.handler.methods())

    def _answer(self, request: p.Request) -> bytes:
        handler = self.handler
        try:
            result = self.executor(lambda: handler.call(request.method, request.params))
            return p.encode_result(request.id, result)
        except p.RpcError as exc:
            return p.encode_error(request.id, exc.code, exc.message)
        except Exception as exc:  # the component must keep serving whatever a call does
            log.exception("rpc: %s failed", request.method)
            return p.encode_error(request.id, p.INTERNAL_ERROR, f"{request.method}: {type(exc).__name__}: {exc}")

    def _bind(self) -> socket.socket:
        if self.kind == "unix":
            path = str(self._where)
            self._remove_stale_socket(path)
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            sock.bind(path)
            os.chmod(path, 0o600)
        else:
            host, port = self._where
            family = socket.AF_INET6 if ":" in host else socket.AF_INET
            sock = socket.socket(family, socket.SOCK_STREAM)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind((host, port))
        sock.listen(64)
        return sock

    @staticmethod
    def _remove_stale_socket(path: str) -> None:
        try:
            mode = os.stat(path).st_mode
        except FileNotFoundError:
            return
        if not stat.S_ISSOCK(mode):
            raise OSError(f"address: {path} exists and is not a socket")
        probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            probe.connect(path)
        except OSError:
            os.unlink(path)  # nobody listens: left over from a crash
            return
        finally:
            probe.close()
        raise OSError(f"address: another server already listens on {path}")

    def _accept_loop(self) -> None:
        assert self._listener is not None
        while not self._closing.is_set():
            try:
                sock, peer = self._listener.accept()
            except OSError:
                if self._closing.is_set():
                    return
                continue
            # A peer that stops reading makes a reply's sendall fail instead of hang.
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDTIMEO, struct.pack("ll", int(self.send_timeout), 0))
            if sock.family in (socket.AF_INET, socket.AF_INET6):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                name = p.format_address("tcp", peer)
            else:
                name = f"unix:{self._where}"
            conn = _Connection(self, sock, name)
            with self._lock:
                if self._closing.is_set():
                    sock.close()
                    return
                self._connections.add(conn)
            conn.start()

    def _forget(self, conn: _Connection) -> None:
        with self._lock:
            self._connections.discard(conn)
