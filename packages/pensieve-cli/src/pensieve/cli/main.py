"""The `pensieve` command."""

from __future__ import annotations

import click

from pensieve.cli.models_cmd import models
from pensieve.cli.start import start


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="pensieve-cli", prog_name="pensieve")
def cli() -> None:
    """Pensieve: a local LLM server speaking the Anthropic and OpenAI APIs, on MLX."""


cli.add_command(start)
cli.add_command(models)
