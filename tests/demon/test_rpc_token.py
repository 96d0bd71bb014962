"""Token file: created 0600 with a random value, read back, compared safely."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest

from demon.rpc.token import TokenError, ensure_token, read_token, tokens_equal


def test_created_once_0600_and_stable(tmp_path: Path) -> None:
    path = tmp_path / "run" / "rpc.token"
    token = ensure_token(path)
    assert len(token) == 64 and int(token, 16) >= 0
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert ensure_token(path) == token
    assert read_token(path) == token
    assert ensure_token(tmp_path / "other") != token


def test_existing_file_kept(tmp_path: Path) -> None:
    path = tmp_path / "t"
    path.write_text("  my-secret\n")
    assert ensure_token(path) == "my-secret"


def test_missing_and_empty_are_clear_errors(tmp_path: Path) -> None:
    with pytest.raises(TokenError, match="does not exist"):
        read_token(tmp_path / "none")
    (tmp_path / "empty").write_text("\n")
    with pytest.raises(TokenError, match="empty"):
        read_token(tmp_path / "empty")


def test_compare() -> None:
    assert tokens_equal("abc", "abc")
    assert not tokens_equal("abc", "abd")
    assert not tokens_equal("abc", "ab")
    assert not tokens_equal("abc", None)
    assert not tokens_equal("abc", "")
