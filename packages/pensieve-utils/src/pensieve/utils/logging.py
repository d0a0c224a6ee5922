"""Logging through loguru: readable on a terminal, JSON lines in the log file.

The standard library's `logging` (aiohttp, transformers) is routed into loguru so one sink
configuration covers everything the process says.

Every file line is one JSON object: `timestamp`, `level`, `component` (the Pensieve package or
library that spoke), `message`, `request_id` (bound for the whole life of an HTTP request with
`logger.contextualize`), `pid`, and `metadata` (whatever else was bound, e.g. a request's token
counts).
The configured API key is replaced by `***` in every message before any sink sees it, so a
careless log call cannot leak it.
"""

from __future__ import annotations

import json
import logging as _stdlib_logging
import sys
import traceback
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from loguru import logger

__all__ = ["current_log_file", "logger", "reconfigure_logging", "setup_logging"]

_RESERVED_EXTRA = frozenset({"component", "request_id"})


@dataclass(slots=True)
class _State:
    level: str = "INFO"
    file: Path | None = None
    console: bool = True
    rotation: str = "20 MB"
    retention: int = 5
    compression: str | None = "gz"
    secrets: list[str] = field(default_factory=list)


_state = _State()


class _InterceptHandler(_stdlib_logging.Handler):
    def emit(self, record: _stdlib_logging.LogRecord) -> None:
        try:
            level: str | int = logger.level(record.levelname).name
        except ValueError:
            level = record.levelno
        logger.opt(depth=6, exception=record.exc_info).bind(component=record.name).log(
            level, record.getMessage()
        )


def _component(name: str | None) -> str:
    """`pensieve.server.middleware` -> `server`; `aiohttp.web` -> `aiohttp`."""
    parts = (name or "").split(".")
    if parts[0] == "pensieve" and len(parts) > 1:
        return parts[1]
    return parts[0] or "pensieve"


def _patch(record: Any) -> None:
    extra = record["extra"]
    if extra.get("component") in (None, "pensieve"):
        extra["component"] = _component(record["name"])
    for secret in _state.secrets:
        if secret in record["message"]:
            record["message"] = record["message"].replace(secret, "***")


def json_line(record: Any) -> str:
    """One log record as the JSON object written to the log file."""
    extra = record["extra"]
    payload: dict[str, Any] = {
        "timestamp": record["time"].isoformat(),
        "level": record["level"].name,
        "component": extra.get("component", "pensieve"),
        "message": record["message"],
        "request_id": extra.get("request_id"),
        "pid": record["process"].id,  # old and new server share the file across a restart
    }
    metadata = {k: v for k, v in extra.items() if k not in _RESERVED_EXTRA and not k.startswith("_")}
    if metadata:
        payload["metadata"] = metadata
    if record["exception"] is not None:
        exc = record["exception"]
        payload["exception"] = "".join(traceback.format_exception(exc.type, exc.value, exc.traceback))
    return json.dumps(payload, default=str, ensure_ascii=False)


def _file_format(record: Any) -> str:
    record["extra"]["_json"] = json_line(record)
    return "{extra[_json]}\n"


def setup_logging(
    level: str = "INFO",
    file: str | Path | None = None,
    *,
    console: bool = True,
    rotation: str = "20 MB",
    retention: int = 5,
    compression: str | None = "gz",
    secrets: Iterable[str | None] = (),
) -> None:
    """(Re)configure every sink; safe to call again (SIGHUP does, through reconfigure_logging).

    `secrets` are strings masked in every message (the API key). Rotation is by size, keeping
    `retention` old files, compressed with `compression` ("" or None for none).
    """
    _state.level, _state.console = level, console
    _state.file = Path(file).expanduser() if file else None
    _state.rotation, _state.retention = rotation, retention
    _state.compression = compression or None
    _state.secrets = sorted({s for s in secrets if s}, key=len, reverse=True)
    logger.remove()
    logger.configure(extra={"component": "pensieve", "request_id": None}, patcher=_patch)
    if console:
        logger.add(
            sys.stderr,
            level=level,
            colorize=sys.stderr.isatty(),
            # Loguru's default `diagnose` prints every variable's value in a traceback: prompts,
            # request bodies and keys would reach the terminal (and journald). Never.
            diagnose=False,
            format="<green>{time:HH:mm:ss.SSS}</green> <level>{level: <7}</level> "
            "<cyan>{extra[component]}</cyan> {message}",
        )
    if _state.file is not None:
        _state.file.parent.mkdir(parents=True, exist_ok=True)
        logger.add(
            str(_state.file),
            level=level,
            format=_file_format,
            rotation=rotation,
            retention=retention,
            compression=_state.compression,
            enqueue=False,
            catch=True,
            diagnose=False,
        )
    _stdlib_logging.basicConfig(handlers=[_InterceptHandler()], level=0, force=True)
    _stdlib_logging.getLogger("aiohttp.access").setLevel(_stdlib_logging.WARNING)


def reconfigure_logging(
    *,
    level: str,
    file: str | Path | None,
    rotation: str,
    retention: int,
    compression: str | None,
    secrets: Iterable[str | None] = (),
) -> None:
    """Apply new logging settings, keeping whether the terminal sink is on.

    A `file` of None keeps the current file: a server in the background always has one.
    """
    setup_logging(
        level,
        file if file else _state.file,
        console=_state.console,
        rotation=rotation,
        retention=retention,
        compression=compression,
        secrets=secrets,
    )


def current_log_file() -> Path | None:
    """The file the JSON sink writes to, if any (recorded in the PID file for `pensieve logs`)."""
    return _state.file
