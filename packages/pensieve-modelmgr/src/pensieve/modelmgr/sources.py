"""Where a model comes from: turn what a user typed into a concrete, loadable source.

Paths are honoured only from the operator (command line, config file, alias targets); a name
arriving in an HTTP request can reach the embedded model and the model store, never an
arbitrary file: the store checks the name's shape and that nothing in the entry links out.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from pensieve.modelmgr.embedded import EMBEDDED_NAME, embedded_model_path
from pensieve.modelmgr.store import ModelStore, store_dirname
from pensieve.utils import NotFoundError

__all__ = ["ModelSource", "SourceKind", "resolve_source", "source_from_path", "store_dirname"]

SourceKind = Literal["embedded", "gguf", "mlx"]


@dataclass(frozen=True, slots=True)
class ModelSource:
    name: str
    """The name the model is served under (what /v1/models lists)."""
    kind: SourceKind
    path: Path


def source_from_path(path: Path, name: str | None = None) -> ModelSource:
    """A .gguf file, an MLX folder (config.json), or a folder holding exactly one .gguf."""
    if path.is_file() and path.suffix.lower() == ".gguf":
        return ModelSource(name or path.stem, "gguf", path)
    if path.is_dir():
        if (path / "config.json").is_file():
            return ModelSource(name or path.name, "mlx", path)
        ggufs = sorted(path.glob("*.gguf"))
        if len(ggufs) == 1:
            return ModelSource(name or path.name, "gguf", ggufs[0])
    raise NotFoundError(
        f"{path} is neither a .gguf file nor a model folder with config.json; "
        "point --model at one, or run `pensieve models list` to see what is available"
    )


def resolve_source(spec: str, store: Path | ModelStore, *, allow_paths: bool) -> ModelSource:
    """Resolve a model spec: the embedded name, a store entry, or (operator only) a path."""
    if spec == EMBEDDED_NAME:
        return ModelSource(EMBEDDED_NAME, "embedded", embedded_model_path())
    if allow_paths:
        candidate = Path(spec).expanduser()
        if candidate.exists():
            return source_from_path(candidate.resolve())
    store = store if isinstance(store, ModelStore) else ModelStore(store)
    entry = store.find(spec)
    if entry is not None:
        return source_from_path(entry.path, name=spec)
    raise NotFoundError(
        f"model '{spec}' was not found: it is not the embedded model ({EMBEDDED_NAME}) "
        "nor in the model store. Run `pensieve models list`, or `pensieve models pull <repo>` "
        "to fetch it",
        param="model",
    )
