"""How the runtime behaves (the CLI maps its flags onto :class:`RuntimeOptions`),
the start-up error, and the accelerated clock tests and demos use."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable

ON_EXIT_CHOICES = ("leave", "remove")


class StartupError(Exception):
    """The daemon cannot start; ``status`` is the process exit status to use."""

    def __init__(self, message: str, status: int) -> None:
        super().__init__(message)
        self.status = status


@dataclass(frozen=True)
class RuntimeOptions:
    """``speed`` > 1 runs every periodic job that many times faster; pair it with
    :func:`accelerated_clock` (tests, demos). ``dry_run``: decide, log and
    persist, but send no RPC write (installs/removes are answered as if they
    had succeeded). ``backlog_max_age``: on a first start (no saved event
    cursor) the engine's retained events older than this (wall-clock seconds)
    are skipped, not acted on. ``warmup``: after the engine (re)learns a flow
    definition or comes back from an outage, its polls count as evidence that
    a flow has cleared only after ``warmup × t`` seconds (its rates are still
    building up). ``slow_poll``: a poll answered later than this (seconds) means
    the engine stalled; it is treated like an outage.
    """

    on_exit: str = "leave"
    dry_run: bool = False
    speed: float = 1.0
    tick_interval: float = 1.0
    requests_interval: float = 1.0
    topology_interval: float = 10.0
    prune_interval: float = 3600.0
    controller_probe_interval: float = 1.0
    backlog_max_age: float = 60.0
    event_poll_timeout: float = 20.0
    max_events: int = 100
    batch_max: int = 500
    engine_backoff_max: float = 5.0
    exit_timeout: float = 10.0
    warmup: float = 3.0
    slow_poll: float = 2.0
    request_ttl: float = 60.0
    answer_timeout: float = 20.0

    def __post_init__(self) -> None:
        if self.on_exit not in ON_EXIT_CHOICES:
            raise ValueError(f"on_exit must be one of {ON_EXIT_CHOICES}, got {self.on_exit!r}")
        if self.speed <= 0:
            raise ValueError(f"speed must be > 0, got {self.speed}")


def accelerated_clock(speed: float, start: float | None = None) -> Callable[[], float]:
    """Epoch seconds running ``speed`` times faster than real time from ``start``."""
    origin = time.time() if start is None else start
    t0 = time.monotonic()
    return lambda: origin + (time.monotonic() - t0) * speed
