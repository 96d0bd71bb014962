"""Logging for every command: readable text, or one JSON object a line.

``sflow.cliopts`` sets it up from ``--log-format``/``--log-level``; it lives in
``sflow/`` so that ``demon-sflow`` (which imports nothing from ``demon/``) shares it.

JSON lines carry ``ts`` (epoch s), ``level``, ``logger``, ``msg`` and any of
the structured extras the runtime attaches to decisions (``tap_id``, ``kind``,
``detail``), so a log shipper can index taps without parsing sentences.
"""

from __future__ import annotations

import json
import logging
import sys
from typing import IO

LOG_FORMATS = ("text", "json")
LOG_LEVELS = ("debug", "info", "warning", "error")
_EXTRAS = ("tap_id", "kind", "detail")


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        data = {"ts": round(record.created, 3), "level": record.levelname.lower(),
                "logger": record.name, "msg": record.getMessage()}
        for name in _EXTRAS:
            if hasattr(record, name):
                data[name] = getattr(record, name)
        if record.exc_info:
            data["exc"] = self.formatException(record.exc_info)
        return json.dumps(data, default=str, separators=(",", ":"))


class _StderrHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """Writes to whatever ``sys.stderr`` is at the time (tests swap it)."""

    def __init__(self) -> None:
        super().__init__(sys.stderr)

    @property  # type: ignore[override]
    def stream(self) -> IO[str]:
        return sys.stderr

    @stream.setter
    def stream(self, _value: IO[str]) -> None:
        pass


def setup_logging(level: str = "info", fmt: str = "text", stream: IO[str] | None = None) -> None:
    """Configure the root logger for a command (replaces a handler set up earlier here)."""
    if fmt not in LOG_FORMATS:
        raise ValueError(f"log format must be one of {', '.join(LOG_FORMATS)}, got {fmt!r}")
    if level.lower() not in LOG_LEVELS:
        raise ValueError(f"log level must be one of {', '.join(LOG_LEVELS)}, got {level!r}")
    handler = logging.StreamHandler(stream) if stream is not None else _StderrHandler()
    if fmt == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)-7s %(name)s: %(message)s"))
    handler._demon = True  # type: ignore[attr-defined]
    root = logging.getLogger()
    for old in list(root.handlers):
        if getattr(old, "_demon", False):  # leave handlers others installed (pytest's)
            root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level.upper())
    # APScheduler logs every job run (INFO) and every run skipped behind a slow one
    # (WARNING; the runtime reports the slow engine itself): debugging only.
    logging.getLogger("apscheduler").setLevel(logging.ERROR if level.lower() != "debug"
                                              else logging.DEBUG)
