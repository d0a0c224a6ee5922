"""What a SIGHUP can change in a running server, and applying it.

The running server, its middlewares and the model pool all hold the *same* `Settings` object
and read the live keys from it on every request. So a reload validates a freshly loaded
`Settings` and copies the live keys into the running one, in place; everything else (the
port, the batch size, the default model...) was used once at start-up and needs a restart,
which the reload reports instead of pretending to apply.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from pensieve.utils.settings import Settings, all_keys

LIVE_KEYS = frozenset(
    {
        "server.api_key",
        "server.cors_origins",
        "server.metrics_require_auth",
        "server.drain_timeout_s",
        "server.write_timeout_s",
        "model.aliases",
        "model.unknown",
        "logging.level",
        "logging.file",
        "logging.rotation",
        "logging.retention",
        "logging.compression",
        "logging.log_content",
    }
)
"""Keys read at use time, so a reload takes effect on the next request (or log line)."""


@dataclass(slots=True)
class ReloadResult:
    applied: list[str] = field(default_factory=list)
    """Live keys whose new values are now in effect."""
    restart_needed: list[str] = field(default_factory=list)
    """Keys that changed in the configuration but keep their old value until a restart."""

    @property
    def logging_changed(self) -> bool:
        return any(k.startswith("logging.") or k == "server.api_key" for k in self.applied)


def apply_reload(current: Settings, new: Settings) -> ReloadResult:
    """Copy the live keys of `new` into `current` (in place) and list what needs a restart."""
    result = ReloadResult()
    sources = current.sources()
    new_sources = new.sources()
    for key in all_keys():
        old_value, new_value = current.get(key), new.get(key)
        if old_value == new_value:
            continue
        if key in LIVE_KEYS:
            section, _, name = key.partition(".")
            setattr(getattr(current, section), name, new_value)
            sources[key] = new_sources.get(key, "default")
            result.applied.append(key)
        else:
            result.restart_needed.append(key)
    current._sources = sources
    current._config_file = new.config_file  # a file created since start-up is found by a reload
    return result
