"""The RPC server a controller component runs (``docs/rpc-protocol.md``).

One I/O thread serves every connection with a selector: it accepts, reads lines,
checks each request's token and answers bad lines itself, and writes whatever
is queued for each connection as the peer takes it. Only authenticated calls go
to a bounded pool of worker threads (pipelined requests are answered in any
order; a call waiting on a switch never holds up the others). So a connection
costs no thread of its own, however many there are and whatever they send.

Limits, each answered without disturbing well-behaved clients:

* at most ``max_connections`` connections; a newcomer beyond that evicts the
  oldest connection that has not yet shown a token, else it is refused;
* a connection that shows no valid token within ``auth_timeout`` seconds, or an
  authenticated one idle (nothing asked, nothing subscribed) for
  ``idle_timeout`` seconds, is closed; a subscriber is never idle;
* a peer that stops reading (``send_timeout`` s without progress, or more than
  ``max_queue`` lines queued) is disconnected rather than allowed to grow memory;
* at most ``max_in_flight`` calls per connection: beyond that it is not read
  until some are answered;
* when accepting fails for want of file descriptors or memory, the oldest
  unauthenticated connection is closed and accepting pauses briefly (backing
  off), instead of spinning;
* refused tokens are logged at most once per ``log_every`` seconds (with a count).

Every bad line gets an error reply and the connection stays usable; only an
oversized line closes its connection (the stream cannot be resynchronised).
Standard library only: it runs inside POX.
"""

from __future__ import annotations

import collections
import errno
import logging
import os
import queue
import selectors
import socket
import stat
import threading
import time
from typing import Any, Callable, Optional, Protocol

from demon.rpc import protocol as p
from demon.rpc.token import tokens_equal

log = logging.getLogger("demon.rpc.server")

Executor = Callable[[Callable[[], Any]], Any]
#: accept() failures that mean "no resources now": back off instead of retrying at once
_RESOURCE_ERRORS = {errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM}
_RECV = 65536


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


class _Throttled:
    """One log line per ``every`` seconds for a kind of event, with how many were not logged."""

    def __init__(self, every: float) -> None:
        self.every = every
        self._next: dict[str, float] = {}
        self._quiet: dict[str, int] = {}
        self._lock = threading.Lock()

    def warning(self, kind: str, message: str, *args: Any) -> None:
        now = time.monotonic()
        with self._lock:
            if now < self._next.get(kind, 0.0):
                self._quiet[kind] = self._quiet.get(kind, 0) + 1
                return
            self._next[kind] = now + self.every
            quiet = self._quiet.pop(kind, 0)
        if quiet:
            message += f" ({quiet} more like it in the last {self.every:g} s not logged)"
        log.warning(message, *args)


class _Connection:
    """One peer's buffers and state; its socket is only touched by the I/O thread."""

    def __init__(self, sock: socket.socket, peer: str, now: float) -> None:
        self.sock = sock
        self.peer = peer
        self.accepted_at = now
        self.last_active = now
        self.authed = False
        self.subscribed = False
        self.inbuf = bytearray()
        self.out: collections.deque[bytes] = collections.deque()
        self.out_bytes = 0
        self.sending_since: float | None = None  # output waiting since (no progress)
        self.in_flight = 0
        self.eof = False  # the peer sent everything it will send
        self.finishing = False  # no more requests: answer those in flight, flush, close
        self.fin_sent = False  # our side is shut: waiting for the peer to close its side
        self.events = 0  # what the selector watches for it
        self.closed = False


