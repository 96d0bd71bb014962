"""The embedded engine as a service: engine + UDP collector + HTTP API in threads.

    engine = EmbeddedEngine(sflow_addr=("127.0.0.1", 6343), http_addr=("127.0.0.1", 0)).start()
    client = SFlowRTClient(engine.url)
    ...
    engine.stop()

Port 0 picks an ephemeral port for either socket; ``sflow_address`` and
``url`` give what was bound.
"""

from __future__ import annotations

import threading
import time
from typing import Any, Callable

from sflow.collector import RCVBUF_WANTED, Collector
from sflow.engine import Engine
from sflow.httpapi import EngineHTTPServer

__all__ = ["EmbeddedEngine"]


class EmbeddedEngine:
    """Runs an :class:`Engine` with its collector and HTTP API until :meth:`stop`."""

    def __init__(self, sflow_addr: tuple[str, int] = ("127.0.0.1", 6343),
                 http_addr: tuple[str, int] = ("127.0.0.1", 8008), readonly: bool = False,
                 max_flows: int = 100_000, rcvbuf: int = RCVBUF_WANTED,
                 clock: Callable[[], float] = time.time, fast_path: bool = True,
                 recorder: Any = None) -> None:
        self.sflow_addr = sflow_addr
        #: a ``sflow.rolling.RollingRecorder`` keeping the raw datagrams (closed by stop())
        self.recorder = recorder
        self.fast_path = fast_path
        self.http_addr = http_addr
        self.readonly = readonly
        self.clock = clock
        self.engine = Engine(max_flows=max_flows, compiled=fast_path)
        self._rcvbuf = rcvbuf
        self.collector: Collector | None = None
        self.http: EngineHTTPServer | None = None
        self._http_thread: threading.Thread | None = None

    def start(self) -> "EmbeddedEngine":
        """Bind both sockets and start serving; raises OSError if a port is taken."""
        self.collector = Collector(self.engine, self.sflow_addr[0], self.sflow_addr[1],
                                   rcvbuf=self._rcvbuf, clock=self.clock,
                                   fast_path=self.fast_path, recorder=self.recorder)
        try:
            self._serve_http(self.http_addr)
        except OSError:
            self.collector.sock.close()
            raise
        self.collector.start()
        return self

    def _serve_http(self, address: tuple[str, int]) -> None:
        assert self.collector is not None
        self.http = EngineHTTPServer(address, self.engine, self.readonly, self.clock,
                                     extra_analyzer=self.collector.stats)
        self._http_thread = threading.Thread(target=self.http.serve_forever,
                                             kwargs={"poll_interval": 0.2},
                                             name="sflow-http", daemon=True)
        self._http_thread.start()

    def _close_http(self) -> None:
        if self.http is not None:
            self.http.closing.set()
            with self.engine.lock:
                self.engine.lock.notify_all()
            self.http.shutdown()
            self.http.server_close()

    def suspend_http(self) -> None:
        """Close the HTTP API (connections refused) while collection goes on (tests: outages)."""
        self._close_http()

    def resume_http(self) -> None:
        """Serve the HTTP API again on the same address, with the same engine state."""
        if self.http is None:
            raise RuntimeError("engine not started")
        host, port = self.http.server_address[:2]
        self._serve_http((str(host), int(port)))

    @property
    def url(self) -> str:
        """Base URL of the HTTP API, e.g. ``http://127.0.0.1:40123``."""
        if self.http is None:
            raise RuntimeError("engine not started")
        return self.http.url

    @property
    def sflow_address(self) -> tuple[str, int]:
        """Where to send sFlow datagrams."""
        if self.collector is None:
            raise RuntimeError("engine not started")
        return self.collector.address

    def stop(self) -> None:
        """Stop serving and close both sockets (pending long polls return)."""
        self._close_http()
        if self.collector is not None:
            self.collector.stop()
        if self.recorder is not None:
            self.recorder.close()

    def __enter__(self) -> "EmbeddedEngine":
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()
