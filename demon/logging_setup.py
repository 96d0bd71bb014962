"""Moved to :mod:`sflow.logsetup` (one logging set-up for every command); kept so
that code importing it from here keeps working."""

from sflow.logsetup import LOG_FORMATS, LOG_LEVELS, JsonFormatter, setup_logging

__all__ = ["LOG_FORMATS", "LOG_LEVELS", "JsonFormatter", "setup_logging"]
