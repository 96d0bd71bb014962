"""The daemon's side of the controller RPC channel (``docs/rpc-protocol.md``).

``RpcClient.call`` is synchronous and thread-safe (one connection, calls
serialised). A connection found broken is re-opened and the call sent once
more: every method is idempotent (installs by tap id), so a retry never
doubles a mirror. Events arrive on a separate connection (``subscribe``) that
re-subscribes by itself after the controller comes back.

Standard library only.
"""

from __future__ import annotations

import itertools
import logging
import queue
import socket
import threading
import time
from typing import Any, Callable, Iterator

from demon.rpc import protocol as p
from demon.rpc.protocol import Event, RpcError

log = logging.getLogger("demon.rpc.client")


class RpcTimeout(RpcError):
    """No reply within the client's timeout (the call may still have run)."""

    def __init__(self, method: str, timeout: float) -> None:
        super().__init__(p.CLIENT_TIMEOUT, f"{method}: no reply within {timeout:g} s")
        self.method = method


class ControllerUnreachable(RpcError):
    """The controller component could not be reached (not running, wrong address)."""

    def __init__(self, address: str, reason: str) -> None:
        super().__init__(p.CONTROLLER_UNREACHABLE, f"controller at {address} unreachable: {reason}")
        self.address = address


class _ConnectionLost(Exception):
    pass


def _connect(address: str, timeout: float) -> socket.socket:
    kind, where = p.parse_address(address)
    try:
        if kind == "unix":
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            sock.settimeout(timeout)
            sock.connect(where)
        else:
            sock = socket.create_connection(where, timeout=timeout)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    except OSError as exc:
        raise ControllerUnreachable(address, str(exc)) from None
    return sock


