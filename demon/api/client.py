"""A small client of the daemon's API (``demon-tap --url``; tests).

``ApiClient(url, token)``: ``get``/``post`` return the JSON body or raise
:class:`ApiClientError` (``status`` 0: the daemon could not be reached).
"""

from __future__ import annotations

from typing import Any, Iterator

import requests


class ApiClientError(Exception):
    def __init__(self, status: int, message: str, body: dict[str, Any] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.body = body or {}


class ApiClient:
    def __init__(self, url: str, token: str | None = None, timeout: float = 30.0) -> None:
        self.url = url.rstrip("/")
        self.timeout = timeout
        self.session = requests.Session()
        if token:
            self.session.headers["Authorization"] = f"Bearer {token}"

    def close(self) -> None:
        self.session.close()

    def _call(self, method: str, path: str, **kw: Any) -> dict[str, Any]:
        kw.setdefault("timeout", self.timeout)
        try:
            resp = self.session.request(method, self.url + path, **kw)
        except requests.Timeout:
            raise ApiClientError(0, f"{self.url}: no answer within {kw['timeout']:g}s") from None
        except requests.RequestException as exc:
            reason = getattr(exc, "args", [exc])[0]
            raise ApiClientError(0, f"cannot reach the daemon at {self.url} ({type(exc).__name__}"
                                    f"{': ' + str(reason)[:120] if reason else ''})") from None
        try:
            body = resp.json()
        except ValueError:
            body = {"error": resp.text[:200] or resp.reason}
        if resp.status_code >= 400:
            raise ApiClientError(resp.status_code, str(body.get("error") or resp.reason), body)
        return body

    def get(self, path: str, **params: Any) -> dict[str, Any]:
        return self._call("GET", path, params={k: v for k, v in params.items() if v is not None})

    def post(self, path: str, body: dict[str, Any] | None = None,
             timeout: float | None = None) -> dict[str, Any]:
        return self._call("POST", path, json=body,
                          **({"timeout": timeout} if timeout is not None else {}))

    def transitions(self, after: int = 0, page: int = 1000) -> Iterator[dict[str, Any]]:
        """Every transition after ``after`` the daemon holds now, oldest first."""
        while True:
            body = self.get("/api/v1/transitions", after=after, limit=page)
            items = body.get("transitions", [])
            yield from items
            if len(items) < page:
                return
            after = int(body["last_id"])
