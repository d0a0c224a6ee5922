"""The model store: one folder per model, the only files a request's model name can reach.

Layout: `<store>/<org>--<repo>/` holds either an MLX model folder (config.json, *.safetensors,
tokenizer files) or one `.gguf` file, plus `pensieve.json` saying where it came from. Entries
are written into a hidden staging folder and renamed into place, so a half-finished pull or
conversion never shows up as a model.
"""

from __future__ import annotations

import contextlib
import json
import re
import shutil
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pensieve.utils import InvalidRequestError, NotFoundError

ORIGIN_FILE = "pensieve.json"
_STAGING_PREFIX = ".staging-"
# `name` or `org/name`, each part starting with a letter or digit: no `..`, no absolute paths,
# no backslashes, nothing a filesystem reads specially.
_SAFE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*(/[A-Za-z0-9][A-Za-z0-9._-]*)?$")


def is_safe_name(name: str) -> bool:
    # The entry's folder name must also fit a file system's 255-byte limit: a longer name is
    # simply not in the store (asking the file system would raise "File name too long").
    return bool(_SAFE_NAME.match(name)) and ".." not in name and "--" not in name and len(store_dirname(name)) <= 255


def store_dirname(name: str) -> str:
    """`org/repo` is stored as `org--repo`, as the Hugging Face cache does."""
    return name.replace("/", "--")


@dataclass(frozen=True, slots=True)
class StoreEntry:
    name: str
    path: Path
    origin: dict[str, Any]


class ModelStore:
    """List, find, add and remove models under one root folder."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def entry_path(self, name: str) -> Path:
        """Where `name` lives (whether or not it exists); InvalidRequestError for unsafe names."""
        if not is_safe_name(name):
            raise InvalidRequestError(
                f"'{name}' is not a valid model name: use letters, digits, '.', '_' and '-', "
                "optionally as org/name",
                param="model",
            )
        return self.root / store_dirname(name)

    def find(self, name: str) -> StoreEntry | None:
        """The entry for `name`, if present and wholly inside the store (no symlinks out)."""
        if not is_safe_name(name):
            return None
        path = self.root / store_dirname(name)
        if not path.exists() and not path.is_symlink():
            return None
        self._check_contained(path)
        return StoreEntry(self._name_of(path), path, read_origin(path))

    def entries(self) -> list[StoreEntry]:
        if not self.root.is_dir():
            return []
        found = []
        for path in sorted(self.root.iterdir()):
            if path.name.startswith(".") or not path.is_dir():
                continue
            name = self._name_of(path)
            if is_safe_name(name) and store_dirname(name) == path.name:
                found.append(StoreEntry(name, path, read_origin(path)))
        return found

    def remove(self, name: str) -> Path:
        path = self.entry_path(name)
        if not path.exists() and not path.is_symlink():
            raise NotFoundError(f"model '{name}' is not in the model store ({self.root})")
        if path.is_symlink():
            path.unlink()  # never follow a link out of the store when deleting
        else:
            shutil.rmtree(path)
        return path

    @contextlib.contextmanager
    def staging(self, name: str, *, replace: bool = False) -> Iterator[Path]:
        """A path (not yet created) to write `name` at; moved into place only if the block
        succeeds, so an interrupted pull or conversion leaves no half-written model."""
        final = self.entry_path(name)
        if final.exists() and not replace:
            raise InvalidRequestError(
                f"model '{name}' is already in the store; remove it first with "
                f"`pensieve models rm {name}`"
            )
        self.root.mkdir(parents=True, exist_ok=True)
        scratch = Path(tempfile.mkdtemp(prefix=_STAGING_PREFIX, dir=self.root))
        try:
            yield scratch / "model"
            if final.exists():
                shutil.rmtree(final)
            (scratch / "model").rename(final)
        finally:
            shutil.rmtree(scratch, ignore_errors=True)

    def _name_of(self, path: Path) -> str:
        return read_origin(path).get("name") or path.name.replace("--", "/", 1)

    def _check_contained(self, path: Path) -> None:
        """Refuse an entry, or a file in it, that resolves outside the store."""
        root = self.root.resolve()
        inside = [path, *path.rglob("*")] if path.resolve().is_dir() else [path]
        for item in inside:
            if not item.resolve().is_relative_to(root):
                raise NotFoundError(
                    f"model store entry {path.name} links outside the model store "
                    f"({item.name} -> {item.resolve()}); it is not served by name. Copy the "
                    "files into the store, or pass the path to `pensieve start --model`"
                )


def read_origin(path: Path) -> dict[str, Any]:
    """The entry's `pensieve.json` (what it was pulled or converted from), or {}."""
    try:
        data = json.loads((path / ORIGIN_FILE).read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def write_origin(path: Path, name: str, **origin: Any) -> None:
    record = {"name": name, "created_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), **origin}
    (path / ORIGIN_FILE).write_text(json.dumps(record, indent=2) + "\n")


def disk_bytes(path: Path) -> int:
    """Bytes on disk of a file or a folder (every file once, links not followed)."""
    if path.is_file():
        return path.stat().st_size
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file() and not p.is_symlink())
