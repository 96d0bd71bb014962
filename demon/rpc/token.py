"""The shared RPC token: a file both sides read (``--token-file``).

The component creates it (mode 0600, 64 hex characters) when it is missing;
the daemon only reads it.
"""

from __future__ import annotations

import hmac
import os
import secrets
from pathlib import Path


class TokenError(Exception):
    """The token file is missing, unreadable or empty."""


def read_token(path: str | os.PathLike[str]) -> str:
    """The token in ``path`` (surrounding whitespace stripped)."""
    try:
        token = Path(path).read_text(encoding="utf-8").strip()
    except FileNotFoundError:
        raise TokenError(f"token file {path} does not exist (the controller component creates it)") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise TokenError(f"token file {path} is unreadable: {exc}") from None
    if not token:
        raise TokenError(f"token file {path} is empty")
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
    return hmac.compare_digest(expected.encode("utf-8"), given.encode("utf-8"))
