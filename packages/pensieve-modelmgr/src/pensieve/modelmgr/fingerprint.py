"""A loaded model's identity, for the prefix cache's disk tier: which KV caches are its own.

A KV cache depends on the weights, the configuration and the layout the engine computes with
(unpacked float32 on a CPU gives other numbers than packed 4-bit weights), so all three go in.
Hashing gigabytes of weights at every load would cost seconds, so each weights file counts by
its name, size, modification time and first and last MiB, and config.json whole: a re-download,
a re-conversion or an edit changes at least one of them. A copy of the same files elsewhere
counts as another model; that costs a prefill, never a wrong answer.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

EDGE_BYTES = 1 << 20
WEIGHTS_SUFFIXES = (".safetensors", ".gguf", ".npz")


def _files(path: Path) -> list[Path]:
    if not path.is_dir():
        return [path]
    return sorted(
        p for p in path.iterdir() if p.suffix in WEIGHTS_SUFFIXES or p.name == "config.json"
    )


def weights_fingerprint(path: Path) -> str:
    """A digest of a model file or folder that changes when its weights or configuration do."""
    digest = hashlib.sha256()
    for file in _files(path):
        stat = file.stat()
        digest.update(f"{file.name}|{stat.st_size}|{stat.st_mtime_ns}|".encode())
        with open(file, "rb") as handle:
            if file.name == "config.json":
                digest.update(handle.read())
                continue
            digest.update(handle.read(EDGE_BYTES))
            if stat.st_size > EDGE_BYTES:
                handle.seek(max(EDGE_BYTES, stat.st_size - EDGE_BYTES))
                digest.update(handle.read(EDGE_BYTES))
    return digest.hexdigest()


def model_identity(path: Path, layout: str) -> str:
    """The weights' fingerprint with the layout they are computed in (`LoadedModel.layout`)."""
    return hashlib.sha256(f"{weights_fingerprint(path)}|{layout}".encode()).hexdigest()[:32]
