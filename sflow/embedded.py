"""The embedded engine as a service: engine + UDP collector + HTTP API in threads.

    engine = EmbeddedEngine(sflow_addr=("127.0.0.1", 6343), http_addr=("127.0.0.1", 0)).start()
    client = SFlowRTClient(engine.url)
    ...
    engine.stop()

Port 0 picks an ephemeral port for either socket; ``sflow_address`` and
``url`` give what was bound. The HTTP API (``sflow.httpapi.EngineAPI``, a
Starlette app) is served by uvicorn on a thread (``sflow.webserve``).
"""

from __future__ import annotations

import logging
import time
from typing import Any, Callable

from sflow.auth import Tokens
from sflow.collector import RCVBUF_WANTED, Collector
from sflow.engine import Engine
from sflow.groups import AsnTable
from sflow.httpapi import EngineAPI
from sflow.webserve import BackgroundServer, is_loopback

__all__ = ["EmbeddedEngine"]

log = logging.getLogger(__name__)


class EmbeddedEngine:
    """Runs an :class:`Engine` with its collector and HTTP API until :meth:`stop`.

    ``tokens``: bearer tokens for writes. When the HTTP API is bound beyond
    loopback, writes need one of them (none given: every write is refused
    with 401); on loopback they are not asked for.
    """

    def __init__(self, sflow_addr: tuple[str, int] = ("127.0.0.1", 6343),
                 http_addr: tuple[str, int] = ("127.0.0.1", 8008), readonly: bool = False,
                 max_flows: int = 100_000, rcvbuf: int = RCVBUF_WANTED,
                 clock: Callable[[], float] = time.time, fast_path: bool = True,
                 tokens: Tokens | None = None, asn_table: AsnTable | None = None,
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
        exposed = not is_loopback(http_addr[0])
        self.api = EngineAPI(self.engine, readonly=readonly, clock=clock,
                             extra_analyzer=self._collector_stats, tokens=tokens,
                             require_token=exposed, asn_table=asn_table)
        self.http: BackgroundServer | None = None
        self._http_address: tuple[str, int] | None = None

    def _collector_stats(self) -> dict[str, Any]:
        return self.collector.stats() if self.collector is not None else {}

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
        self.api.closing.clear()
        server = BackgroundServer(self.api.app, address[0], address[1], name="sflow-rt-api",
                                  timeout_graceful_shutdown=1)
        server.start()
        self.http = server
        self._http_address = server.address

    def _close_http(self) -> None:
        # Long polls see `closing` within a poll step; nothing here takes the engine lock,
        # so a stop never waits on a busy engine.
        self.api.closing.set()
        if self.http is not None:
            self.http.stop(timeout=3.0)

    def suspend_http(self) -> None:
        """Close the HTTP API (connections refused) while collection goes on (tests: outages)."""
        self._close_http()

    def resume_http(self) -> None:
        """Serve the HTTP API again on the same address, with the same engine state."""
        if self._http_address is None:
            raise RuntimeError("engine not started")
        self._serve_http(self._http_address)

    @property
    def url(self) -> str:
        """Base URL of the HTTP API, e.g. ``http://127.0.0.1:40123``."""
        if self.http is None:
            raise RuntimeError("engine not started")
        return self.http.url

    @property
    def http_listen(self) -> str:
        """``HOST:PORT`` the HTTP API is bound to."""
        if self.http is None:
            raise RuntimeError("engine not started")
        return self.http.listen

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
