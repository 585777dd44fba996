"""Log processors shared by the daemons: JSON lines off a TTY, readable console on a TTY.

STYLE: ``structlog.configure`` is called only in ``agent/main.py`` and
``aggregator/main.py``; they pass it ``processors(...)`` from here so both daemons emit the
same shape. Handlers bind ``job``, ``round`` and ``site`` with ``bound_contextvars``.
"""

from __future__ import annotations

import logging
import sys
from typing import Any

import structlog

__all__ = ["configure_kwargs", "processors"]


def processors(*, json: bool) -> list[Any]:
    """The processor chain: context vars, level, ISO time, then JSON or console rendering."""
    chain: list[Any] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        structlog.processors.StackInfoRenderer(),
        structlog.processors.format_exc_info,
    ]
    if json:
        chain.append(structlog.processors.JSONRenderer())
    else:
        chain.append(structlog.dev.ConsoleRenderer(colors=sys.stderr.isatty()))
    return chain


def configure_kwargs(*, json: bool | None = None, level: str = "info") -> dict[str, Any]:
    """Arguments for ``structlog.configure``: logs go to stderr, one event per line.

    Args:
        json: force JSON (True) or console (False); None picks JSON unless stderr is a TTY.
        level: minimum level name (debug, info, warning, error).
    """
    use_json = not sys.stderr.isatty() if json is None else json
    return {
        "processors": processors(json=use_json),
        "wrapper_class": structlog.make_filtering_bound_logger(logging.getLevelName(level.upper())),
        "logger_factory": structlog.PrintLoggerFactory(file=sys.stderr),
        "cache_logger_on_first_use": True,
    }
