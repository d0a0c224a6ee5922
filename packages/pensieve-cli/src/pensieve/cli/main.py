"""The `pensieve` command.

Subcommands live in their own modules and import only what they need, so that `pensieve stop`
or `pensieve status` answer at once; only the serving process imports MLX.
"""

from __future__ import annotations

import click

from pensieve.cli.bench import bench
from pensieve.cli.cache_cmd import cache
from pensieve.cli.config_cmd import config
from pensieve.cli.control import logs, restart, status, stop
from pensieve.cli.doctor import doctor
from pensieve.cli.models_cmd import models
from pensieve.cli.service import service
from pensieve.cli.start import start


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="pensieve-cli", prog_name="pensieve")
def cli() -> None:
    """Pensieve: a local LLM server speaking the Anthropic and OpenAI APIs, on MLX."""


cli.add_command(start)
cli.add_command(stop)
cli.add_command(status)
cli.add_command(restart)
cli.add_command(logs)
cli.add_command(config)
cli.add_command(service)
cli.add_command(doctor)
cli.add_command(models)
cli.add_command(bench)
cli.add_command(cache)
