"""HTTP listeners of every command: an ASGI app served by uvicorn on a thread.

Every HTTP listener of the project (the embedded engine's sFlow-RT API, the
daemon's API, metrics) runs through :class:`BackgroundServer`, so they share one
well-kept server (uvicorn: HTTP/1.1 framing, chunked bodies, keep-alive
timeouts, a connection limit, and asyncio's back-off on accept errors such as
running out of file descriptors) and one way to start and stop.

The socket is bound here, before the server thread starts, so that a bad or
busy address is an ``OSError`` in the caller (one line for the operator) and
port 0 gives an ephemeral port the caller can read at once.

Listen options are written ``HOST:PORT`` (``[::1]:8734`` for IPv6, ``:8734``
or ``8734`` for the default host); :func:`parse_listen` reads them and
:func:`is_loopback` tells whether a listener is reachable from other hosts.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import socket
import threading
from typing import Any

log = logging.getLogger(__name__)

DEFAULT_HOST = "127.0.0.1"


class ListenError(ValueError):
    """A listen option that is not ``HOST:PORT`` (the message says what is wrong)."""


def parse_listen(text: str, default_port: int | None = None,
                 default_host: str = DEFAULT_HOST) -> tuple[str, int]:
    """``HOST:PORT`` → (host, port). ``[v6]:PORT`` for IPv6; a bare ``PORT`` or
    ``:PORT`` takes ``default_host``; a bare host takes ``default_port``."""
    value = text.strip()
    if not value:
        raise ListenError("empty listen address (expected HOST:PORT)")
    host: str
    port_text: str | None
    if value.startswith("["):
        end = value.find("]")
        if end < 0:
            raise ListenError(f"{text!r}: missing ']' after an IPv6 address")
        host = value[1:end]
        rest = value[end + 1:]
        if rest and not rest.startswith(":"):
            raise ListenError(f"{text!r}: expected ':PORT' after ']'")
        port_text = rest[1:] if rest else None
    elif value.isdigit():
        host, port_text = default_host, value
    elif value.count(":") == 1:
        host, port_text = value.split(":")
        host = host or default_host
    elif ":" in value:
        raise ListenError(f"{text!r}: write an IPv6 address in brackets, e.g. [::1]:8734")
    else:
        host, port_text = value, None
    if port_text is None or port_text == "":
        if default_port is None:
            raise ListenError(f"{text!r}: missing port (expected HOST:PORT)")
        port = default_port
    else:
        if not port_text.isdigit():
            raise ListenError(f"{text!r}: port {port_text!r} is not a number")
        port = int(port_text)
    if not 0 <= port <= 65535:
        raise ListenError(f"{text!r}: port {port} is out of range 0-65535")
    if not host:
        raise ListenError(f"{text!r}: missing host")
    return host, port


def format_listen(host: str, port: int) -> str:
    """The inverse of :func:`parse_listen` (brackets around IPv6)."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def is_loopback(host: str) -> bool:
    """True when only this machine can reach a listener bound to ``host``.
    Names other than ``localhost`` count as exposed: they may resolve anywhere."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def bind_tcp(host: str, port: int, backlog: int = 1024) -> socket.socket:
    """A listening TCP socket (IPv4 or IPv6 by the address's form)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    # IPPROTO_TCP, not 0: asyncio sets TCP_NODELAY on accepted connections only when the
    # listening socket says TCP; without it every keep-alive answer waits ~40 ms for a
    # delayed ACK (Nagle).
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if family == socket.AF_INET6:
            # [::] means IPv6 only here: an operator who wants both says so twice.
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        sock.bind((host, port))
        sock.listen(backlog)
    except OSError:
        sock.close()
        raise
    sock.set_inheritable(True)
    return sock


def _request_head_deadline(seconds: float) -> type:
    """uvicorn's h11 protocol with a deadline for each request's head.

    uvicorn closes a keep-alive connection that stays silent after a response,
    but a fresh connection that sends nothing, or a request line and headers a
    byte at a time (slowloris), is kept for ever: a few thousand of them fill the
    connection limit and every later client gets 503. Here a connection must
    deliver a complete request head within ``seconds`` of opening (and of each
    response, for the next request), or it is closed.
    """
    from uvicorn.protocols.http.h11_impl import H11Protocol

    class HeadDeadlineH11(H11Protocol):
        _head_timer: asyncio.TimerHandle | None = None

        def _arm_head_deadline(self) -> None:
            self._disarm_head_deadline()
            self._head_timer = self.loop.call_later(seconds, self._head_overdue)

        def _disarm_head_deadline(self) -> None:
            if self._head_timer is not None:
                self._head_timer.cancel()
                self._head_timer = None

        def _head_overdue(self) -> None:
            self._head_timer = None
            busy = self.cycle is not None and not self.cycle.response_complete
            if not busy and not self.transport.is_closing():
                self.transport.close()

        def connection_made(self, transport: Any) -> None:  # type: ignore[override]
            super().connection_made(transport)
            self._arm_head_deadline()

        def handle_events(self) -> None:
            cycle = self.cycle
            super().handle_events()
            if self.cycle is not cycle:  # a complete request head arrived
                self._disarm_head_deadline()

        def on_response_complete(self) -> None:
            super().on_response_complete()
            if not self.transport.is_closing():
                self._arm_head_deadline()

        def connection_lost(self, exc: Exception | None) -> None:
            self._disarm_head_deadline()
            super().connection_lost(exc)

    return HeadDeadlineH11


class BackgroundServer:
    """Serve ``app`` (ASGI) on ``host:port`` from a daemon thread.

    ``limit_concurrency``: above this many open connections plus tasks, new
    requests get 503 instead of eating threads or memory. ``timeout_keep_alive``
    closes idle keep-alive connections; ``head_timeout`` closes a connection
    that has not sent a complete request head that long after opening or after
    its last response (idle and slowloris floods). uvicorn's own access log is
    off (each app logs what matters); its errors go to the ``uvicorn.error``
    logger.
    """

    def __init__(self, app: Any, host: str = DEFAULT_HOST, port: int = 0, *,
                 name: str = "http", limit_concurrency: int | None = 1000,
                 timeout_keep_alive: int = 5, head_timeout: float = 10.0, backlog: int = 1024,
                 timeout_graceful_shutdown: int = 2) -> None:
        self.app = app
        self.name = name
        self._host = host
        self._port = port
        self._backlog = backlog
        self._options = dict(limit_concurrency=limit_concurrency,
                             timeout_keep_alive=timeout_keep_alive,
                             timeout_graceful_shutdown=timeout_graceful_shutdown)
        self._head_timeout = head_timeout
        self._sock: socket.socket | None = None
        self._server: Any = None
        self._thread: threading.Thread | None = None
        self._started = threading.Event()

    def start(self, timeout: float = 10.0) -> "BackgroundServer":
        import uvicorn

        self._sock = bind_tcp(self._host, self._port, self._backlog)
        config = uvicorn.Config(self.app, log_config=None, access_log=False,
                                lifespan="off", server_header=False,
                                http=_request_head_deadline(self._head_timeout),
                                backlog=self._backlog, **self._options)
        self._server = uvicorn.Server(config)
        sock = self._sock

        def run() -> None:
            loop = asyncio.new_event_loop()
            asyncio.set_event_loop(loop)
            try:
                loop.run_until_complete(self._server.serve(sockets=[sock]))
            except Exception:  # noqa: BLE001 - the thread must not die silently
                log.exception("%s server on %s stopped", self.name, self.url)
            finally:
                self._started.set()
                loop.close()

        self._thread = threading.Thread(target=run, name=f"{self.name}-http", daemon=True)
        self._thread.start()
        deadline = timeout
        step = 0.01
        while not self._server.started and self._thread.is_alive() and deadline > 0:
            self._started.wait(step)
            deadline -= step
        if not self._server.started:
            self.stop()
            raise OSError(f"{self.name}: HTTP server did not start on {self.listen}")
        if not is_loopback(self.address[0]):
            log.warning("%s listener exposed beyond loopback on %s", self.name, self.listen)
        return self

    @property
    def address(self) -> tuple[str, int]:
        if self._sock is None:
            return (self._host, self._port)
        host, port = self._sock.getsockname()[:2]
        return (host, port)

    @property
    def listen(self) -> str:
        return format_listen(*self.address)

    @property
    def url(self) -> str:
        host, port = self.address
        if host in ("0.0.0.0", "::"):
            host = "127.0.0.1" if host == "0.0.0.0" else "::1"
        return f"http://{format_listen(host, port)}"

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def stop(self, timeout: float = 5.0) -> None:
        """Stop accepting, finish in-flight requests (up to the graceful timeout),
        close the socket. Idempotent."""
        if self._server is not None:
            self._server.should_exit = True
        if self._thread is not None:
            self._thread.join(timeout)
            if self._thread.is_alive() and self._server is not None:
                self._server.force_exit = True
                self._thread.join(timeout)
            self._thread = None
        if self._sock is not None:
            try:
                self._sock.close()
            except OSError:
                pass
            self._sock = None

    def __enter__(self) -> "BackgroundServer":
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()
