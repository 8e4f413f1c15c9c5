"""structlog configured once, at the process edge: JSON lines, or a console renderer on a TTY.

Records from the standard library's `logging` (grpc, asyncio, asyncpg, the openai SDK) go
through the same renderer, so stderr carries one format whatever wrote the line.
"""

from __future__ import annotations

import logging
import sys
from typing import TextIO

import structlog

_SHARED: list[structlog.typing.Processor] = [
    structlog.contextvars.merge_contextvars,
    structlog.processors.add_log_level,
    structlog.processors.TimeStamper(fmt="iso", utc=True),
]


class _EdgeHandler(logging.StreamHandler[TextIO]):
    """The handler configure_logging installs (replaced, not doubled, when called again)."""


def configure_logging(fmt: str = "auto", level: str = "info") -> None:
    """Route structlog and stdlib logging to stderr as JSON, or pretty on a terminal."""
    use_console = fmt == "console" or (fmt == "auto" and sys.stderr.isatty())
    renderer: structlog.typing.Processor = (
        structlog.dev.ConsoleRenderer() if use_console else structlog.processors.JSONRenderer()
    )
    numeric_level = logging.getLevelName(level.upper())
    structlog.configure(
        processors=[
            *_SHARED,
            structlog.processors.StackInfoRenderer(),
            structlog.processors.format_exc_info,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(numeric_level),
        logger_factory=structlog.PrintLoggerFactory(sys.stderr),
        cache_logger_on_first_use=True,
    )
    handler = _EdgeHandler(sys.stderr)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            foreign_pre_chain=[*_SHARED, structlog.stdlib.add_logger_name],
            processors=[
                structlog.stdlib.ProcessorFormatter.remove_processors_meta,
                structlog.processors.format_exc_info,
                renderer,
            ],
        )
    )
    root = logging.getLogger()
    for old in [h for h in root.handlers if isinstance(h, _EdgeHandler)]:
        root.removeHandler(old)
    root.addHandler(handler)
    # NOTE: libraries log every HTTP request at INFO (httpx under the openai SDK); their
    # records show from WARNING up unless the process runs at DEBUG.
    root.setLevel(
        numeric_level if numeric_level <= logging.DEBUG else max(numeric_level, logging.WARNING)
    )
