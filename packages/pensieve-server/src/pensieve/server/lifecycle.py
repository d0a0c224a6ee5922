"""What the running server does on SIGHUP and SIGUSR1, and its PID file.

SIGHUP re-reads the configuration through a loader the caller provides (the CLI knows the
command line and config file the server was started with), applies what can change live and
logs "restart needed" for the rest. SIGUSR1 writes a diagnostic dump to the log: settings
without secrets, models, memory, requests in flight and recent latencies, which is what one
wants to see when a background server misbehaves and nobody is watching its terminal.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

from aiohttp import web

from pensieve.server.keys import PROVIDER, SETTINGS, STARTED_AT
from pensieve.server.metrics import METRICS
from pensieve.server.observe import OBSERVER
from pensieve.utils import PensieveError, Settings
from pensieve.utils.logging import current_log_file, logger, reconfigure_logging
from pensieve.utils.pidfile import PidInfo, lock_server_slot, read_pid_file, write_pid_file
from pensieve.utils.reload import apply_reload

SettingsLoader = Callable[[], Settings]


def reload_config(app: web.Application, load: SettingsLoader) -> None:
    """Apply a re-read configuration; a broken file keeps the running settings and says why."""
    settings = app[SETTINGS]
    try:
        new = load()
    except PensieveError as exc:
        logger.error("configuration reload failed, keeping the current settings: {}", exc.message)
        return
    old_key = settings.server.api_key
    result = apply_reload(settings, new)
    observer = app[OBSERVER]
    observer.reloads += 1
    observer.reloaded_at = time.time()
    app[METRICS].reloads.inc()
    if result.logging_changed:
        log = settings.logging
        reconfigure_logging(
            level=log.level,
            file=log.file,
            rotation=log.rotation,
            retention=log.retention,
            compression=log.compression,
            secrets=[settings.server.api_key, old_key],
        )
    source = str(settings.config_file) if settings.config_file else "the environment"
    if result.applied:
        logger.bind(applied=result.applied).info("configuration reloaded from {}: applied {}", source, ", ".join(result.applied))
    else:
        logger.info("configuration reloaded from {}: nothing that can change live changed", source)
    if result.restart_needed:
        logger.bind(restart_needed=result.restart_needed).warning(
            "restart needed for {} (changed in the configuration; the running values stay until `pensieve restart`)",
            ", ".join(result.restart_needed),
        )


def diagnostic_dump(app: web.Application) -> dict[str, Any]:
    """Everything useful about the running server, nothing secret, no request content."""
    observer = app[OBSERVER]
    provider = app[PROVIDER]
    settings = app[SETTINGS]
    return {
        "pid": os.getpid(),
        "uptime_s": round(time.time() - app[STARTED_AT], 3),
        "config_file": str(settings.config_file) if settings.config_file else None,
        "settings": settings.flat(redact=True),
        "models": [m.as_dict() for m in provider.status()],
        "memory": provider.memory().as_dict(),
        "distributed": group.as_dict() if (group := provider.distributed()) is not None else None,
        "requests_served": observer.served,
        "draining": observer.draining,
        "active_requests": [a.describe() for a in observer.active.values()],
        "recent_requests": observer.latencies(),
    }


def log_diagnostic_dump(app: web.Application) -> None:
    dump = diagnostic_dump(app)
    logger.info("diagnostic dump (SIGUSR1): {}", json.dumps(dump, default=str))


def claim_pid_file(path: Path, host: str, port: int, settings: Settings, args: list[str]) -> IO[bytes]:
    """Record this server in the PID file, refusing if another Pensieve holds it.

    Called only after the port is bound, so a PID file always names a server that answers.
    Returns the held lock: keep it open until the PID file is removed.
    """
    lock = lock_server_slot(path)
    if lock is None:
        other = read_pid_file(path)
        where = f" (PID {other.pid}, {other.url})" if other is not None and other.pid > 0 else ""
        raise PensieveError(f"another Pensieve is already running{where}; stop it with `pensieve stop`")
    log_file = current_log_file()
    write_pid_file(
        path,
        PidInfo(
            pid=os.getpid(),
            host=host,
            port=port,
            log_file=str(log_file) if log_file else None,
            config_file=str(settings.config_file) if settings.config_file else None,
            args=args,
        ),
    )
    return lock
