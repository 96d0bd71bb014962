"""Fixtures of the runtime tests: the real runtime against a scripted sFlow-RT
(``responses``) and the fake controller (see ``tests/demon/fakes.py``)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Iterator

import pytest
import responses

from tests.demon.fakes import ELEPHANT, Harness


@pytest.fixture
def mock() -> Iterator[responses.RequestsMock]:
    with responses.RequestsMock(assert_all_requests_are_fired=False) as rsps:
        yield rsps


@pytest.fixture
def make(tmp_path: Path, mock: responses.RequestsMock) -> Iterator[Callable[..., Harness]]:
    """``make(policies=None, **harness_options)`` starts a runtime harness; all are stopped after."""
    made: list[Harness] = []

    def factory(policies: dict[str, str] | None = None, **kw: Any) -> Harness:
        h = Harness(tmp_path, mock, policies or {"elephant": ELEPHANT.format(max_taps=4)}, **kw)
        made.append(h)
        return h.start()

    yield factory
    for h in made:
        h.stop()
        h.controller.stop()
