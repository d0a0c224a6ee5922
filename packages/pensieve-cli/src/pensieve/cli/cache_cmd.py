"""`pensieve cache`: the prefix cache's disk tier, where prompt prefixes outlive the server.

Light on purpose (no MLX): it only counts and deletes files in the folder the settings name.
A running server notices the folder changed, treats a vanished file as a miss, and keeps what
it holds in memory until it restarts.
"""

from __future__ import annotations

import click

from pensieve.cli.common import human_bytes, settings_or_exit
from pensieve.utils import prefix_folder
from pensieve.utils.pidfile import running_server

config_option = click.option(
    "--config", "config_file", type=click.Path(dir_okay=False), help="Settings file (default: the usual search)."
)


@click.group()
def cache() -> None:
    """The prefix cache's disk tier: prompt prefixes kept across restarts."""


@cache.command()
@config_option
def show(config_file: str | None) -> None:
    """Where the disk tier is, how much it holds, and its bound."""
    perf = settings_or_exit(config_file).performance
    files, nbytes = prefix_folder.usage(perf.prefix_cache_path)
    bound = f"up to {perf.prefix_cache_disk_gb:g} GB" if perf.prefix_cache_disk_gb > 0 else "off: performance.prefix_cache_disk_gb = 0"
    click.echo(f"{perf.prefix_cache_path}: {files} prefix files, {human_bytes(nbytes)} ({bound})")


@cache.command()
@config_option
def clear(config_file: str | None) -> None:
    """Delete every prefix kept on disk, for every model."""
    path = settings_or_exit(config_file).performance.prefix_cache_path
    files, nbytes = prefix_folder.clear(path)
    click.echo(f"Removed {files} prefix files ({human_bytes(nbytes)}) from {path}.")
    live, _ = running_server()
    if live is not None:
        click.echo(f"The running server (PID {live.pid}) keeps the prefixes it holds in memory until it restarts.")
