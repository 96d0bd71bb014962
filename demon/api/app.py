"""The daemon's HTTP API (``/api/v1/``, FastAPI): status, taps and each tap's
story, policies, operator actions, and the resumable stream of transitions.

Reads come from the runtime's read model (``demon.runtime.view``): a
snapshot the mutating loop published, never the state file. Writes are
operator requests handed to the loop (``Daemon.ask``); the decision core
answers each one once, and that answer is the reply. docs/api.md documents
every endpoint; errors are ``{"error": "one line"}`` with 400 (the field is
named), 401, 403, 404, 409, 503 (starting) or 504 (no answer in time).
"""

from __future__ import annotations

import asyncio
import json
import logging
from concurrent.futures import Future
from typing import Any, AsyncIterator, Callable, Mapping, Protocol

from fastapi import Depends, FastAPI, Header, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field, field_validator
from starlette.exceptions import HTTPException as StarletteHTTPException

from demon.api.auth import AuthError, Auth, Identity
from demon.api.records import policies_json, status_json, story_json, tap_json
from demon.model import LIVE_STATES, Answer
from demon.runtime.items import Ask
from demon.runtime.view import ReadModel, Snapshot, Transition
from demon.tap_request import parse_at
from demon.units import UnitError, parse_duration

log = logging.getLogger("demon.api")

MAX_WAIT = 60.0  # seconds a long poll may wait
KEEPALIVE = 15.0  # seconds between SSE comments on a quiet stream
STATE_FILTERS = (*LIVE_STATES, "removed", "failed", "live", "ended")


class Daemon(Protocol):
    """What the API needs from the runtime."""

    view: ReadModel

    def ask(self, ask: Ask) -> "Future[Answer]": ...


class ApiError(Exception):
    def __init__(self, status: int, message: str, **extra: Any) -> None:
        super().__init__(message)
        self.status, self.message, self.extra = status, message, extra


def _error(status: int, message: str, **extra: Any) -> JSONResponse:
    headers = {"WWW-Authenticate": "Bearer"} if status == 401 else None
    return JSONResponse({"error": message, **extra}, status_code=status, headers=headers)


class FastJSON(JSONResponse):
    """The read endpoints' bodies are plain JSON types already: ``json.dumps`` them as
    they are (FastAPI's encoder walks every value first: ~30 ms for 1,000 taps)."""

    def render(self, content: Any) -> bytes:
        return json.dumps(content, separators=(",", ":"), default=str).encode()


def _field(loc: tuple[Any, ...]) -> str:
    parts = [str(p) for p in loc]
    if parts and parts[0] in ("body", "query", "path", "header") and len(parts) > 1:
        parts = parts[1:]
    return ".".join(parts) or "body"


#: the largest datapath id (64 bits) and physical port number (OpenFlow 1.3's OFPP_MAX)
MAX_DPID = 2**64 - 1
MAX_PORT = 0xFFFFFF00


def _at_in_range(dpid: int, port: int, given: Any) -> str:
    if not 0 < dpid <= MAX_DPID or not 0 < port <= MAX_PORT:
        raise ValueError(f"dpid 1..2^64-1 and port 1..{MAX_PORT:#x}, got {given!r}")
    return f"{dpid}/{port}"


class TapBody(BaseModel):
    """``POST /api/v1/taps``: mirror ``flow`` (the policy's key order) now."""

    model_config = ConfigDict(extra="forbid")

    policy: str = Field(min_length=1, max_length=64)
    flow: str = Field(min_length=1, max_length=1024)
    hold: float | None = None
    at: str | None = None

    # "before" validators: pydantic's own coercion would take true as 1 (second, dpid,
    # port) and a list of floats as an "at" string error
    @field_validator("hold", mode="before")
    @classmethod
    def _hold(cls, value: Any) -> float | None:
        if value is None:
            return None
        if isinstance(value, bool) or not isinstance(value, (int, float, str)):
            raise ValueError(f'seconds or a duration like "5m", got {value!r}')
        try:
            seconds = parse_duration(value)
        except (UnitError, OverflowError) as exc:  # OverflowError: an int past float
            raise ValueError(str(exc)) from None
        if not 0 < seconds <= 86400:
            raise ValueError(f"seconds above 0 and at most 86400 (1d), got {value!r}")
        return seconds

    @field_validator("at", mode="before")
    @classmethod
    def _at(cls, value: Any) -> str | None:
        if value is None:
            return None
        if isinstance(value, list):
            if len(value) != 2 or any(isinstance(v, bool) or not isinstance(v, int)
                                      for v in value):
                raise ValueError(f"[dpid, port] with positive integers, got {value!r}")
            return _at_in_range(value[0], value[1], value)
        if not isinstance(value, str):
            raise ValueError(f'"DPID/PORT" or [dpid, port], got {value!r}')
        try:
            dpid, port = parse_at(value)
        except ValueError as exc:
            raise ValueError(str(exc).replace("--at: ", "")) from None
        return _at_in_range(dpid, port, value)


