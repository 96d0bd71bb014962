"""Token file: created 0600 with a random value, read back, compared safely."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest

from demon.rpc.token import (TokenError, ensure_api_tokens, ensure_token, read_api_tokens,
                             read_token, tokens_equal)


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
    path.write_text("  my-secret-of-20-chars\n")
    path.chmod(0o600)
    assert ensure_token(path) == "my-secret-of-20-chars"


def test_missing_and_empty_are_clear_errors(tmp_path: Path) -> None:
    with pytest.raises(TokenError, match="does not exist"):
        read_token(tmp_path / "none")
    (tmp_path / "empty").write_text("\n")
    (tmp_path / "empty").chmod(0o600)
    with pytest.raises(TokenError, match="empty"):
        read_token(tmp_path / "empty")


def test_compare() -> None:
    assert tokens_equal("abc", "abc")
    assert not tokens_equal("abc", "abd")
    assert not tokens_equal("abc", "ab")
    assert not tokens_equal("abc", None)
    assert not tokens_equal("abc", "")


def private(path: Path, text: str) -> Path:
    path.write_text(text)
    path.chmod(0o600)
    return path


@pytest.mark.parametrize("mode", [0o644, 0o640, 0o604, 0o660, 0o622])
def test_a_token_file_others_can_read_or_write_is_refused(tmp_path: Path, mode: int) -> None:
    """Issue 14 #15: an existing 0644 file holding a token was used as it was."""
    path = tmp_path / "rpc.token"
    path.write_text("0123456789abcdef0123456789abcdef\n")
    path.chmod(mode)
    with pytest.raises(TokenError, match=f"mode {mode:04o}.*chmod 600"):
        read_token(path)
    with pytest.raises(TokenError, match="chmod 600"):
        ensure_token(path)
    with pytest.raises(TokenError, match="chmod 600"):
        read_api_tokens(path)


def test_a_short_token_is_refused(tmp_path: Path) -> None:
    with pytest.raises(TokenError, match="4 characters, at least 16"):
        read_token(private(tmp_path / "t", "weak\n"))
    with pytest.raises(TokenError, match="line 2: the token is 4 characters"):
        read_api_tokens(private(tmp_path / "a", "alice:0123456789abcdef0\nbob:weak\n"))


def test_api_token_files_name_who_asks(tmp_path: Path) -> None:
    path = private(tmp_path / "api.token", "# operators\nalice:0123456789abcdef0000\n\n"
                   "0123456789abcdef1111\nviewer:0123456789abcdef2222:ro\n")
    tokens = read_api_tokens(path)
    assert [(t.name, t.can_write) for t in tokens] == [("alice", True), ("operator", True),
                                                       ("viewer", False)]
    assert tokens[2].secret == "0123456789abcdef2222"
    with pytest.raises(TokenError, match="line 1: name 'bad name'"):
        read_api_tokens(private(tmp_path / "b", "bad name:0123456789abcdef0000\n"))
    with pytest.raises(TokenError, match="twice"):
        read_api_tokens(private(tmp_path / "c", "a:0123456789abcdef0000\nb:0123456789abcdef0000\n"))


def test_api_token_file_created_0600_when_missing(tmp_path: Path) -> None:
    path = tmp_path / "run" / "api.token"
    [token] = ensure_api_tokens(path)
    assert token.name == "operator" and len(token.secret) == 64
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert ensure_api_tokens(path) == [token]
