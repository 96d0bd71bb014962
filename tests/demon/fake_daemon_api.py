"""A small server speaking exactly the daemon API's transition contract
(CONVENTIONS, "The daemon API"), for testing the capture agent's client
without the daemon: ``GET /api/v1/transitions?after=ID&limit=N&timeout=S`` →
``{"transitions": [...], "last_id": N}`` (long poll), Bearer tokens (401 without
or with a bad one), JSON errors ``{"error": "one line"}``."""

from __future__ import annotations

import asyncio
import threading
import time
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from sflow.webserve import BackgroundServer


def tap_entry(tap_id: str, match: dict[str, Any] | None = None, *, vlan_tag: int | None = None,
              state: str = "active", start: float | None = None, stop: float | None = None,
              packets: int = 0, nbytes: int = 0, policy: str = "elephant_tcp") -> dict[str, Any]:
    """A ``tap`` object as the contract says the daemon sends it (tap_table_entry fields)."""
    return {"tap_id": tap_id, "match": match, "vlan_tag": vlan_tag, "bidirectional": False, "policy": policy,
            "flow_key": "10.0.0.1,10.0.0.2,41000,5201", "trigger": "elephant_tcp event 3", "dpid": 1,
            "in_port": 1, "copy_port": 6, "start": time.time() if start is None else start, "stop": stop,
            "state": state, "packets": packets, "bytes": nbytes}


class FakeDaemonApi:
    def __init__(self, token: str | None = "s3cret", history: list[dict[str, Any]] | None = None) -> None:
        self.token = token
        self.records: list[dict[str, Any]] = list(history or [])
        self.requests: list[dict[str, Any]] = []  # query parameters of each poll, for asserting resumes
        self.lock = threading.Lock()
        self.server: BackgroundServer | None = None
        self.app = Starlette(routes=[Route("/api/v1/transitions", self.transitions)])

    def add(self, kind: str, tap: dict[str, Any] | None, *, cause: str = "a test said so") -> dict[str, Any]:
        with self.lock:
            rid = (self.records[-1]["id"] if self.records else 0) + 1
            rec = {"id": rid, "at": time.time(), "tap_id": tap["tap_id"] if tap else None,
                   "policy": tap["policy"] if tap else "elephant_tcp", "kind": kind,
                   "state": tap["state"] if tap else None, "cause": cause, "detail": {}, "tap": tap}
            self.records.append(rec)
        return rec

    async def transitions(self, request: Request) -> JSONResponse:
        auth = request.headers.get("authorization", "")
        if self.token is not None and auth != f"Bearer {self.token}":
            return JSONResponse({"error": "missing or bad token"}, status_code=401)
        try:
            after = int(request.query_params.get("after", "0"))
            limit = int(request.query_params.get("limit", "100"))
            timeout = min(float(request.query_params.get("timeout", "0")), 60.0)
        except ValueError:
            return JSONResponse({"error": "after, limit, timeout: numbers"}, status_code=400)
        self.requests.append({"after": after, "limit": limit, "timeout": timeout})
        deadline = time.monotonic() + timeout
        while True:
            with self.lock:
                found = [r for r in self.records if r["id"] > after][:limit]
                last = self.records[-1]["id"] if self.records else 0
            if found or time.monotonic() >= deadline:
                return JSONResponse({"transitions": found, "last_id": last})
            await asyncio.sleep(0.01)

    def start(self, port: int = 0) -> "FakeDaemonApi":
        self.server = BackgroundServer(self.app, "127.0.0.1", port, name="fake daemon").start()
        return self

    @property
    def url(self) -> str:
        assert self.server is not None
        return self.server.url

    @property
    def port(self) -> int:
        assert self.server is not None
        return self.server.address[1]

    def stop(self) -> None:
        if self.server is not None:
            self.server.stop()
            self.server = None
