"""The state file's errors: every failure of the tap store (``demon.store``) is a
:class:`StoreError` with one line naming the file, never a bare sqlite3 exception.

Apart from the store so that its parts (``demon.store_requests``) raise the
same errors without importing the store itself.
"""

from __future__ import annotations


class StoreError(Exception):
    """The state file cannot be used (unreadable, newer schema, bad request)."""


class StoreCorrupt(StoreError):
    """The state file is damaged (a page, a row or a value cannot be read)."""


class StoreWriteError(StoreError):
    """A save failed; nothing of it was written. ``cause`` is SQLite's reason
    (e.g. "database or disk is full")."""

    def __init__(self, message: str, cause: str) -> None:
        super().__init__(message)
        self.cause = cause


def reason(exc: BaseException) -> str:
    """SQLite's own words (or the parse error's) in one line."""
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return text
