"""`pensieve start`: serve in the foreground until Ctrl-C, or start a background daemon.

The heavy imports (MLX through the model manager, aiohttp through the server) happen only in
the process that serves: `start --background` validates the settings, re-executes itself and
watches, without ever loading MLX.

Under `mlx.launch` every rank runs `pensieve start`: rank 0 serves HTTP (and owns the PID
file), the others serve only their share of the model (`follower.py`).
"""

from __future__ import annotations

import asyncio
import os
import sys
from pathlib import Path
from typing import Any, NoReturn

import click
from click.core import ParameterSource

from pensieve.cli.common import log_file_for, settings_or_exit
from pensieve.cli.daemon import launch_background
from pensieve.utils import PensieveError, Settings, load_settings
from pensieve.utils.blas import reexec_with_openblas
from pensieve.utils.launcher import launched_rank
from pensieve.utils.logging import logger, setup_logging
from pensieve.utils.pidfile import pid_file_path, remove_pid_file, running_server

_FORWARDED = {
    "host": "--host",
    "port": "--port",
    "model": "--model",
    "api_key": "--api-key",
    "config_file": "--config",
    "log_level": "--log-level",
    "log_file": "--log-file",
}
"""Options a background start passes on to the server it launches (and `restart` reuses)."""


@click.command()
@click.option("--host", help="Address to bind (default 127.0.0.1).")
@click.option("--port", type=int, help="Port to listen on (default 8000).")
@click.option("--model", help="Model to serve: the embedded default, a store name, a .gguf file or an MLX folder.")
@click.option("--api-key", help="Key clients must send (default pensieve-local-key). Visible in `ps`: prefer the config file.")
@click.option("--config", "config_file", type=click.Path(dir_okay=False), help="TOML settings file.")
@click.option("--log-level", type=click.Choice(["TRACE", "DEBUG", "INFO", "WARNING", "ERROR"], case_sensitive=False))
@click.option("--log-file", type=click.Path(dir_okay=False), help="JSON-lines log file (logging.file).")
@click.option("-b", "--background", is_flag=True, help="Run as a daemon; return once the model is loaded.")
@click.option("--wait-timeout", type=float, default=600.0, show_default=True, help="With --background: seconds to wait for readiness.")
@click.option("--daemon-child", is_flag=True, hidden=True)
@click.pass_context
def start(
    ctx: click.Context,
    host: str | None,
    port: int | None,
    model: str | None,
    api_key: str | None,
    config_file: str | None,
    log_level: str | None,
    log_file: str | None,
    background: bool,
    wait_timeout: float,
    daemon_child: bool,
) -> None:
    """Start the server: in the foreground (Ctrl-C stops it), or with --background as a daemon."""
    overrides: dict[str, Any] = {
        "server.host": host,
        "server.port": port,
        "server.api_key": api_key,
        "model.default": model,
        "logging.level": log_level.upper() if log_level else None,
        "logging.file": log_file,
    }
    settings = settings_or_exit(config_file, overrides)
    rank = launched_rank(os.environ)
    if rank is not None and background:
        raise click.ClickException("under mlx.launch every rank runs in the foreground (the launcher waits for them); drop --background")
    if not rank:  # rank 0, or alone: the one that owns the PID file
        live, stale = running_server()
        if live is not None:
            raise click.ClickException(
                f"Pensieve is already running (PID {live.pid}) at {live.url}; "
                "stop it with `pensieve stop` or use `pensieve restart`"
            )
        if stale is not None and remove_pid_file(pid_file_path(), stale.pid):
            click.echo(f"Removed a stale PID file: PID {stale.pid} is no longer running.", err=True)
    args = _forwarded_args(ctx)
    if background:
        sys.exit(launch_background(settings, args, log_file_for(settings), wait_timeout))

    def reload() -> Settings:
        return load_settings(config_file, overrides=overrides)

    _exit_after_serving(_serve(settings, reload, args, daemon=daemon_child, rank=rank))


def _exit_after_serving(code: int) -> NoReturn:
    """Leave the process once the server has stopped in order, without the interpreter's teardown.

    By then every request is finished or cancelled, every compute and loader thread joined, the
    PID file removed and the log written. What the interpreter's teardown would still do is
    unload native libraries: with MLX's CUDA backend that aborted the process after every clean
    stop ("terminate called without an active exception", exit 134), and a service manager counts
    an abort as a failure. Measured on an H200: exit 134 before, 0 after.
    """
    logger.complete()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def _forwarded_args(ctx: click.Context) -> list[str]:
    """The options given on the command line, with paths made absolute for a daemon."""
    args: list[str] = []
    for name, flag in _FORWARDED.items():
        if ctx.get_parameter_source(name) != ParameterSource.COMMANDLINE:
            continue
        value = str(ctx.params[name])
        if name in ("config_file", "log_file") or (name == "model" and Path(value).expanduser().exists()):
            value = str(Path(value).expanduser().resolve())
        args += [flag, value]
    return args


def _serve(settings: Settings, reload: Any, args: list[str], *, daemon: bool, rank: int | None = None) -> int:
    """Serve in this process; every startup failure is logged, so `--background` can report it.

    `rank`: this process's rank in a group `mlx.launch` started (None: it serves alone).
    """
    log_file = log_file_for(settings) if (daemon or settings.logging.file) else None
    if rank and log_file is not None:  # a follower on the same machine writes beside rank 0's file
        log_file = log_file.with_name(f"{log_file.stem}.rank{rank}{log_file.suffix}")
    log = settings.logging
    setup_logging(
        log.level,
        log_file,
        console=not daemon,
        rotation=log.rotation,
        retention=log.retention,
        compression=log.compression,
        secrets=[settings.server.api_key],
    )
    # MLX's Linux CPU build: re-execute once with OpenBLAS preloaded (same PID), before MLX loads.
    reexec_with_openblas(settings.performance.weights_layout)
    from pensieve.metal import apply_memory_limits, configure_cuda_attention
    from pensieve.modelmgr import ModelPool  # MLX: only in the serving process
    from pensieve.modelmgr.sharded import Sharding
    from pensieve.server import create_app, serve

    configure_cuda_attention(settings.performance.cudnn_attention)
    try:
        sharding = Sharding.join(settings.distributed)
        pool = ModelPool(settings, sharding=sharding)
    except PensieveError as exc:
        logger.error("cannot start: {}", exc.message)
        raise click.ClickException(exc.message) from None
    # Process-wide MLX allocator and cache limits; only the serving process sets them.
    apply_memory_limits(pool.budget_bytes)
    if sharding is not None:
        group = sharding.group
        logger.info("rank {} of {} ({} backend, {} parallel) on {}",
                    group.rank, group.size, group.backend, group.parallel, group.ranks[group.rank].host)  # fmt: skip
        if not group.leads:
            from pensieve.cli.follower import follow

            return follow(pool, settings)
        # A broken group exits at once (os._exit): the PID file must not outlive it.
        group.on_failure(lambda _: remove_pid_file(pid_file_path(), os.getpid()))
    app = create_app(settings, pool)
    host, port = settings.server.host, settings.server.port
    try:
        return asyncio.run(serve(app, host, port, pid_file=pid_file_path(), reload=reload, args=args))
    except OSError as exc:
        reason = os.strerror(exc.errno) if exc.errno else str(exc)
        message = (
            f"port {port} on {host} is not available ({reason}); "
            "stop what uses it or pass --port"
        )
        logger.error("cannot listen: {}", message)
        raise click.ClickException(message) from None
    except PensieveError as exc:
        logger.error("cannot start: {}", exc.message)
        raise click.ClickException(exc.message) from None

