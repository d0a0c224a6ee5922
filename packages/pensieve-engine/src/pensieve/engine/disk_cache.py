"""The prefix cache's disk tier: prompt prefixes that outlive the process.

Claude Code opens every session and every subagent with the same ~20k tokens of system prompt
and tools. The in-memory prefix cache serves them while the server runs; this tier keeps them
across a restart, an upgrade, a model switch or an eviction, so that prefill is paid once per
model and not once per process.

- **What is written**: after a response, the prefix its request named as lasting (the part
  before the last user turn, `prefix_policy`), when it is at least `min_tokens` long and the
  disk holds less than half of it. A Claude Code session writes its system prompt and tools
  once, and a long conversation again each time it doubles, not at every turn.
- **Off the request's path**: the compute thread cuts the prefix out of the finished sequence's
  cache (a device copy) and queues it; a writer thread writes the file. With a write still
  queued, a new one is skipped: memory never holds more than two copies in waiting.
- **Found as in memory**: the longest shared token prefix wins, however the prompts differ after
  it (a file is cut back to the shared part); a tie goes to the smaller file, cheaper to read.
- **Shared, bounded, atomic**: files are written to a temporary name unique to the process and
  renamed into place; every server keeps its own index, rereads the folder when it changes, and
  evicts least recently used files (by modification time, touched on use) over the bound. A file
  another server removed is a miss, never an error. A full disk is a warning.

The files are mlx-lm's (see `disk_files`); the index and eviction are written here because a
disk-cache library (`diskcache`: pickles in SQLite) would add a second format, unpickle what it
finds, and has no lookup by longest shared token prefix.
"""

from __future__ import annotations

import itertools
import os
import queue
import shutil
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from mlx_lm.models.cache import trim_prompt_cache

from pensieve.engine import disk_files
from pensieve.engine.disk_files import BadFile, FileHeader
from pensieve.engine.prefix_cache import shared_prefix
from pensieve.utils.logging import logger
from pensieve.utils.prefix_folder import SUFFIX, TEMP_SUFFIX

MIN_TOKENS = 1024
"""Shorter prefixes prefill in about the time their file takes to read back."""
FREE_SPACE_RESERVE = 256 * 1024**2
"""Writes stop while the disk has less than this free beyond the file: the cache never fills it."""
_TEMP_IDS = itertools.count()
"""Temporary names are `.<pid>-<n>.tmp`: unique across servers sharing the folder, and a dead
process's leftovers are recognisable."""


@dataclass(frozen=True, slots=True)
class DiskTier:
    """Where a model's prefixes go: the folder, its bound, and the model's identity."""

    directory: Path
    max_bytes: int
    model: str
    """Weights fingerprint and layout (`modelmgr/fingerprint.py`): files of any other never match."""
    min_tokens: int = MIN_TOKENS


