"""Fixtures of the dashboard tests: a daemon (real runtime and API, scripted
engine, fake controller) and a headless Debian chromium."""

from __future__ import annotations

from pathlib import Path
from typing import Iterator

import pytest
import responses

from tests.browser import browser  # noqa: F401  (the fixture, for every dashboard test)
from tests.dashboard.harness import Daemon


@pytest.fixture
def daemon(tmp_path: Path) -> Iterator[Daemon]:
    with responses.RequestsMock(assert_all_requests_are_fired=False) as mock:
        mock.add_passthru("http://127.0.0.1")
        d = Daemon(tmp_path, mock).start()
        try:
            yield d
        finally:
            d.stop()