class _LineSocket:
    """A socket read line by line with a per-read deadline."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.buffer = bytearray()

    def send(self, data: bytes) -> None:
        try:
            self.sock.sendall(data)
        except OSError as exc:
            raise _ConnectionLost(str(exc)) from None

    def read_line(self, deadline: float | None) -> bytes:
        while True:
            end = self.buffer.find(b"\n")
            if end >= 0:
                line = bytes(self.buffer[:end + 1])
                del self.buffer[:end + 1]
                return line
            if len(self.buffer) > p.MAX_LINE + 1:
                raise _ConnectionLost("reply line too long")
            remaining = None if deadline is None else deadline - time.monotonic()
            if remaining is not None and remaining <= 0:
                raise socket.timeout()
            self.sock.settimeout(remaining)
            try:
                chunk = self.sock.recv(65536)
            except socket.timeout:
                raise
            except OSError as exc:
                raise _ConnectionLost(str(exc)) from None
            if not chunk:
                raise _ConnectionLost("connection closed by the controller")
            self.buffer += chunk

    def close(self) -> None:
        try:
            self.sock.close()
        except OSError:
            pass


class RpcClient:
    """Calls to one controller component. ``timeout`` bounds each call (seconds)."""

    def __init__(self, address: str = p.DEFAULT_ADDRESS, token: str = "", timeout: float = 5.0,
                 connect_timeout: float | None = None) -> None:
        p.parse_address(address)  # fail early on a bad address
        self.address = address
        self.token = token
        self.timeout = timeout
        self.connect_timeout = connect_timeout if connect_timeout is not None else min(timeout, 2.0)
        self._conn: _LineSocket | None = None
        self._lock = threading.Lock()
        self._ids = itertools.count(1)

    # -- generic ------------------------------------------------------------

    def call(self, method: str, **params: Any) -> Any:
        """Send one request, return its result; raises ``RpcError`` (with code),
        ``RpcTimeout`` or ``ControllerUnreachable``."""
        with self._lock:
            for attempt in (1, 2):
                fresh = self._conn is None
                conn = self._connection()
                request_id = next(self._ids)
                try:
                    conn.send(p.encode_request(request_id, method, params, self.token))
                    return self._await_reply(conn, request_id, method)
                except _ConnectionLost as exc:
                    self._drop()
                    if fresh or attempt == 2:
                        raise ControllerUnreachable(self.address, f"{method}: {exc}") from None
                    log.info("rpc: connection to %s broken (%s): reconnecting", self.address, exc)
            raise AssertionError("unreachable")

    def _await_reply(self, conn: _LineSocket, request_id: int, method: str) -> Any:
        deadline = time.monotonic() + self.timeout
        while True:
            try:
                line = conn.read_line(deadline)
            except socket.timeout:
                # A late reply would be read by the next call: start afresh.
                self._drop()
                raise RpcTimeout(method, self.timeout) from None
            try:
                message = p.decode_message(line)
            except p.BadRequest as exc:
                self._drop()
                raise _ConnectionLost(f"garbled reply: {exc.message}") from None
            if isinstance(message, Event) or message.id != request_id:
                continue  # stale reply of an earlier timed-out call, or an event
            if message.error is not None:
                raise message.error
            return message.result

    def _connection(self) -> _LineSocket:
        if self._conn is None:
            self._conn = _LineSocket(_connect(self.address, self.connect_timeout))
        return self._conn

    def _drop(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def close(self) -> None:
        with self._lock:
            self._drop()

    def __enter__(self) -> "RpcClient":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- typed helpers ------------------------------------------------------

    def hello(self) -> dict[str, Any]:
        return self.call("hello")

    def install_mirror(self, tap_id: str, dpid: int, match: dict[str, Any], copy_port: int, *,
                       vlan_tag: int | None = None, bidirectional: bool = False,
                       idle_timeout: int | None = None, hard_timeout: int | None = None,
                       priority: int | None = None) -> dict[str, Any]:
        params: dict[str, Any] = {"tap_id": tap_id, "dpid": dpid, "match": match, "copy_port": copy_port,
                                  "bidirectional": bidirectional}
        for name, value in (("vlan_tag", vlan_tag), ("idle_timeout", idle_timeout),
                            ("hard_timeout", hard_timeout), ("priority", priority)):
            if value is not None:
                params[name] = value
        return self.call("install_mirror", **params)

    def remove_mirror(self, tap_id: str) -> dict[str, Any]:
        return self.call("remove_mirror", tap_id=tap_id)

    def list_mirrors(self, dpid: int | None = None) -> list[dict[str, Any]]:
        return self.call("list_mirrors") if dpid is None else self.call("list_mirrors", dpid=dpid)

    def list_switches(self) -> list[dict[str, Any]]:
        return self.call("list_switches")

    def flow_stats(self, dpid: int) -> list[dict[str, Any]]:
        return self.call("flow_stats", dpid=dpid)

    def port_stats(self, dpid: int) -> list[dict[str, Any]]:
        return self.call("port_stats", dpid=dpid)

    def set_static(self, config: dict[str, Any] | None) -> dict[str, Any]:
        return self.call("set_static", config=config)

    # -- events -------------------------------------------------------------

    def subscribe(self, callback: Callable[[Event], None] | None = None,
                  on_connection: Callable[[bool], None] | None = None) -> "Subscription":
        """Receive events on a separate connection (started before returning).

        With ``callback`` each event is handed to it on the subscription's
        thread; without, iterate over the returned ``Subscription``.
        ``on_connection(True|False)`` reports the controller coming and going
        (re-subscription is automatic; a daemon reconciles on ``True``).
        """
        sub = Subscription(self.address, self.token, callback, on_connection,
                           connect_timeout=self.connect_timeout)
        sub.start()
        return sub


class Subscription:
    """An event stream that survives controller restarts."""

    def __init__(self, address: str, token: str, callback: Callable[[Event], None] | None,
                 on_connection: Callable[[bool], None] | None, *, connect_timeout: float = 2.0,
                 retry_min: float = 0.1, retry_max: float = 2.0) -> None:
        self.address = address
        self.token = token
        self.callback = callback
        self.on_connection = on_connection
        self.connect_timeout = connect_timeout
        self.retry_min = retry_min
        self.retry_max = retry_max
        self.events: "queue.Queue[Event]" = queue.Queue()
        self._connected = threading.Event()
        self._stop = threading.Event()
        self._sock: _LineSocket | None = None
        self._thread = threading.Thread(target=self._run, name=f"rpc-events {address}", daemon=True)

    def start(self) -> None:
        self._thread.start()

    @property
    def connected(self) -> bool:
        return self._connected.is_set()

    def wait_connected(self, timeout: float | None = None) -> bool:
        return self._connected.wait(timeout)

    def get(self, timeout: float | None = None) -> Event:
        """Next queued event (only without a callback); raises ``queue.Empty``."""
        return self.events.get(timeout=timeout)

    def __iter__(self) -> Iterator[Event]:
        while not self._stop.is_set():
            try:
                yield self.events.get(timeout=0.2)
            except queue.Empty:
                continue

    def close(self) -> None:
        self._stop.set()
        sock = self._sock
        if sock is not None:
            try:
                sock.sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        self._thread.join(timeout=2.0)

    def __enter__(self) -> "Subscription":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _set_connected(self, up: bool) -> None:
        if up == self._connected.is_set():
            return
        if up:
            self._connected.set()
        else:
            self._connected.clear()
        if self.on_connection is not None:
            try:
                self.on_connection(up)
            except Exception:
                log.exception("rpc: on_connection callback failed")

    def _run(self) -> None:
        delay = self.retry_min
        while not self._stop.is_set():
            try:
                self._sock = _LineSocket(_connect(self.address, self.connect_timeout))
                self._sock.send(p.encode_request(0, "subscribe", {}, self.token))
                reply = p.decode_message(self._sock.read_line(time.monotonic() + self.connect_timeout))
                if isinstance(reply, Event) or reply.error is not None:
                    raise _ConnectionLost(f"subscribe refused: {getattr(reply, 'error', reply)}")
                self._set_connected(True)
                delay = self.retry_min
                self._pump(self._sock)
            except (ControllerUnreachable, _ConnectionLost, OSError, p.BadRequest) as exc:
                if not self._stop.is_set():
                    log.debug("rpc: event connection to %s: %s", self.address, exc)
            finally:
                if self._sock is not None:
                    self._sock.close()
                    self._sock = None
                self._set_connected(False)
            self._stop.wait(delay)
            delay = min(delay * 2, self.retry_max)

    def _pump(self, sock: _LineSocket) -> None:
        while not self._stop.is_set():
            message = p.decode_message(sock.read_line(None))
            if not isinstance(message, Event):
                continue
            if self.callback is None:
                self.events.put(message)
                continue
            try:
                self.callback(message)
            except Exception:
                log.exception("rpc: event callback failed for %s", message.event)