class DiskPrefixStore:
    """One model's prefixes in a folder shared with other models and servers."""

    def __init__(self, tier: DiskTier, *, template: list[Any], name: str = "model") -> None:
        """`template` is a fresh cache of the engine's (its layer classes and KV bit width)."""
        self.directory = tier.directory
        self.max_bytes = tier.max_bytes
        self.model = tier.model
        self.name = name
        self.template = template
        self.kv_bits = disk_files.kv_bits_of(template)
        """The bit width of the engine's KV caches (None: full precision); other widths never match."""
        self.min_tokens = tier.min_tokens
        self._files: dict[str, FileHeader] = {}
        """This model's usable files by name (other models' are in `_foreign`)."""
        self._foreign: set[str] = set()
        self._stamp: int | None = None
        self._lock = threading.Lock()  # the index: compute thread and writer thread
        self._queue: queue.Queue[tuple[str, np.ndarray, list[Any]] | None] = queue.Queue(maxsize=1)
        self._pending: set[str] = set()
        self.directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        self._writer = threading.Thread(
            target=self._write_loop, name=f"pensieve-disk-{name}", daemon=True
        )
        self._writer.start()

    @classmethod
    def open(cls, tier: DiskTier | None, template: list[Any], name: str) -> DiskPrefixStore | None:
        """The store, or None when there is no tier or its folder cannot be made (a warning)."""
        if tier is None:
            return None
        try:
            return cls(tier, template=template, name=name)
        except OSError as exc:
            logger.warning("prefix cache: cannot use {} ({}); {}'s prefixes are kept in memory only. "
                           "Check performance.prefix_cache_dir", tier.directory, exc, name)  # fmt: skip
            return None

    # -- compute thread ---------------------------------------------------------------------

    def lookup(self, tokens: list[int], at_least: int = 0) -> tuple[list[Any], int] | None:
        """A cache of more than `at_least` (and at least `min_tokens`) leading tokens of `tokens`,
        cut to what they share, and how many it holds; None when the disk has nothing longer.

        As in memory, at least one token is left to feed.
        """
        if len(tokens) <= self.min_tokens:
            return None
        self._refresh()
        query = np.asarray(tokens, dtype=np.int64)
        best: tuple[int, FileHeader] | None = None
        for header in self._index():
            usable = min(shared_prefix(header.tokens, query), len(tokens) - 1)
            if usable <= at_least or usable < self.min_tokens:
                continue
            if best is None or (usable, -header.nbytes) > (best[0], -best[1].nbytes):
                best = (usable, header)
        cache = self._read(best[1]) if best is not None else None
        if best is None or cache is None:
            return None
        usable, header = best
        trim_prompt_cache(cache, len(header.tokens) - usable)
        logger.info(
            "prefix cache: {} of {} prompt tokens read from disk for {}",
            usable,
            len(tokens),
            self.name,
        )
        return cache, usable

    def store(self, tokens: list[int], cache: list[Any]) -> None:
        """Queue the first `len(tokens)` tokens of `cache` for writing, if worth it (see the
        module docstring); `cache` may hold more tokens than that and is not changed."""
        n = len(tokens)
        if n < self.min_tokens or not disk_files.persistable(cache, n):
            return
        self._refresh()
        query = np.asarray(tokens, dtype=np.int64)
        covered, widest = 0, None
        for header in self._index():
            shared = shared_prefix(header.tokens, query)
            if shared > covered:
                covered, widest = shared, header
        if widest is not None and covered == n:
            self._touch(widest)  # already on disk (perhaps inside a longer prefix)
            return
        key = disk_files.file_key(self.model, self.kv_bits, query)
        if 2 * covered >= n or key in self._pending:
            return
        if self._queue.full():
            logger.debug(
                "prefix cache: a write is still queued; not keeping {} tokens of {}", n, self.name
            )
            return
        self._pending.add(key)  # before the writer can see it, so flush() never misses it
        self._queue.put_nowait((key, query, disk_files.compact(cache, n)))  # only this thread puts

    def warm(self, n: int, budget: int) -> list[tuple[list[int], list[Any]]]:
        """Up to `n` of this model's most recently used prefixes, read back within `budget` bytes,
        most recent first. A prefix that a more recent, longer one contains is left out."""
        start = time.perf_counter()
        self._refresh()
        chosen: list[tuple[FileHeader, list[Any]]] = []
        used = 0
        for header in sorted(self._index(), key=lambda h: h.mtime, reverse=True):
            if len(chosen) >= n:
                break
            if used + header.nbytes > budget:
                continue
            if any(shared_prefix(h.tokens, header.tokens) == len(header.tokens) for h, _ in chosen):
                continue
            cache = self._read(header)
            if cache is not None:
                chosen.append((header, cache))
                used += header.nbytes
        if chosen:
            tokens = sum(len(h.tokens) for h, _ in chosen)
            logger.info("prefix cache: read {} prefixes of {} ({} tokens, {:.1f} MB) from disk in {:.2f}s",
                        len(chosen), self.name, tokens, used / 1e6, time.perf_counter() - start)  # fmt: skip
        return [(h.tokens.tolist(), cache) for h, cache in chosen]

    # -- any thread -------------------------------------------------------------------------

    def usage(self) -> tuple[int, int]:
        """(bytes, files) of this model's prefixes on disk."""
        files = self._index()
        return sum(h.nbytes for h in files), len(files)

    def flush(self, timeout: float = 60.0) -> None:
        """Wait until queued writes are on disk (or `timeout` passes)."""
        deadline = time.monotonic() + timeout
        while (self._pending or not self._queue.empty()) and time.monotonic() < deadline:
            time.sleep(0.01)

    def close(self, timeout: float = 60.0) -> None:
        """Finish queued writes, then stop the writer: a restart finds what was kept before it."""
        try:
            self._queue.put(None, timeout=timeout)
        except queue.Full:
            logger.warning(
                "prefix cache: {}'s disk writer did not finish within {:g}s", self.name, timeout
            )
            return
        self._writer.join(timeout)

    # -- the index --------------------------------------------------------------------------

    def _index(self) -> list[FileHeader]:
        with self._lock:
            return list(self._files.values())

    def _refresh(self) -> None:
        """Reread the folder's listing if it changed (another server wrote or evicted)."""
        try:
            stamp = self.directory.stat().st_mtime_ns
        except FileNotFoundError:  # removed under us: `pensieve cache clear` of the whole folder
            self.directory.mkdir(parents=True, exist_ok=True, mode=0o700)
            stamp = self.directory.stat().st_mtime_ns
        if stamp == self._stamp:
            return
        self._stamp = stamp
        names = {p.name for p in self.directory.glob(f"*{SUFFIX}")}
        with self._lock:
            for gone in set(self._files) - names:
                del self._files[gone]
            self._foreign &= names
            new = names - set(self._files) - self._foreign
        for name in sorted(new):
            path = self.directory / name
            try:
                header = disk_files.read_header(path)
                if header.model == self.model and header.kv_bits == self.kv_bits:
                    disk_files.check_runtime(header)
            except FileNotFoundError:
                continue
            except BadFile as exc:
                self._discard(path, exc)
                continue
            with self._lock:
                if header.model == self.model and header.kv_bits == self.kv_bits:
                    self._files[name] = header
                else:
                    self._foreign.add(name)
        self._remove_dead_temp_files()

    def _read(self, header: FileHeader) -> list[Any] | None:
        try:
            cache = disk_files.read(header, self.template)
        except BadFile as exc:
            if header.path.exists():
                self._discard(header.path, exc)
            self._forget(header.path.name)
            return None
        self._touch(header)
        return cache

    def _discard(self, path: Path, reason: BadFile) -> None:
        logger.warning(
            "prefix cache: discarding {}: {}; the prompt is prefilled instead", path, reason
        )
        self._remove(path)

    def _remove(self, path: Path) -> int:
        self._forget(path.name)
        try:
            path.unlink()
        except FileNotFoundError:
            return 0
        return 1

    def _forget(self, name: str) -> None:
        with self._lock:
            self._files.pop(name, None)

    def _touch(self, header: FileHeader) -> None:
        """Mark as recently used: eviction, by every server sharing the folder, goes by mtime."""
        try:
            os.utime(header.path)
        except FileNotFoundError:
            self._forget(header.path.name)

    def _remove_dead_temp_files(self) -> None:
        for path in self.directory.glob(f".*{TEMP_SUFFIX}"):
            pid = path.name[1:].partition("-")[0]
            if pid.isdigit() and not _alive(int(pid)):
                path.unlink(missing_ok=True)

    # -- writer thread ----------------------------------------------------------------------

    def _write_loop(self) -> None:
        while (item := self._queue.get()) is not None:
            key, tokens, cache = item
            try:
                self._write(key, tokens, cache)
            except OSError as exc:
                logger.warning("prefix cache: could not write {} tokens of {} to {}: {}. The request was served; "
                               "only its copy on disk is missing. Free disk space, or lower performance.prefix_cache_disk_gb",
                               len(tokens), self.name, self.directory, exc)  # fmt: skip
            except Exception:
                logger.exception(
                    "prefix cache: writing {} tokens of {} failed", len(tokens), self.name
                )
            finally:
                del cache, item
                self._pending.discard(key)

    def _write(self, key: str, tokens: np.ndarray, cache: list[Any]) -> None:
        need = sum(layer.nbytes for layer in cache)
        if need > self.max_bytes:
            logger.debug(
                "prefix cache: {} tokens ({} bytes) exceed the disk tier's bound", len(tokens), need
            )
            return
        free = shutil.disk_usage(self.directory).free
        if free < need + FREE_SPACE_RESERVE:
            logger.warning("prefix cache: the disk holding {} has {:.0f} MB free; not writing {:.0f} MB for {}. "
                           "Free disk space, or move performance.prefix_cache_dir",
                           self.directory, free / 1e6, need / 1e6, self.name)  # fmt: skip
            return
        temp = self.directory / f".{os.getpid()}-{next(_TEMP_IDS)}{TEMP_SUFFIX}"
        path = self.directory / f"{key}{SUFFIX}"
        try:
            with open(temp, "wb") as file:
                disk_files.write(file, tokens, cache, model=self.model, kv_bits=self.kv_bits)
            os.replace(temp, path)
        finally:
            temp.unlink(missing_ok=True)
        header = disk_files.read_header(path)
        with self._lock:
            self._files[path.name] = header
        logger.info(
            "prefix cache: kept {} tokens of {} on disk ({:.1f} MB)",
            len(tokens),
            self.name,
            header.nbytes / 1e6,
        )
        self._evict()

    def _evict(self) -> None:
        """Least recently used files of every model go until the folder fits the bound."""
        files = []
        for path in self.directory.glob(f"*{SUFFIX}"):
            try:
                stat = path.stat()
            except FileNotFoundError:
                continue
            files.append((stat.st_mtime, stat.st_size, path))
        total = sum(size for _, size, _ in files)
        for _, size, path in sorted(files):
            if total <= self.max_bytes:
                break
            self._remove(path)
            total -= size


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
