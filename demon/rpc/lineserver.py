"""Newline-delimited lines over TCP or a Unix socket, every connection on one selector thread.

The transport of the RPC server (:mod:`demon.rpc.server`), which decides what a
line means; this module only moves lines and keeps connections in bounds:

* at most ``max_connections`` connections; a newcomer beyond that evicts the
  oldest connection not yet authenticated (``Connection.authed``, set by the
  server on a valid token), else it is refused;
* a connection not authenticated within ``auth_timeout`` seconds, or an
  authenticated one idle (nothing asked, not subscribed) for ``idle_timeout``
  seconds, is closed; a subscriber is never idle;
* a peer that stops reading (``send_timeout`` s without progress, or more than
  ``max_queue`` lines queued) is disconnected rather than allowed to grow memory;
* at most ``max_in_flight`` lines per connection being answered (``begin`` /
  ``done``): beyond that it is not read until some are;
* when accepting fails for want of file descriptors or memory, the oldest
  unauthenticated connection is closed and, if there is none, accepting pauses
  (backing off up to 1 s) instead of spinning;
* a line longer than ``max_line`` bytes is answered with ``overlong`` and its
  connection closed (the stream cannot be resynchronised).

Standard library only: it runs inside POX.
"""

from __future__ import annotations

import collections
import errno
import logging
import os
import selectors
import socket
import stat
import threading
import time
from typing import Any, Callable

log = logging.getLogger("demon.rpc.server")

#: accept() failures that mean "no resources now": make room or back off, never spin
_RESOURCE_ERRORS = {errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM}
_RECV = 65536


class Throttled:
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


class Connection:
    """One peer's buffers and state; its socket is only touched by the I/O thread."""

    def __init__(self, sock: socket.socket, peer: str, now: float) -> None:
        self.sock = sock
        self.peer = peer
        self.accepted_at = now
        self.last_active = now
        self.authed = False
        self.subscribed = False
        self.inbuf = bytearray()
        #: guards the socket's output side and ``out``: any thread may send, the I/O thread closes
        self.wlock = threading.Lock()
        self.out: collections.deque[bytes] = collections.deque()
        self.out_bytes = 0
        self.sending_since: float | None = None  # output waiting since (no progress)
        self.in_flight = 0
        self.eof = False  # the peer sent everything it will send
        self.finishing = False  # no more requests: answer those in flight, flush, close
        self.fin_sent = False  # our side is shut: waiting for the peer to close its side
        self.events = 0  # what the selector watches for it
        self.closed = False


