"""Logging through loguru: readable on a terminal, JSON lines in the log file.

The standard library's `logging` (aiohttp, transformers) is routed into loguru so one sink
configuration covers everything the process says.
"""

from __future__ import annotations

import logging as _stdlib_logging
import sys
from pathlib import Path

from loguru import logger

__all__ = ["logger", "setup_logging"]


class _InterceptHandler(_stdlib_logging.Handler):
    def emit(self, record: _stdlib_logging.LogRecord) -> None:
        try:
            level: str | int = logger.level(record.levelname).name
        except ValueError:
            level = record.levelno
        logger.opt(depth=6, exception=record.exc_info).bind(component=record.name).log(
            level, record.getMessage()
        )


def setup_logging(
    level: str = "INFO",
    file: str | Path | None = None,
    *,
    console: bool = True,
    rotation: str = "20 MB",
    retention: int = 5,
    compression: str | None = "gz",
) -> None:
    """(Re)configure every sink; safe to call again on SIGHUP."""
    logger.remove()
    logger.configure(extra={"component": "pensieve", "request_id": None})
    if console:
        logger.add(
            sys.stderr,
            level=level,
            colorize=sys.stderr.isatty(),
            format="<green>{time:HH:mm:ss.SSS}</green> <level>{level: <7}</level> "
            "<cyan>{extra[component]}</cyan> {message}",
        )
    if file:
        Path(file).parent.mkdir(parents=True, exist_ok=True)
        logger.add(
            str(file),
            level=level,
            serialize=True,
            rotation=rotation,
            retention=retention,
            compression=compression,
            enqueue=False,
            catch=True,
        )
    _stdlib_logging.basicConfig(handlers=[_InterceptHandler()], level=0, force=True)
    _stdlib_logging.getLogger("aiohttp.access").setLevel(_stdlib_logging.WARNING)
