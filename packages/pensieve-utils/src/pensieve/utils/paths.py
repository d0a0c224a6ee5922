"""Where Pensieve keeps its files, per operating system.

`PENSIEVE_HOME` moves everything under one folder, which tests and side-by-side installs use to
stay out of the user's real directories.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping
from pathlib import Path

APP = "pensieve"


def _home_override(env: Mapping[str, str] | None = None) -> Path | None:
    value = (os.environ if env is None else env).get("PENSIEVE_HOME")
    return Path(value).expanduser() if value else None


def config_dir(env: Mapping[str, str] | None = None) -> Path:
    """The folder searched for `pensieve.toml` when no `--config` or `PENSIEVE_CONFIG` is given.

    `env` stands in for the process environment (settings are loaded from an explicit mapping
    in tests and by the daemon's reload).
    """
    if (home := _home_override(env)) is not None:
        return home / "config"
    if sys.platform == "darwin":
        return Path.home() / "Library" / "Application Support" / APP
    return Path(os.environ.get("XDG_CONFIG_HOME") or Path.home() / ".config") / APP


def state_dir() -> Path:
    """PID file and other runtime state."""
    if (home := _home_override()) is not None:
        return home / "state"
    if sys.platform == "darwin":
        return Path.home() / "Library" / "Application Support" / APP / "state"
    return Path(os.environ.get("XDG_STATE_HOME") or Path.home() / ".local" / "state") / APP


def prefix_cache_dir() -> Path:
    """The prefix cache's disk tier, unless `performance.prefix_cache_dir` says otherwise."""
    return state_dir() / "prefix-cache"


def log_dir() -> Path:
    if (home := _home_override()) is not None:
        return home / "logs"
    if sys.platform == "darwin":
        return Path.home() / "Library" / "Logs" / APP
    return state_dir() / "logs"


def model_store_dir() -> Path:
    """Models pulled or converted by Pensieve; nothing outside it is reachable by request name."""
    if (home := _home_override()) is not None:
        return home / "models"
    if sys.platform == "darwin":
        return Path.home() / "Library" / "Application Support" / APP / "models"
    return Path(os.environ.get("XDG_DATA_HOME") or Path.home() / ".local" / "share") / APP / "models"


def default_config_file(env: Mapping[str, str] | None = None) -> Path:
    return config_dir(env) / "pensieve.toml"
