"""`pensieve config init|show`: write the commented template, explain the effective settings."""

from __future__ import annotations

import json
import os
from pathlib import Path

import click

from pensieve.cli.common import settings_or_exit
from pensieve.utils.config_template import SECTIONS, render_config_template, render_value
from pensieve.utils.paths import default_config_file


@click.group("config")
def config() -> None:
    """Create and inspect the configuration file (pensieve.toml)."""


@config.command("init")
@click.option("--path", "path_", type=click.Path(dir_okay=False), help="Where to write (default: PENSIEVE_CONFIG, else the OS config folder).")
@click.option("--force", is_flag=True, help="Overwrite an existing file.")
def init(path_: str | None, force: bool) -> None:
    """Write a commented pensieve.toml listing every setting with its default."""
    target = Path(path_ or os.environ.get("PENSIEVE_CONFIG") or default_config_file()).expanduser()
    if target.exists() and not force:
        raise click.ClickException(f"{target} already exists; pass --force to overwrite it")
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(render_config_template(), encoding="utf-8")
    click.echo(f"Wrote {target}")


@config.command("show")
@click.option("--config", "config_file", type=click.Path(dir_okay=False), help="TOML settings file.")
@click.option("--json", "as_json", is_flag=True, help="Print {key: {value, source}} as JSON.")
def show(config_file: str | None, as_json: bool) -> None:
    """Print the effective settings and where each value came from (secrets masked).

    Sources: `cli`, `env:NAME`, `FILE:LINE` or `default`.
    """
    settings = settings_or_exit(config_file)
    values = settings.flat(redact=True)
    sources = settings.sources()
    if as_json:
        payload = {
            "config_file": str(settings.config_file) if settings.config_file else None,
            "settings": {key: {"value": value, "source": sources.get(key, "default")} for key, value in values.items()},
        }
        click.echo(json.dumps(payload, indent=2))
        return
    found = settings.config_file
    click.echo(f"# config file: {found if found else f'none (looked for {default_config_file()})'}")
    for section in [*SECTIONS, *(s for s in settings.model_fields if s not in SECTIONS)]:
        click.echo(f"\n[{section}]")
        for key, value in values.items():
            if key.partition(".")[0] != section:
                continue
            name = key.partition(".")[2]
            line = f"{name} = {render_value(value)}" if value is not None else f"# {name} is not set"
            click.echo(f"{line:<48} # {sources.get(key, 'default')}")

