"""The commented `pensieve.toml` that `pensieve config init` writes.

It is generated from the settings schema (field docstrings become comments, defaults become
commented-out lines), so a new setting shows up in the template without anyone remembering to
add it. Keys are written commented out: an untouched template changes nothing, and a later
release's better default still reaches users who never edited that key.
"""

from __future__ import annotations

import textwrap
from typing import Any

import tomlkit
from pydantic import BaseModel

from pensieve.utils.paths import log_dir, prefix_cache_dir
from pensieve.utils.settings import Settings

SECTIONS = ("model", "server", "performance", "distributed", "logging")
"""Sections in the order the template presents them (most edited first)."""


def _examples() -> dict[str, Any]:
    """Values shown for keys whose default cannot be written in TOML (None) or says little."""
    return {
        "model.aliases": {"claude-*": "smollm2-135m-instruct"},
        "model.memory_budget_gb": 12.0,
        "model.context_length": 4096,
        "model.draft": "qwen2.5-0.5b-instruct-4bit",
        "server.cors_origins": ["http://localhost:3000"],
        "logging.file": str(log_dir() / "pensieve.log"),
        "performance.prefix_cache_dir": str(prefix_cache_dir()),
    }


def render_value(value: Any) -> str:
    """A settings value as TOML text (a table inline), the way the template and `config show` print it."""
    if isinstance(value, dict):
        table = tomlkit.inline_table()
        table.update(value)
        return table.as_string()
    return tomlkit.item(value).as_string()


def render_config_template() -> str:
    """The template's text: every section and key, each with its description and default."""
    doc = tomlkit.document()
    doc.add(tomlkit.comment("Pensieve settings. Uncomment a line to change it from its default."))
    doc.add(tomlkit.comment("Precedence: command line > environment (PENSIEVE_*) > this file > defaults."))
    doc.add(tomlkit.comment("`pensieve config show` prints the effective values and where each came from;"))
    doc.add(tomlkit.comment("after editing, `kill -HUP <pid>` reloads what can change live (docs/operations.md)."))
    examples = _examples()
    for section in SECTIONS:
        schema: type[BaseModel] = Settings.model_fields[section].annotation  # type: ignore[assignment]
        table = tomlkit.table()
        for name, field in schema.model_fields.items():
            key = f"{section}.{name}"
            table.add(tomlkit.nl())
            for line in textwrap.wrap(field.description or "", width=94):
                table.add(tomlkit.comment(line))
            default = field.get_default(call_default_factory=True)
            if default is None:
                if key in examples:
                    table.add(tomlkit.comment(f"{name} = {render_value(examples[key])}    # not set by default"))
                else:
                    table.add(tomlkit.comment(f"{name} is not set by default"))
                continue
            table.add(tomlkit.comment(f"{name} = {render_value(default)}"))
            if key in examples and examples[key] != default:
                table.add(tomlkit.comment(f"{name} = {render_value(examples[key])}    # example"))
        doc.add(tomlkit.nl())
        doc.add(section, table)
    return tomlkit.dumps(doc)
