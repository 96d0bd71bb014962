"""Who may do what on the daemon's API.

``Authorization: Bearer <secret>``, checked against the API token file
(``demon.rpc.token.read_api_tokens``). Writes always need a token that may
write; reads need a token only when the API is bound beyond loopback. Errors:
401 (no token, or one we do not know) and 403 (a read-only token writing, or
no tokens configured at all).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

from demon.rpc.token import ApiToken, tokens_equal


class AuthError(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


@dataclass(frozen=True)
class Identity:
    name: str
    can_write: bool


ANONYMOUS = Identity("anonymous", False)


class Auth:
    """``tokens``: the API tokens (empty: nobody may write); ``reads_need_token``:
    the API is reachable from other hosts."""

    def __init__(self, tokens: Sequence[ApiToken] = (), reads_need_token: bool = False) -> None:
        self.tokens = list(tokens)
        self.reads_need_token = reads_need_token

    def _identify(self, header: str | None) -> Identity | None:
        if not header:
            return None
        scheme, _, secret = header.strip().partition(" ")
        if scheme.lower() != "bearer" or not secret.strip():
            raise AuthError(401, "malformed Authorization header (expected: Bearer <token>)")
        secret = secret.strip()
        found = None
        for token in self.tokens:  # compare with every one: no timing hint
            if tokens_equal(token.secret, secret):
                found = token
        if found is None:
            raise AuthError(401, "unknown token")
        return Identity(found.name, found.can_write)

    def reader(self, header: str | None) -> Identity:
        who = self._identify(header)
        if who is None:
            if self.reads_need_token:
                raise AuthError(401, "this API is reachable from other hosts: reads need a "
                                     "token too (Authorization: Bearer <token>)")
            return ANONYMOUS
        return who

    def writer(self, header: str | None) -> Identity:
        if not self.tokens:
            raise AuthError(403, "this daemon takes no operator actions over its API: it was "
                                 "started without --api-token-file")
        who = self._identify(header)
        if who is None:
            raise AuthError(401, "operator actions need a token (Authorization: Bearer <token>)")
        if not who.can_write:
            raise AuthError(403, f"token {who.name!r} is read-only")
        return who