class _Wakeup:
    """Wakes the event loop's long polls and streams when the mutator publishes
    new transitions (the listener runs on the mutator's thread: it only
    schedules a callback here)."""

    def __init__(self, view: ReadModel) -> None:
        self.view = view
        self._loop: asyncio.AbstractEventLoop | None = None
        self._event: asyncio.Event | None = None

    def _attach(self) -> asyncio.Event:
        loop = asyncio.get_running_loop()
        if self._loop is not loop or self._event is None:
            if self._loop is None:
                self.view.add_listener(self._notify)
            self._loop, self._event = loop, asyncio.Event()
        return self._event

    def detach(self) -> None:
        self.view.remove_listener(self._notify)

    def _notify(self) -> None:
        loop = self._loop
        if loop is not None and not loop.is_closed():
            try:
                loop.call_soon_threadsafe(self._bump)
            except RuntimeError:  # the loop closed meanwhile
                pass

    def _bump(self) -> None:
        event, self._event = self._event, asyncio.Event()
        if event is not None:
            event.set()

    async def after(self, after: int, timeout: float, limit: int) -> list[Transition]:
        event = self._attach()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            items = self.view.transitions_after(after, limit)
            if items:
                return items
            left = deadline - loop.time()
            if left <= 0:
                return []
            try:
                await asyncio.wait_for(event.wait(), left)
            except asyncio.TimeoutError:
                pass
            event = self._attach()


