"""Token files: the shared RPC token (``--token-file``) and the daemon's API
tokens (``--api-token-file``).

The component creates the RPC token file (mode 0600, 64 hex characters) when it
is missing; the daemon only reads it. An API token file holds one token per
line, ``name:secret`` or a bare secret (named ``operator``); the name is who
the daemon records as having asked. ``name:secret:ro`` is a read-only token.

Both kinds are refused (:class:`TokenError`, one line) when the file can be
read or written by its group or by others (a secret anyone can read is no
secret: ``chmod 600 FILE``), or when a secret is shorter than
:data:`MIN_SECRET` characters (a short token can be guessed over the network).

Standard library only: the POX component imports this.
"""

from __future__ import annotations

import hmac
import os
import re
import secrets
import stat
from dataclasses import dataclass
from pathlib import Path

MIN_SECRET = 16
DEFAULT_NAME = "operator"
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.@-]{0,63}$")


class TokenError(Exception):
    """The token file is missing, unreadable, empty, too open or too weak."""


def check_private(path: str | os.PathLike[str]) -> None:
    """Raise :class:`TokenError` unless only the owner may read or write ``path``."""
    try:
        mode = stat.S_IMODE(os.stat(path).st_mode)
    except FileNotFoundError:
        raise TokenError(f"token file {path} does not exist") from None
    except OSError as exc:
        raise TokenError(f"token file {path} is unreadable: {exc.strerror or exc}") from None
    if mode & 0o077:
        raise TokenError(f"token file {path} is readable or writable by others (mode "
                         f"{mode:04o}): run chmod 600 {path}")


def _read_text(path: str | os.PathLike[str], what: str) -> str:
    try:
        text = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise TokenError(f"token file {path} does not exist{what}") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise TokenError(f"token file {path} is unreadable: {exc}") from None
    check_private(path)
    return text


def _check_secret(path: str | os.PathLike[str], secret: str, where: str = "") -> None:
    if len(secret) < MIN_SECRET:
        raise TokenError(f"token file {path}{where}: the token is {len(secret)} characters, "
                         f"at least {MIN_SECRET} are needed (e.g. openssl rand -hex 32)")


def read_token(path: str | os.PathLike[str]) -> str:
    """The RPC token in ``path`` (surrounding whitespace stripped)."""
    token = _read_text(path, " (the controller component creates it)").strip()
    if not token:
        raise TokenError(f"token file {path} is empty")
    _check_secret(path, token)
    return token


def ensure_token(path: str | os.PathLike[str]) -> str:
    """Read the token file, creating it (0600, random) if it does not exist."""
    target = Path(path)
    if not target.exists():
        target.parent.mkdir(parents=True, exist_ok=True)
        token = secrets.token_hex(32)
        try:
            # O_EXCL: if two processes race, the loser reads the winner's token.
            fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            return read_token(target)
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(token + "\n")
        return token
    return read_token(target)


def tokens_equal(expected: str, given: str | None) -> bool:
    """Constant-time comparison (no timing hint about how much matched)."""
    if given is None:
        return False
    return hmac.compare_digest(expected.encode("utf-8", "surrogatepass"),
                               given.encode("utf-8", "surrogatepass"))


@dataclass(frozen=True)
class ApiToken:
    name: str
    secret: str
    can_write: bool = True


def read_api_tokens(path: str | os.PathLike[str]) -> list[ApiToken]:
    """The tokens of an API token file (see the module's doc)."""
    tokens: list[ApiToken] = []
    seen: set[str] = set()
    for number, raw in enumerate(_read_text(path, "").splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        where = f" line {number}"
        name, secret, can_write = DEFAULT_NAME, line, True
        if ":" in line:
            name, _, secret = line.partition(":")
            if secret.endswith((":ro", ":rw")):
                secret, role = secret[:-3], secret[-2:]
                can_write = role == "rw"
            if not _NAME.match(name):
                raise TokenError(f"token file {path}{where}: name {name!r} must be 1-64 "
                                 "letters, digits or _.@- (write name:secret)")
        _check_secret(path, secret, where)
        if secret in seen:
            raise TokenError(f"token file {path}{where}: the same token appears twice")
        seen.add(secret)
        tokens.append(ApiToken(name, secret, can_write))
    if not tokens:
        raise TokenError(f"token file {path} is empty")
    return tokens


def ensure_api_tokens(path: str | os.PathLike[str]) -> list[ApiToken]:
    """Read the API token file, creating it (0600, ``operator:<random>``) if missing."""
    target = Path(path)
    if not target.exists():
        target.parent.mkdir(parents=True, exist_ok=True)
        try:
            fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            return read_api_tokens(target)
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(f"{DEFAULT_NAME}:{secrets.token_hex(32)}\n")
    return read_api_tokens(target)


def client_token(path: str | os.PathLike[str]) -> str:
    """The secret a client sends from a token file: its first token (a client's
    file may be the daemon's own file, or hold just one ``name:secret``)."""
    return read_api_tokens(path)[0].secret