class LineServer:
    """Serve lines on a bound address; ``on_line(conn, line)`` runs on the I/O thread for
    each complete, non-blank line and answers with :meth:`send` (from any thread)."""

    def __init__(self, kind: str, where: Any, on_line: Callable[[Connection, bytes], None], *,
                 overlong: bytes, max_line: int, max_queue: int = 10000, max_in_flight: int = 64,
                 send_timeout: float = 10.0, max_connections: int = 256, auth_timeout: float = 10.0,
                 idle_timeout: float = 600.0, log_every: float = 10.0, backlog: int = 128,
                 address_text: Callable[[str, Any], str] = lambda kind, where: f"{kind}:{where}") -> None:
        self.kind, self._where = kind, where
        self.on_line = on_line
        self.overlong = overlong
        self.max_line = max_line
        self.max_queue = max_queue
        self.max_in_flight = max_in_flight
        self.send_timeout = max(0.1, send_timeout)
        self.max_connections = max_connections
        self.auth_timeout = auth_timeout
        self.idle_timeout = idle_timeout
        self.backlog = backlog
        self.address_text = address_text
        self.throttled = Throttled(log_every)
        self.connections: dict[int, Connection] = {}  # by id(); the I/O thread changes it
        self.lock = threading.Lock()  # output queues, in-flight counts
        self._listener: socket.socket | None = None
        self._thread: threading.Thread | None = None
        self._closing = threading.Event()
        self._selector: selectors.BaseSelector | None = None
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)
        self._flush_wanted: set[int] = set()
        self._doomed: set[int] = set()  # connections another thread wants closed
        self._accept_paused_until = 0.0
        self._accept_backoff = 0.0

    @property
    def started(self) -> bool:
        return self._listener is not None

    def start(self, name: str) -> None:
        self._listener = self._bind()
        self._listener.setblocking(False)
        self._selector = selectors.DefaultSelector()
        self._selector.register(self._listener, selectors.EVENT_READ, "listener")
        self._selector.register(self._wake_r, selectors.EVENT_READ, "wake")
        self._thread = threading.Thread(target=self._loop, name=name, daemon=True)
        self._thread.start()

    @property
    def address(self) -> Any:
        """Where it listens (the real port when 0 was asked for)."""
        if self._listener is not None and self.kind == "tcp":
            return self._listener.getsockname()
        return self._where

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
        if self.kind == "unix" and self._listener is not None:
            try:
                os.unlink(self._where)
            except OSError:
                pass

    # -- for the server ------------------------------------------------------

    def begin(self, conn: Connection) -> None:
        """A line of ``conn`` is being answered (counts toward its in-flight limit)."""
        with self.lock:
            conn.in_flight += 1

    def done(self, conn: Connection) -> None:
        """Its answer is sent or queued (any thread): the I/O thread hears of it only if it
        must resume reading ``conn`` (it was at its in-flight limit) or finish closing it."""
        with self.lock:
            conn.in_flight -= 1
            needed = conn.in_flight + 1 >= self.max_in_flight or conn.finishing
            if needed:
                self._flush_wanted.add(id(conn))
        if needed:
            self._wake()

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
                        if isinstance(key.data, Connection):
                            self._drop(key.data)
                self._flush_wanted_now()
                now = time.monotonic()
                if self._accept_paused_until and now >= self._accept_paused_until:
                    self._accept_paused_until = 0.0
                    self._selector.register(self._listener, selectors.EVENT_READ, "listener")  # type: ignore[arg-type]
                with self.lock:
                    doomed, self._doomed = self._doomed, set()
                for key in doomed:
                    if key in self.connections:
                        self._drop(self.connections[key])
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
            conn: Connection = key.data
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
                self.throttled.warning("accept", "rpc: cannot accept connections (%s): pausing %.2f s",
                                        exc.strerror, self._accept_backoff)
                return
            self._accept_backoff = 0.0
            self._admit(sock, peer)

    def _admit(self, sock: socket.socket, peer: Any) -> None:
        assert self._selector is not None
        if len(self.connections) >= self.max_connections and \
                not self._evict_oldest_unauthenticated("connection limit reached"):
            self.throttled.warning("limit", "rpc: %d connections open: refusing a new one", len(self.connections))
            sock.close()
            return
        sock.setblocking(False)
        if sock.family in (socket.AF_INET, socket.AF_INET6):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            name = self.address_text("tcp", peer)
        else:
            name = f"unix:{self._where}"
        conn = Connection(sock, name, time.monotonic())
        with self.lock:
            self.connections[id(conn)] = conn
        self._interest(conn)

    def _evict_oldest_unauthenticated(self, why: str) -> bool:
        waiting = [c for c in self.connections.values() if not c.authed and not c.closed]
        if not waiting:
            return False
        oldest = min(waiting, key=lambda c: c.accepted_at)
        self.throttled.warning("evict", "rpc: %s: closing %s, which has shown no token yet", why, oldest.peer)
        self._drop(oldest)
        return True

    def _read(self, conn: Connection) -> None:
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

    def _lines(self, conn: Connection) -> None:
        """Serve the complete lines read so far, up to the in-flight limit."""
        while not conn.finishing and conn.in_flight < self.max_in_flight:
            end = conn.inbuf.find(b"\n")
            if end > self.max_line or (end < 0 and len(conn.inbuf) > self.max_line):
                log.warning("rpc: line longer than %d bytes from %s: closing", self.max_line, conn.peer)
                self.send(conn, self.overlong)
                conn.inbuf.clear()
                self._finish(conn)
                return
            if end < 0:
                return
            line = bytes(conn.inbuf[:end + 1])
            del conn.inbuf[:end + 1]
            if line.strip():
                self.on_line(conn, line)
        self._interest(conn)  # at the in-flight limit: not read until calls are answered

    def send(self, conn: Connection, data: bytes) -> None:
        """Send a line to ``conn`` now, as far as it takes it, and queue the rest for the I/O
        thread (any thread; never blocks): a reply costs no thread hop when the peer reads."""
        overflow = failed = False
        with conn.wlock:
            if conn.closed or conn.fin_sent:
                return
            if not conn.out:
                try:
                    sent = conn.sock.send(data)
                except (BlockingIOError, InterruptedError):
                    sent = 0
                except OSError:
                    sent, failed = 0, True
                if sent == len(data):
                    return
                data = data[sent:]
            if not failed:
                overflow = len(conn.out) >= self.max_queue
            if not (failed or overflow):
                conn.out.append(data)
                conn.out_bytes += len(data)
                if conn.sending_since is None:
                    conn.sending_since = time.monotonic()
        with self.lock:
            (self._doomed if failed or overflow else self._flush_wanted).add(id(conn))
        if overflow:
            self.throttled.warning("slow", "rpc: %s is not reading (%d lines queued): disconnecting it",
                                   conn.peer, self.max_queue)
        if threading.current_thread() is not self._thread:
            self._wake()

    def _flush_wanted_now(self) -> None:
        with self.lock:
            wanted, self._flush_wanted = self._flush_wanted, set()
        for key in wanted:
            conn = self.connections.get(key)
            if conn is not None and not conn.closed and conn.inbuf:
                self._lines(conn)  # lines held back at the in-flight limit
            if conn is not None and not conn.closed:
                self._flush(conn)

    def _flush(self, conn: Connection) -> None:
        """Write what the peer takes now; close a finished connection; else watch it."""
        failed = False
        with conn.wlock:
            while conn.out and not conn.fin_sent and not conn.closed:
                data = conn.out[0]
                try:
                    sent = conn.sock.send(data)
                except (BlockingIOError, InterruptedError):
                    break
                except OSError:
                    failed = True
                    break
                conn.sending_since = time.monotonic()
                conn.out_bytes -= sent
                if sent == len(data):
                    conn.out.popleft()
                else:
                    conn.out[0] = data[sent:]
                    break
            if not conn.out:
                conn.sending_since = None
            pending = bool(conn.out)
        if failed:
            self._drop(conn)
            return
        with self.lock:
            done = conn.finishing and not pending and conn.in_flight == 0
        if done and conn.eof:
            self._drop(conn)
            return
        if done and not conn.fin_sent:
            # Our last word is out: FIN, then drain what the peer still sends (closing with
            # unread input would reset the connection and could destroy that word).
            with conn.wlock:
                try:
                    conn.sock.shutdown(socket.SHUT_WR)
                    conn.fin_sent = True
                except OSError:
                    pass
            if not conn.fin_sent:
                self._drop(conn)
                return
            conn.last_active = time.monotonic()
        self._interest(conn)

    def _interest(self, conn: Connection) -> None:
        """Watch for input unless the peer is done or at its in-flight limit; for output while queued."""
        assert self._selector is not None
        with conn.wlock:
            pending = bool(conn.out) and not conn.fin_sent
        with self.lock:
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

    def _finish(self, conn: Connection) -> None:
        """No more requests from ``conn``: answer those in flight, write what is queued, close."""
        conn.finishing = True
        self._flush(conn)

    def _drop(self, conn: Connection) -> None:
        with conn.wlock:  # no other thread is sending on it while it closes
            if conn.closed:
                return
            conn.closed = True
            conn.out.clear()
            with self.lock:
                self.connections.pop(id(conn), None)
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
        for conn in list(self.connections.values()):
            if conn.closed:
                continue
            with self.lock:
                stalled = conn.sending_since is not None and now - conn.sending_since > self.send_timeout
                idle = not conn.out and conn.in_flight == 0
            if stalled:
                self.throttled.warning("stalled", "rpc: %s took nothing for %.0f s: disconnecting it",
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
        for conn in list(self.connections.values()):
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