def create_app(daemon: Daemon, auth: Auth, *, api_info: Mapping[str, Any] | None = None,
               answer_timeout: float = 20.0) -> FastAPI:
    """The ASGI app; serve it with ``sflow.webserve.BackgroundServer``."""
    app = FastAPI(title="pytapdemon", version="1", docs_url=None, redoc_url=None,
                  openapi_url="/api/v1/openapi.json", default_response_class=FastJSON)
    view = daemon.view
    wakeup = _Wakeup(view)
    app.state.wakeup = wakeup
    info = dict(api_info or {})

    # -- errors: one line of JSON, whatever went wrong ----------------------------------

    @app.exception_handler(ApiError)
    async def _api_error(_: Request, exc: ApiError) -> JSONResponse:
        return _error(exc.status, exc.message, **exc.extra)

    @app.exception_handler(AuthError)
    async def _auth_error(_: Request, exc: AuthError) -> JSONResponse:
        return _error(exc.status, exc.message)

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        err = exc.errors()[0] if exc.errors() else {"loc": ("body",), "msg": "invalid"}
        msg = str(err.get("msg", "invalid")).removeprefix("Value error, ")
        if err.get("type") == "json_invalid":
            msg = "not valid JSON"
        elif err.get("type") == "extra_forbidden":
            msg = "unknown field"
        elif tuple(err.get("loc", ())) == ("body",) and err.get("type") in (
                "model_attributes_type", "dict_type"):
            # FastAPI reads the body as JSON only when it says so: without the header
            # pydantic's own message ("a valid dictionary ...") would mislead
            kind = request.headers.get("content-type", "")
            msg = ("a JSON object is expected" if "json" in kind.lower() else
                   f"a JSON object is expected with Content-Type: application/json "
                   f"(got {kind[:60]!r})" if kind else
                   "a JSON object is expected with Content-Type: application/json")
        return _error(400, f"{_field(tuple(err.get('loc', ())))}: {msg}")

    @app.exception_handler(StarletteHTTPException)
    async def _http(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        message = {404: "no such endpoint", 405: "method not allowed"}.get(
            exc.status_code, str(exc.detail))
        return _error(exc.status_code, message)

    @app.exception_handler(Exception)
    async def _internal(_: Request, exc: Exception) -> JSONResponse:
        log.exception("API request failed")
        return _error(500, f"internal error: {type(exc).__name__}")

    # -- auth ---------------------------------------------------------------------------

    def reader(authorization: str | None = Header(default=None)) -> Identity:
        return auth.reader(authorization)

    def writer(authorization: str | None = Header(default=None)) -> Identity:
        return auth.writer(authorization)

    def snapshot() -> Snapshot:
        if not view.ready:
            raise ApiError(503, "the daemon is starting")
        return view.snapshot()

    # -- reads --------------------------------------------------------------------------

    @app.get("/api/v1")
    def index(_: Identity = Depends(reader)) -> FastJSON:
        return FastJSON({"api": "pytapdemon", "version": 1, "endpoints": [
            "GET /api/v1/status", "GET /api/v1/taps", "GET /api/v1/taps/{id}",
            "GET /api/v1/policies", "GET /api/v1/transitions",
            "GET /api/v1/transitions/stream", "POST /api/v1/taps",
            "POST /api/v1/taps/{id}/release", "POST /api/v1/policies/{name}/pause",
            "POST /api/v1/policies/{name}/resume", "GET /metrics",
            "GET /api/v1/fabric", "GET /api/v1/policies/{name}/flows", "GET / (dashboard)"]})

    @app.get("/api/v1/status")
    def status(_: Identity = Depends(reader)) -> FastJSON:
        return FastJSON(status_json(snapshot(), info))

    @app.get("/api/v1/taps")
    def taps(_: Identity = Depends(reader),
             state: str | None = Query(default=None, max_length=200,
                                       description="comma-separated states, or live/ended"),
             policy: str | None = Query(default=None, max_length=200),
             since: float | None = Query(default=None, ge=0,
                                         description="taps alive at or after (epoch s)"),
             until: float | None = Query(default=None, ge=0,
                                         description="taps created at or before (epoch s)"),
             limit: int = Query(default=1000, ge=1, le=100000)) -> FastJSON:
        snap = snapshot()
        wanted: set[str] | None = None
        if state:
            wanted = set()
            for word in (w.strip() for w in state.split(",") if w.strip()):
                if word not in STATE_FILTERS:
                    raise ApiError(400, f"state: {word!r} is not one of "
                                        f"{', '.join(STATE_FILTERS)}")
                wanted |= (set(LIVE_STATES) if word == "live" else
                           {"removed", "failed"} if word == "ended" else {word})
        policies = {p.strip() for p in policy.split(",")} if policy else None
        out = []
        for tap in snap.taps():
            if wanted is not None and tap.state not in wanted:
                continue
            if policies is not None and tap.policy not in policies:
                continue
            if until is not None and tap.created_at > until:
                continue
            if since is not None and tap.ended_at is not None and tap.ended_at < since:
                continue
            out.append(tap_json(tap))
            if len(out) >= limit:
                break
        return FastJSON({"taps": out, "count": len(out), "as_of": snap.at})

    @app.get("/api/v1/taps/{tap_id}")
    def tap(tap_id: str, _: Identity = Depends(reader)) -> FastJSON:
        snap = snapshot()
        found = snap.tap(tap_id)
        if found is None:
            raise ApiError(404, f"no tap {tap_id!r}")
        return FastJSON(story_json(snap, found, view.transitions_of(tap_id)))

    @app.get("/api/v1/policies")
    def policies(_: Identity = Depends(reader)) -> FastJSON:
        return FastJSON(policies_json(snapshot()))

    @app.get("/api/v1/transitions")
    async def transitions(_: Identity = Depends(reader),
                          after: int = Query(default=0, ge=0),
                          limit: int = Query(default=100, ge=1, le=1000),
                          timeout: float = Query(default=0.0, ge=0, le=MAX_WAIT)
                          ) -> FastJSON:
        if not view.ready:
            raise ApiError(503, "the daemon is starting")
        items = await wakeup.after(after, timeout, limit)
        last = items[-1].id if items else min(after, view.last_id)
        return FastJSON({"transitions": [t.to_json() for t in items], "last_id": last})

    @app.get("/api/v1/transitions/stream")
    async def stream(request: Request, _: Identity = Depends(reader),
                     after: int | None = Query(default=None, ge=0),
                     last_event_id: str | None = Header(default=None)) -> StreamingResponse:
        if not view.ready:
            raise ApiError(503, "the daemon is starting")
        cursor = after if after is not None else 0
        if last_event_id is not None:
            try:
                cursor = int(last_event_id)
            except ValueError:
                raise ApiError(400, "Last-Event-ID: must be a transition id (an integer)") \
                    from None

        async def events() -> AsyncIterator[bytes]:
            position = cursor
            yield b"retry: 2000\n\n"
            while True:
                items = await wakeup.after(position, KEEPALIVE, 500)
                if not items:
                    if await request.is_disconnected():
                        return
                    yield b": keep-alive\n\n"
                    continue
                for t in items:
                    data = json.dumps(t.to_json(), separators=(",", ":"), default=str)
                    yield f"id: {t.id}\nevent: transition\ndata: {data}\n\n".encode()
                    position = t.id

        return StreamingResponse(events(), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache",
                                          "X-Accel-Buffering": "no"})

    # -- writes -------------------------------------------------------------------------

    async def decide(ask: Ask) -> Answer:
        if not view.ready:
            raise ApiError(503, "the daemon is starting")
        future = daemon.ask(ask)
        try:
            return await asyncio.wait_for(asyncio.wrap_future(future), answer_timeout)
        except asyncio.TimeoutError:
            raise ApiError(504, f"no decision within {answer_timeout:g}s (the request may "
                                "still be carried out: look at the tap's transitions)") \
                from None

    def reply(answer: Answer, who: Identity, *, created: bool = False,
              invalid_field: str = "body") -> JSONResponse:
        body: dict[str, Any] = {"outcome": answer.outcome, "message": answer.message,
                                "tap_id": answer.tap_id, "who": who.name}
        if answer.tap_id:
            found = view.snapshot().tap(answer.tap_id)
            body["tap"] = tap_json(found) if found else None
        if answer.code == "ok":
            return JSONResponse(body, status_code=201 if created else 200)
        status = {"unknown_tap": 404, "unknown_policy": 404, "conflict": 409,
                  "refused": 409, "invalid": 400}.get(answer.code, 409)
        message = answer.message
        if answer.code == "invalid":
            message = f"{invalid_field}: {message}"
        return _error(status, message, outcome=answer.outcome, tap_id=answer.tap_id)

    @app.post("/api/v1/taps")
    async def tap_flow(body: TapBody, who: Identity = Depends(writer)) -> JSONResponse:
        at = parse_at(body.at) if body.at is not None else None
        answer = await decide(Ask(kind="tap", who=who.name, policy=body.policy,
                                  flow_key=body.flow, hold=body.hold, at=at))
        return reply(answer, who, created=answer.outcome == "tapped", invalid_field="flow")

    @app.post("/api/v1/taps/{tap_id}/release")
    async def release(tap_id: str, who: Identity = Depends(writer)) -> JSONResponse:
        answer = await decide(Ask(kind="release", who=who.name, target=tap_id))
        if answer.code == "unknown_tap":
            ended = view.snapshot().tap(tap_id)
            if ended is not None:  # the core forgot it long ago; the state file has not
                answer = Answer(answer.ref, "ok", "already_released",
                                f"tap {tap_id} is already {ended.state}", tap_id)
        return reply(answer, who)

    def policy_action(kind: str) -> Callable[..., Any]:
        async def act(name: str, who: Identity = Depends(writer)) -> JSONResponse:
            return reply(await decide(Ask(kind=kind, who=who.name, target=name)), who)
        return act

    app.post("/api/v1/policies/{name}/pause")(policy_action("pause"))
    app.post("/api/v1/policies/{name}/resume")(policy_action("resume"))

    @app.get("/metrics")
    def metrics(_: Identity = Depends(reader)) -> Response:
        render = getattr(daemon, "render_metrics", None)
        if render is None:
            raise ApiError(404, "no metrics here")
        body, content_type = render()
        return Response(body, media_type=content_type)

    # The dashboard (demon/api/dashboard/): the page at /, its two reads.
    from demon.api.dashboard.routes import add_dashboard

    add_dashboard(app, daemon, auth, snapshot, ApiError)
    return app