class RpcServer:
    """Serve ``handler`` on ``address`` (``tcp:127.0.0.1:7733``, ``tcp:127.0.0.1:0``, ``unix:/path``).

    ``executor(fn)`` runs ``fn`` and returns its result; a component whose state
    belongs to an event loop passes one that hands ``fn`` to that loop and
    waits. Defaults to ``handler.executor`` if present, else a direct call.
    """

    def __init__(self, address: str, token: str, handler: Handler, *,
                 executor: Executor | None = None, max_queue: int = 10000,
                 max_in_flight: int = 64, call_timeout: float = 30.0, send_timeout: float = 10.0,
                 max_connections: int = 256, auth_timeout: float = 10.0, idle_timeout: float = 600.0,
                 workers: int = 32, log_every: float = 10.0, backlog: int = 128) -> None:
        if not token:
            raise ValueError("token: must not be empty")
        self.kind, self._where = p.parse_address(address)
        self.token = token
        self.handler = handler
        self.executor: Executor = executor or getattr(handler, "executor", None) or _direct
        self.max_queue = max_queue
        self.max_in_flight = max_in_flight
        self.call_timeout = call_timeout
        self.send_timeout = max(0.1, send_timeout)
        self.max_connections = max_connections
        self.auth_timeout = auth_timeout
        self.idle_timeout = idle_timeout
        self.backlog = backlog
        #: requests answered, by method (unknown methods count as "other"), and errors by
        #: (method, code): read by the component's metrics
        self.requests_total: dict[str, int] = {}
        self.errors_total: dict[tuple[str, int], int] = {}
        self._listener: socket.socket | None = None
        self._thread: threading.Thread | None = None
        self._connections: dict[int, _Connection] = {}  # by id(); the I/O thread changes it
        self._lock = threading.Lock()  # output queues, in-flight counts
        self._closing = threading.Event()
        self._pool = _Pool(workers)
        self._throttled = _Throttled(log_every)
        self._selector: selectors.BaseSelector | None = None
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)
        self._flush_wanted: set[int] = set()
        self._doomed: set[int] = set()  # connections another thread wants closed
        self._accept_paused_until = 0.0
        self._accept_backoff = 0.0

    # -- life cycle ---------------------------------------------------------

    def start(self) -> "RpcServer":
        self._listener = self._bind()
        self._listener.setblocking(False)
        self._selector = selectors.DefaultSelector()
        self._selector.register(self._listener, selectors.EVENT_READ, "listener")
        self._selector.register(self._wake_r, selectors.EVENT_READ, "wake")
        self._thread = threading.Thread(target=self._loop, name=f"rpc-io {self.address}", daemon=True)
        self._thread.start()
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
        self._wake()
        if self._thread is not None:
            self._thread.join(timeout=3.0)
        else:
            for sock in (self._wake_r, self._wake_w):
                sock.close()
        self._pool.stop()
        if self.kind == "unix" and self._listener is not None:
            try:
                os.unlink(self._where)
            except OSError:
                pass

    # -- events -------------------------------------------------------------

    def publish(self, event: str, params: dict[str, Any]) -> int:
        """Queue an event for every subscribed connection; returns how many got it."""
        data = p.encode_event(event, params)
        with self._lock:
            targets = [c for c in self._connections.values() if c.subscribed and not c.closed]
        for conn in targets:
            self._send(conn, data)
        return len(targets)

    @property
    def subscribers(self) -> int:
        with self._lock:
            return sum(1 for c in self._connections.values() if c.subscribed and not c.closed)

    @property
    def connections(self) -> int:
        return len(self._connections)

    def methods(self) -> set[str]:
        return set(self.handler.methods())

    # -- the I/O thread -----------------------------------------------------

    def _loop(self) -> None:
        assert self._selector is not None
        next_sweep = time.monotonic() + 0.25
        try:
            while not self._closing.is_set():
                now = time.monotonic()
                timeout = max(0.0, min(next_sweep, self._accept_paused_until or next_sweep) - now)
                for key, mask in self._selector.select(timeout):
                    try:
                        self._on_ready(key, mask)
                    except Exception:  # one connection's trouble is never the server's
                        log.exception("rpc: error serving %s", getattr(key.data, "peer", key.data))
                        if isinstance(key.data, _Connection):
                            self._drop(key.data)
                self._flush_wanted_now()
                now = time.monotonic()
                if self._accept_paused_until and now >= self._accept_paused_until:
                    self._accept_paused_until = 0.0
                    self._selector.register(self._listener, selectors.EVENT_READ, "listener")  # type: ignore[arg-type]
                with self._lock:
                    doomed, self._doomed = self._doomed, set()
                for key in doomed:
                    if key in self._connections:
                        self._drop(self._connections[key])
                if now >= next_sweep:
                    self._sweep(now)
                    next_sweep = now + 0.25
        finally:
            self._shutdown()

    def _on_ready(self, key: selectors.SelectorKey, mask: int) -> None:
        if key.data == "listener":
            self._accept()
        elif key.data == "wake":
            try:
                while self._wake_r.recv(4096):
                    pass
            except (BlockingIOError, InterruptedError):
                pass
        else:
            conn: _Connection = key.data
            if mask & selectors.EVENT_READ:
                self._read(conn)
            if mask & selectors.EVENT_WRITE and not conn.closed:
                self._flush(conn)

    def _accept(self) -> None:
        assert self._listener is not None and self._selector is not None
        # A few per round, so the connections just accepted are read before more arrive:
        # a newcomer's first line (its token) protects it from eviction.
        for _ in range(8):
            try:
                sock, peer = self._listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                if exc.errno not in _RESOURCE_ERRORS:
                    log.debug("rpc: accept failed: %s", exc)
                    return
                # No descriptor for it: make room by closing a connection that has shown no
                # token, else pause accepting (backing off) rather than spin on the error.
                if self._evict_oldest_unauthenticated(f"cannot accept ({exc.strerror})"):
                    continue
                self._accept_backoff = min(1.0, max(0.05, self._accept_backoff * 2))
                self._accept_paused_until = time.monotonic() + self._accept_backoff
                self._selector.unregister(self._listener)
                self._throttled.warning("accept", "rpc: cannot accept connections (%s): pausing %.2f s",
                                        exc.strerror, self._accept_backoff)
                return
            self._accept_backoff = 0.0
            self._admit(sock, peer)

    def _admit(self, sock: socket.socket, peer: Any) -> None:
        assert self._selector is not None
        if len(self._connections) >= self.max_connections and \
                not self._evict_oldest_unauthenticated("connection limit reached"):
            self._throttled.warning("limit", "rpc: %d connections open: refusing a new one", len(self._connections))
            sock.close()
            return
        sock.setblocking(False)
        if sock.family in (socket.AF_INET, socket.AF_INET6):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            name = p.format_address("tcp", peer)
        else:
            name = f"unix:{self._where}"
        conn = _Connection(sock, name, time.monotonic())
        with self._lock:
            self._connections[id(conn)] = conn
        self._interest(conn)

    def _evict_oldest_unauthenticated(self, why: str) -> bool:
        waiting = [c for c in self._connections.values() if not c.authed and not c.closed]
        if not waiting:
            return False
        oldest = min(waiting, key=lambda c: c.accepted_at)
        self._throttled.warning("evict", "rpc: %s: closing %s, which has shown no token yet", why, oldest.peer)
        self._drop(oldest)
        return True

    def _read(self, conn: _Connection) -> None:
        try:
            data = conn.sock.recv(_RECV)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            self._drop(conn)
            return
        if not data:
            conn.eof = True
            self._finish(conn)
            return
        if conn.finishing:
            return  # what a peer still sends after its last answered line is discarded
        conn.last_active = time.monotonic()
        conn.inbuf += data
        self._lines(conn)

    def _lines(self, conn: _Connection) -> None:
        """Serve the complete lines read so far, up to the in-flight limit."""
        while not conn.finishing and conn.in_flight < self.max_in_flight:
            end = conn.inbuf.find(b"\n")
            if end > p.MAX_LINE or (end < 0 and len(conn.inbuf) > p.MAX_LINE):
                log.warning("rpc: line longer than %d bytes from %s: closing", p.MAX_LINE, conn.peer)
                self._send(conn, p.encode_error(None, p.INVALID_REQUEST, f"line longer than {p.MAX_LINE} bytes"))
                conn.inbuf.clear()
                self._finish(conn)
                return
            if end < 0:
                return
            line = bytes(conn.inbuf[:end + 1])
            del conn.inbuf[:end + 1]
            if line.strip():
                self._dispatch(conn, line)
        self._interest(conn)  # at the in-flight limit: not read until calls are answered

    def _dispatch(self, conn: _Connection, line: bytes) -> None:
        try:
            request = p.decode_request(line)
        except p.BadRequest as exc:
            self._count("(bad line)", exc.code)
            self._send(conn, p.encode_error(exc.request_id, exc.code, exc.message))
            return
        method = request.method if request.method in self.methods() or request.method == "subscribe" else "other"
        if not tokens_equal(self.token, request.token):
            self._count(method, p.UNAUTHORIZED)
            self._throttled.warning("token", "rpc: %s token from %s (method %r): refused",
                                    "missing" if request.token is None else "wrong", conn.peer, request.method)
            self._send(conn, p.encode_error(request.id, p.UNAUTHORIZED, "missing or wrong token"))
            return
        conn.authed = True
        if request.method == "subscribe":
            self._count("subscribe", None)
            conn.subscribed = True
            self._send(conn, p.encode_result(request.id, {"subscribed": True}))
            return
        if method == "other":
            self._count(method, p.METHOD_NOT_FOUND)
            self._send(conn, p.encode_error(request.id, p.METHOD_NOT_FOUND, f"unknown method {request.method!r}"))
            return
        with self._lock:
            conn.in_flight += 1
        self._pool.submit(lambda: self._serve(conn, request))

    def _serve(self, conn: _Connection, request: p.Request) -> None:
        try:
            self._send(conn, self._answer(request))
        finally:
            with self._lock:
                conn.in_flight -= 1
                self._flush_wanted.add(id(conn))  # resume reading, or finish closing
            self._wake()

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
        with self._lock:
            self.requests_total[method] = self.requests_total.get(method, 0) + 1
            if code is not None:
                self.errors_total[(method, code)] = self.errors_total.get((method, code), 0) + 1

    # -- output ---------------------------------------------------------------

    def _send(self, conn: _Connection, data: bytes) -> None:
        """Queue a line for ``conn`` (any thread; never blocks)."""
        with self._lock:
            if conn.closed:
                return
            overflow = len(conn.out) >= self.max_queue
            if overflow:
                self._doomed.add(id(conn))
            else:
                conn.out.append(data)
                conn.out_bytes += len(data)
                if conn.sending_since is None:
                    conn.sending_since = time.monotonic()
                self._flush_wanted.add(id(conn))
        if overflow:
            self._throttled.warning("slow", "rpc: %s is not reading (%d lines queued): disconnecting it",
                                    conn.peer, self.max_queue)
        if threading.current_thread() is not self._thread:
            self._wake()

    def _flush_wanted_now(self) -> None:
        with self._lock:
            wanted, self._flush_wanted = self._flush_wanted, set()
        for key in wanted:
            conn = self._connections.get(key)
            if conn is not None and not conn.closed and conn.inbuf:
                self._lines(conn)  # lines held back at the in-flight limit
            if conn is not None and not conn.closed:
                self._flush(conn)

    def _flush(self, conn: _Connection) -> None:
        """Write what the peer takes now; close a finished connection; else watch it."""
        while not conn.fin_sent:
            with self._lock:
                data = conn.out[0] if conn.out else None
            if data is None:
                break
            try:
                sent = conn.sock.send(data)
            except (BlockingIOError, InterruptedError):
                break
            except OSError:
                self._drop(conn)
                return
            with self._lock:
                conn.sending_since = time.monotonic()
                conn.out_bytes -= sent
                if sent == len(data):
                    conn.out.popleft()
                else:
                    conn.out[0] = data[sent:]
                    break
        with self._lock:
            if not conn.out:
                conn.sending_since = None
            done = conn.finishing and not conn.out and conn.in_flight == 0
        if done and conn.eof:
            self._drop(conn)
            return
        if done and not conn.fin_sent:
            # Our last word is out: FIN, then drain what the peer still sends (closing with
            # unread input would reset the connection and could destroy that word).
            try:
                conn.sock.shutdown(socket.SHUT_WR)
            except OSError:
                self._drop(conn)
                return
            conn.fin_sent = True
            conn.last_active = time.monotonic()
        self._interest(conn)

    def _interest(self, conn: _Connection) -> None:
        """Watch for input unless the peer is done or at its in-flight limit; for output while queued."""
        assert self._selector is not None
        with self._lock:
            pending = bool(conn.out) and not conn.fin_sent
            reading = not conn.eof and (conn.finishing or conn.in_flight < self.max_in_flight)
        events = (selectors.EVENT_READ if reading else 0) | (selectors.EVENT_WRITE if pending else 0)
        if events == conn.events:
            return
        try:
            if not events:
                self._selector.unregister(conn.sock)
            elif not conn.events:
                self._selector.register(conn.sock, events, conn)
            else:
                self._selector.modify(conn.sock, events, conn)
            conn.events = events
        except (KeyError, ValueError, OSError):
            self._drop(conn)

    def _finish(self, conn: _Connection) -> None:
        """No more requests from ``conn``: answer those in flight, write what is queued, close."""
        conn.finishing = True
        self._flush(conn)

    def _drop(self, conn: _Connection) -> None:
        with self._lock:
            if conn.closed:
                return
            conn.closed = True
            self._connections.pop(id(conn), None)
        if conn.events:
            try:
                assert self._selector is not None
                self._selector.unregister(conn.sock)
            except (KeyError, ValueError, OSError):
                pass
            conn.events = 0
        try:
            conn.sock.close()
        except OSError:
            pass

    def _sweep(self, now: float) -> None:
        for conn in list(self._connections.values()):
            if conn.closed:
                continue
            with self._lock:
                stalled = conn.sending_since is not None and now - conn.sending_since > self.send_timeout
                idle = not conn.out and conn.in_flight == 0
            if stalled:
                self._throttled.warning("stalled", "rpc: %s took nothing for %.0f s: disconnecting it",
                                        conn.peer, self.send_timeout)
                self._drop(conn)
            elif conn.fin_sent and now - conn.last_active > 2.0:
                self._drop(conn)  # a peer that never closed its side after our FIN
            elif not conn.authed and now - conn.accepted_at > self.auth_timeout:
                log.debug("rpc: %s showed no token within %g s: closing", conn.peer, self.auth_timeout)
                self._drop(conn)
            elif conn.authed and not conn.subscribed and idle and now - conn.last_active > self.idle_timeout:
                log.debug("rpc: %s idle for %g s: closing", conn.peer, self.idle_timeout)
                self._drop(conn)

    def _wake(self) -> None:
        try:
            self._wake_w.send(b"\0")
        except (BlockingIOError, InterruptedError, OSError):
            pass  # a wake-up is already pending (or we are shutting down)

    def _shutdown(self) -> None:
        for conn in list(self._connections.values()):
            try:
                conn.sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            self._drop(conn)
        if self._listener is not None:
            try:
                self._listener.close()
            except OSError:
                pass
        if self._selector is not None:
            self._selector.close()
        for sock in (self._wake_r, self._wake_w):
            sock.close()

    # -- binding --------------------------------------------------------------

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
        sock.listen(self.backlog)
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
