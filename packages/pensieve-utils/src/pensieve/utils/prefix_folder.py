"""The prefix cache's disk folder as plain files: what it holds, and emptying it.

The files themselves (mlx-lm prompt-cache safetensors with Pensieve's metadata) are
`pensieve.engine.disk_files`'s business; this module only counts and removes them, below MLX,
so that `pensieve cache clear` and the pool's report answer without importing it.
"""

from __future__ import annotations

from pathlib import Path

SUFFIX = ".safetensors"
"""A finished prefix file: `<key>.safetensors`."""
TEMP_SUFFIX = ".tmp"
"""A file being written: `.<pid>-<n>.tmp`, renamed into place when whole."""


def usage(directory: Path) -> tuple[int, int]:
    """(files, bytes) of every model's prefix files in `directory` (0, 0 if it does not exist)."""
    files = total = 0
    for path in directory.glob(f"*{SUFFIX}"):
        try:
            total += path.stat().st_size
        except FileNotFoundError:  # another server evicted it just now
            continue
        files += 1
    return files, total


def clear(directory: Path) -> tuple[int, int]:
    """Delete every prefix file in `directory`; (files, bytes) removed. Files still being
    written by a running server are left to it: they appear whole or not at all."""
    files = total = 0
    for path in directory.glob(f"*{SUFFIX}"):
        try:
            size = path.stat().st_size
            path.unlink()
        except FileNotFoundError:
            continue
        files, total = files + 1, total + size
    return files, total
