"""Bearer tokens for the engine's HTTP API when it listens beyond loopback.

Token files follow the project's convention: mode 0600, one token per line,
``name:secret`` or a bare secret (named ``operator``); blank lines and ``#``
comments are ignored. A file readable by group or others is refused, and a
secret shorter than :data:`MIN_SECRET` characters is refused too: a guessable
token on an exposed listener is worse than none (the operator gets one clear
line and fixes it).
"""

from __future__ import annotations

import hmac
import os
import stat
from pathlib import Path

__all__ = ["TokenFileError", "Tokens", "load_tokens", "MIN_SECRET"]

MIN_SECRET = 16


class TokenFileError(ValueError):
    """A token file that cannot be used; the message names the file and why."""


class Tokens:
    """Secrets by name; :meth:`who` answers an ``Authorization`` header."""

    def __init__(self, secrets: dict[str, str]) -> None:
        self._by_name = dict(secrets)

    def __len__(self) -> int:
        return len(self._by_name)

    def who(self, authorization: str | None) -> str | None:
        """The token's name if ``authorization`` is ``Bearer <a known secret>``."""
        if not authorization:
            return None
        scheme, _, given = authorization.strip().partition(" ")
        if scheme.lower() != "bearer" or not given:
            return None
        given_bytes = given.strip().encode("utf-8", "surrogateescape")
        found = None
        for name, secret in self._by_name.items():  # compare all: no timing hint
            if hmac.compare_digest(secret.encode("utf-8"), given_bytes):
                found = name
        return found


def load_tokens(path: str | os.PathLike[str]) -> Tokens:
    """Read a token file (see the module docstring); raises :class:`TokenFileError`."""
    target = Path(path)
    try:
        info = target.stat()
        text = target.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise TokenFileError(f"token file {target}: does not exist") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise TokenFileError(f"token file {target}: unreadable: {exc}") from None
    if info.st_mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise TokenFileError(f"token file {target}: mode {stat.S_IMODE(info.st_mode):04o} lets "
                             "others read it; chmod 600 it")
    secrets: dict[str, str] = {}
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        name, sep, secret = line.partition(":")
        if not sep:
            name, secret = "operator", line
        name, secret = name.strip(), secret.strip()
        if not name or not secret:
            raise TokenFileError(f"token file {target}:{number}: expected name:secret or a secret")
        if len(secret) < MIN_SECRET:
            raise TokenFileError(f"token file {target}:{number}: token {name!r} is shorter "
                                 f"than {MIN_SECRET} characters")
        if name in secrets:
            raise TokenFileError(f"token file {target}:{number}: name {name!r} given twice")
        secrets[name] = secret
    if not secrets:
        raise TokenFileError(f"token file {target}: holds no token")
    return Tokens(secrets)
