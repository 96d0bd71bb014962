"""A daemon for the dashboard's tests without the lab: the real runtime and
API (real time, speed 1) between a scripted sFlow-RT (``responses``) and the
in-process fake controller of ``tests/demon/fakes.py``."""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

import httpx

from demon.api.server import ApiServer
from demon.rpc.client import RpcClient
from demon.rpc.token import ApiToken
from demon.runtime import Runtime, RuntimeOptions
from demon.store import Store
from tests.demon.fakes import TOKEN, FakeController, ScriptedEngine, wait_for

OPERATOR = ApiToken("alice", "alice-secret-0123456789")
READER = ApiToken("viewer", "viewer-secret-0123456789", can_write=False)
FLOW = "10.0.0.1,10.0.0.2,6,5001,80"
MOUSE = "10.0.0.3,10.0.0.4,6,5002,80"
ELEPHANT = """\
name: elephant
kind: elephant
description: flows above 1 Mbit/s
keys: ipsource,ipdestination,ipprotocol,tcpsourceport,tcpdestinationport
threshold: 1Mbps
interval: 1s
duration: 30s
max_duration: 2m
holddown: 3s
max_taps: 4
idle_timeout: 10s
"""


class Daemon:
    """``start()`` → the API's URL in ``url``; ``stop()`` ends everything."""

    def __init__(self, tmp: Path, mock: Any, policies: dict[str, str] | None = None,
                 tokens: list[ApiToken] | None = None) -> None:
        pol_dir = tmp / "policies"
        pol_dir.mkdir(exist_ok=True)
        for name, text in (policies or {"elephant": ELEPHANT}).items():
            (pol_dir / f"{name}.yaml").write_text(text)
        self.engine = ScriptedEngine().register(mock)
        self.controller = FakeController().start()
        self.store = Store(tmp / "state.sqlite")
        self.runtime = Runtime(pol_dir, self.engine.base_url,
                               RpcClient(self.controller.address, token=TOKEN, timeout=2.0),
                               self.store, RuntimeOptions(event_poll_timeout=1, warmup=0.0))
        self.tokens = [OPERATOR, READER] if tokens is None else tokens
        self.thread = threading.Thread(target=self.runtime.run, daemon=True)
        self.api: ApiServer | None = None
        self.url = ""

    def start(self) -> "Daemon":
        self.runtime.start()
        self.thread.start()
        self.api = ApiServer(self.runtime, "127.0.0.1", 0, self.tokens).start()
        self.url = self.api.url
        return self

    def stop(self) -> None:
        if self.api is not None:
            self.api.stop()
        if self.thread.is_alive():
            self.runtime.request_stop("test over")
            self.thread.join(timeout=15)
        self.store.close()
        self.controller.stop()

    # -- driving it ----------------------------------------------------------------------

    def flows(self, rows: list[tuple[str, float]]) -> None:
        """The elephant flow table the engine answers polls with (bits/s → bytes/s)."""
        self.engine.set_flows("demon_elephant", [(k, bps / 8, "101") for k, bps in rows])

    def elephant(self, key: str = FLOW, bps: float = 4e6) -> str:
        """The flow crosses the threshold: the tap's id once the daemon has it active."""
        self.flows([(key, bps), (MOUSE, 2e5)])
        self.engine.fire("demon_elephant", key, value=bps / 8)
        return wait_for(lambda: next((t.tap_id for t in self.runtime.state.taps.values()
                                      if t.flow_key == key and t.state == "active"), None),
                        what=f"an active tap of {key}")

    def get(self, path: str, token: ApiToken | None = None) -> httpx.Response:
        headers = {"Authorization": f"Bearer {token.secret}"} if token else {}
        return httpx.get(self.url + path, headers=headers, timeout=10)

    def post(self, path: str, token: ApiToken | None = None) -> httpx.Response:
        headers = {"Authorization": f"Bearer {token.secret}"} if token else {}
        return httpx.post(self.url + path, headers=headers, timeout=30)


def transitions(daemon: Daemon, after: int = 0) -> list[dict[str, Any]]:
    return daemon.get(f"/api/v1/transitions?after={after}&limit=1000").json()["transitions"]


def settle(seconds: float) -> None:
    time.sleep(seconds)
