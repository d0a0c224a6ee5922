"""`pensieve start`: serve in the foreground until Ctrl-C."""

from __future__ import annotations

import asyncio
import sys

import click

from pensieve.modelmgr import ModelPool
from pensieve.server import create_app, serve
from pensieve.utils import PensieveError, load_settings
from pensieve.utils.logging import logger, setup_logging


@click.command()
@click.option("--host", help="Address to bind (default 127.0.0.1).")
@click.option("--port", type=int, help="Port to listen on (default 8000).")
@click.option("--model", help="Model to serve: the embedded default, a store name, a .gguf file or an MLX folder.")
@click.option("--api-key", help="Key clients must send (default pensieve-local-key).")
@click.option("--config", "config_file", type=click.Path(dir_okay=False), help="TOML settings file.")
@click.option("--log-level", type=click.Choice(["TRACE", "DEBUG", "INFO", "WARNING", "ERROR"], case_sensitive=False))
def start(host: str | None, port: int | None, model: str | None, api_key: str | None, config_file: str | None, log_level: str | None) -> None:
    """Start the server in the foreground; Ctrl-C stops it cleanly."""
    try:
        settings = load_settings(
            config_file,
            overrides={
                "server.host": host,
                "server.port": port,
                "server.api_key": api_key,
                "model.default": model,
                "logging.level": log_level.upper() if log_level else None,
            },
        )
        setup_logging(settings.logging.level, settings.logging.file)
        pool = ModelPool(settings)
    except PensieveError as exc:
        raise click.ClickException(exc.message) from None
    app = create_app(settings, pool)
    try:
        code = asyncio.run(serve(app, settings.server.host, settings.server.port))
    except OSError as exc:
        logger.error("cannot listen on {}:{}: {}", settings.server.host, settings.server.port, exc.strerror)
        raise click.ClickException(
            f"port {settings.server.port} on {settings.server.host} is not available ({exc.strerror}); "
            "stop what uses it or pass --port"
        ) from None
    sys.exit(code)
