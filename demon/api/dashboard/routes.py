"""The dashboard on the daemon's API address: the page at ``/``, its assets
under ``/dashboard/``, and the two reads only the page needs:

* ``GET /api/v1/policies/{name}/flows``: the policy's top flows over the last
  minutes (rates from the ``/activeflows`` polls the runtime makes anyway), its
  threshold, and which of them are tapped;
* ``GET /api/v1/fabric``: the switches the controller reported (roles, host
  ports, uplinks, capture port) and the live mirrors placed on them.

The page and its assets are code, not data: they are served without a token
(so that an operator can load the page and paste one). Every read and write
the page makes goes through the API with the token the operator gave; the page
never works around the API's auth.
"""

from __future__ import annotations

import time
from importlib import resources
from typing import Any, Callable

from fastapi import Depends, FastAPI, Header, Query
from fastapi.responses import HTMLResponse, Response

from demon.api.auth import Auth, Identity
from demon.api.dashboard.fabric import fabric_json
from demon.api.dashboard.flowhistory import FlowHistory, policy_chart_info, rows_of
from demon.model import LIVE_STATES

STATIC = "static"
TYPES = {".js": "text/javascript; charset=utf-8", ".css": "text/css; charset=utf-8",
         ".html": "text/html; charset=utf-8", ".svg": "image/svg+xml"}
# Everything the page loads comes from this address; no inline script or style.
CSP = ("default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
       "connect-src 'self'; object-src 'none'; base-uri 'none'; frame-ancestors 'none'; "
       "form-action 'none'")
HEADERS = {"Cache-Control": "no-cache", "Content-Security-Policy": CSP,
           "X-Content-Type-Options": "nosniff", "Referrer-Policy": "no-referrer"}


def _assets() -> dict[str, tuple[bytes, str]]:
    """The page's files (package data), read once: name → (body, content type)."""
    out = {}
    root = resources.files(__package__).joinpath(STATIC)
    for entry in root.iterdir():
        suffix = "." + entry.name.rsplit(".", 1)[-1] if "." in entry.name else ""
        if entry.is_file() and suffix in TYPES:
            out[entry.name] = (entry.read_bytes(), TYPES[suffix])
    return out


def attach_history(daemon: Any, history: FlowHistory) -> Callable[[], None]:
    """Feed ``history`` from the runtime's own ``/activeflows`` polls; returns the
    detach function (no-op for a daemon without an engine side)."""
    engine = getattr(daemon, "engine", None)
    listeners = getattr(engine, "poll_listeners", None)
    if listeners is None:
        return lambda: None

    def on_poll(name: str, policy: Any, flows: Any, at: float, settled: bool) -> None:
        history.add(name, rows_of(policy, flows), at, settled)

    listeners.append(on_poll)

    def detach() -> None:
        if on_poll in listeners:
            listeners.remove(on_poll)
    return detach


def add_dashboard(app: FastAPI, daemon: Any, auth: Auth, snapshot: Callable[[], Any],
                  error: Callable[[int, str], Exception]) -> FlowHistory:
    """Add the page and its reads to the API's ``app``. ``snapshot()`` is the
    API's (503 while starting); ``error(status, message)`` its error type."""
    assets = _assets()
    history = FlowHistory()
    app.state.dashboard_detach = attach_history(daemon, history)
    app.state.flow_history = history

    def reader(authorization: str | None = Header(default=None)) -> Identity:
        return auth.reader(authorization)

    @app.get("/", include_in_schema=False)
    def page() -> HTMLResponse:
        body, _ = assets["index.html"]
        return HTMLResponse(body, headers=HEADERS)

    @app.get("/dashboard/{name}", include_in_schema=False)
    def asset(name: str) -> Response:
        found = assets.get(name)
        if found is None:
            raise error(404, f"no dashboard file {name!r}")
        body, content_type = found
        return Response(body, media_type=content_type, headers=HEADERS)

    @app.get("/api/v1/fabric")
    def fabric(_: Identity = Depends(reader)) -> dict[str, Any]:
        snap = snapshot()
        side = getattr(daemon, "controller_side", None)
        switches = list(getattr(side, "switches", None) or snap.controller.get("switches") or ())
        engine = getattr(daemon, "engine", None)
        return fabric_json(switches, list(getattr(engine, "port_map", None) or ()),
                           snap.state.taps.values(),
                           controller_reachable=bool(snap.controller.get("reachable")),
                           at=time.time())

    @app.get("/api/v1/policies/{name}/flows")
    def flows(name: str, _: Identity = Depends(reader),
              window: float = Query(default=300.0, ge=10, le=600,
                                    description="seconds of history (10..600)"),
              top: int = Query(default=6, ge=1, le=20,
                               description="at most this many flows (by peak rate)")
              ) -> dict[str, Any]:
        snap = snapshot()
        pol = snap.policies.get(name)
        if pol is None:
            raise error(404, f"no policy {name!r}")
        now = time.time()
        since = now - window
        body = history.series(name, since, top)
        wanted = {row["flow_key"] for row in body["flows"]}
        taps: dict[str, Any] = {}
        # Each charted flow's live tap, else its newest one that ended within the window
        # (one pass, no sort: the state file may keep many ended taps).
        for tap in (*snap.state.taps.values(), *snap.archive.values()):
            if tap.policy != name or tap.flow_key not in wanted:
                continue
            if tap.ended_at is not None and tap.ended_at < since:
                continue
            have = taps.get(tap.flow_key)
            if have is None or (tap.state in LIVE_STATES, tap.created_at) > (
                    have.state in LIVE_STATES, have.created_at):
                taps[tap.flow_key] = tap
        for row in body["flows"]:
            tap = taps.get(row["flow_key"])
            row["tap_id"] = tap.tap_id if tap else None
            row["tap_state"] = tap.state if tap else None
        return {"policy": name, "kind": getattr(pol, "kind", None), **policy_chart_info(pol),
                "paused": name in snap.state.paused, "window_s": window, "as_of": now, **body}

    return history
