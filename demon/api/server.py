"""``demon-watch``'s API listener: the FastAPI app on ``sflow.webserve``'s
``BackgroundServer`` (bound before the daemon starts, so a bad or busy address
is one line at start)."""

from __future__ import annotations

import logging
from typing import Any

from demon.api.app import create_app
from demon.api.auth import Auth
from demon.rpc.token import ApiToken
from sflow.webserve import BackgroundServer, format_listen, is_loopback

log = logging.getLogger("demon.api")


class ApiServer:
    """Serve ``daemon``'s API on ``host:port`` (port 0: ephemeral)."""

    def __init__(self, daemon: Any, host: str, port: int, tokens: list[ApiToken] | None = None,
                 *, answer_timeout: float = 20.0) -> None:
        self.exposed = not is_loopback(host)
        self.auth = Auth(tokens or [], reads_need_token=self.exposed)
        self.info: dict[str, Any] = {"listen": format_listen(host, port),
                                     "exposed": self.exposed, "writes": bool(tokens)}
        self.app = create_app(daemon, self.auth, api_info=self.info,
                              answer_timeout=answer_timeout)
        self.http = BackgroundServer(self.app, host, port, name="api")

    def start(self) -> "ApiServer":
        self.http.start()
        self.info["listen"] = self.http.listen
        self.info["url"] = self.url
        log.info("API at %s/api/v1/ (%s%s)", self.url,
                 "exposed beyond loopback: every request needs a token" if self.exposed
                 else "loopback", "" if self.auth.tokens else "; read-only: no --api-token-file")
        return self

    @property
    def url(self) -> str:
        return self.http.url

    def stop(self) -> None:
        self.app.state.wakeup.detach()
        self.app.state.dashboard_detach()
        self.http.stop()
