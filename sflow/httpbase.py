"""What every part of the engine's HTTP API shares: errors, replies, query
parameters, and access to the engine under its lock with a deadline.

Errors are :class:`ApiError`, answered as ``text/plain`` one-liners that start
with the field or parameter at fault (``sflow.httpapi`` turns them into
responses). The route handlers are mixins of :class:`EngineAccess`
(``sflow.httpflows``, ``sflow.httpmetrics``, ``sflow.httptopology``,
``sflow.httpstatus``), put together by ``sflow.httpapi.EngineAPI``.
"""

from __future__ import annotations

import json
import math
import threading
from typing import Any, Callable

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response

from sflow import keyfuncs
from sflow.engine import Engine
from sflow.flowlog import FlowLog

__all__ = ["ApiError", "Query", "EngineAccess", "json_response", "text_response", "no_content",
           "error_line"]

_TEXT = "text/plain; charset=utf-8"


class ApiError(Exception):
    """An HTTP error answered as ``text/plain`` (the message starts with the field)."""

    def __init__(self, status: int, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.headers = headers or {}


class Query:
    """Typed access to query parameters with 400s that name the parameter."""

    def __init__(self, request: Request) -> None:
        self.params = request.query_params

    def text(self, name: str) -> str | None:
        values = self.params.getlist(name)
        return values[-1] if values else None

    def all(self, name: str) -> list[str]:
        return self.params.getlist(name)

    def number(self, name: str, default: float, low: float = -math.inf,
               high: float = math.inf) -> float:
        raw = self.text(name)
        if raw is None or raw == "":
            return default
        try:
            value = float(raw)
        except ValueError:
            raise ApiError(400, f"{name}: expected a number, got {raw!r}") from None
        if not math.isfinite(value) or value < low:
            raise ApiError(400, f"{name}: must be a finite number >= {low:g}, got {raw!r}")
        return min(value, high)

    def integer(self, name: str, default: int, low: int = -(2 ** 62),
                high: int = 2 ** 62) -> int:
        return int(self.number(name, default, low, high))


def json_response(obj: Any, status: int = 200) -> Response:
    return Response(json.dumps(obj).encode(), status_code=status, media_type="application/json")


#: control characters a client put into a name (a JSON key "\n") that an error echoes
_ESCAPES = {c: f"\\x{c:02x}" for c in range(32)} | {0x7F: "\\x7f"}


def error_line(message: str) -> str:
    """``message`` as the one line an error reply is: control characters escaped."""
    return message.translate(_ESCAPES) + "\n"


def text_response(text: str, status: int = 200, headers: dict[str, str] | None = None,
                  media_type: str = _TEXT) -> Response:
    return Response(text.encode(), status_code=status, media_type=media_type, headers=headers)


def no_content() -> Response:
    return Response(b"", status_code=204)


class EngineAccess:
    """The engine and its lock, as every route mixin reaches them (set up by
    ``sflow.httpapi.EngineAPI.__init__``)."""

    engine: Engine
    clock: Callable[[], float]
    lock_timeout: float
    #: set while the server stops: long polls end at once
    closing: threading.Event
    #: what group:/map:/link:/node:/country:/asn: consult (sflow.keyfuncs)
    keys: keyfuncs.KeyContext
    #: the flow log of definitions with log: true (the engine feeds it)
    flow_log: FlowLog

    def _locked(self, fn: Callable[..., Any], *args: Any) -> Any:
        lock = self.engine.lock
        if not lock.acquire(timeout=self.lock_timeout):
            raise ApiError(503, f"engine busy: its lock was not free within {self.lock_timeout:g} s")
        try:
            return fn(*args)
        finally:
            lock.release()

    async def engine_call(self, fn: Callable[..., Any], *args: Any) -> Any:
        """``fn(*args)`` under the engine lock, in a worker thread."""
        return await run_in_threadpool(self._locked, fn, *args)

    async def engine_json(self, fn: Callable[..., Any], *args: Any) -> Response:
        """``fn(*args)`` under the lock, encoded outside it, both off the event loop."""
        def work() -> bytes:
            return json.dumps(self._locked(fn, *args)).encode()
        return Response(await run_in_threadpool(work), media_type="application/json")

    async def read_body(self, request: Request) -> bytes:
        """The whole body (chunked or not), bounded in size and time; never partial
        (``sflow.httpapi.EngineAPI``, where the bounds are)."""
        raise NotImplementedError

    @staticmethod
    def parse_json(raw: bytes) -> Any:
        try:
            # JSON whatever the Content-Type says (InMon's scripts often send none)
            return json.loads(raw or b"null")
        except (ValueError, RecursionError) as exc:
            raise ApiError(400, f"body: not JSON: {exc}") from None
