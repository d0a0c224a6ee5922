"""Helpers shared by the `pensieve` subcommands: loading settings, talking to /health, formatting.

Everything here stays light (no MLX, no aiohttp): `pensieve stop`, `status` and `logs` should
answer in well under a second, and `start --background` must not import MLX before it
re-executes itself.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import click

from pensieve.utils import PensieveError, Settings, load_settings
from pensieve.utils.paths import log_dir


def settings_or_exit(config_file: str | None, overrides: Mapping[str, Any] | None = None) -> Settings:
    """Load settings; a bad configuration becomes a one-line error naming the key and the line."""
    try:
        return load_settings(config_file, overrides=overrides)
    except PensieveError as exc:
        raise click.ClickException(exc.message) from None


def default_log_file() -> Path:
    """Where a background server logs when logging.file is not set."""
    return log_dir() / "pensieve.log"


def log_file_for(settings: Settings) -> Path:
    return Path(settings.logging.file).expanduser() if settings.logging.file else default_log_file()


def fetch_health(url: str, timeout: float = 3.0) -> dict[str, Any]:
    """GET /health, or {} while nothing answers (the server is binding or gone).

    A server that is up but not ready answers 503 with the same body, so that is read too.
    """
    try:
        with urllib.request.urlopen(f"{url}/health", timeout=timeout) as response:
            data = json.loads(response.read())
    except urllib.error.HTTPError as exc:
        try:
            data = json.loads(exc.read())
        except (OSError, ValueError):
            return {}
    except (urllib.error.URLError, OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def human_bytes(value: float | None) -> str:
    if value is None:
        return "?"
    for unit in ("B", "KB", "MB", "GB"):
        if abs(value) < 1024 or unit == "GB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} GB"


def human_duration(seconds: float | None) -> str:
    if seconds is None:
        return "?"
    seconds = int(seconds)
    days, rest = divmod(seconds, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    if days:
        return f"{days}d {hours}h {minutes}m"
    if hours:
        return f"{hours}h {minutes}m {secs}s"
    return f"{minutes}m {secs:02d}s" if minutes else f"{secs}s"
