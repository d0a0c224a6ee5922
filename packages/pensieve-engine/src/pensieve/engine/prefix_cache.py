"""KV caches of recent sequences, found again by the longest token prefix a new prompt shares.

A multi-turn chat or an agent session re-sends everything before the new turn, so the cache
left by one request's sequence usually covers most of the next request's prompt; only the
rest is prefilled.

Why not mlx-lm's `LRUPromptCache`: its trie search builds every candidate path by list
concatenation, which is quadratic in the length of the cached entry past the point where a
prompt leaves it. A new conversation that shares only the chat template's first few tokens
with a cached 20k-token agent session spent 0.26 s in that search (2-core CPU), holding the
GIL, and was then handed a copy of that entry trimmed to those few tokens. Here each entry's
shared prefix is found with one vectorized comparison, and a match shorter than
`min_reuse` tokens is not worth a copy of someone else's cache.

Below it may sit a lower tier (`LowerTier`, the disk: `disk_cache.py`): asked whenever memory
lacks part of a prompt, fed the prefix a finished request named as lasting, and read back at
start (`warm`). Failures of that tier are logged and cost only its hits.
"""

from __future__ import annotations

import copy
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

import numpy as np
from mlx_lm.models.cache import can_trim_prompt_cache, trim_prompt_cache

from pensieve.models import CacheTier, PrefixCacheStats
from pensieve.utils.logging import logger

T = TypeVar("T")

MIN_REUSE_TOKENS = 32
"""Shorter shared prefixes are cheaper to prefill again than to take from another sequence."""
WARM_ENTRIES = 4
"""Prefixes read back from the lower tier at start: a few sessions' system prompts and tools."""


class LowerTier(Protocol):
    """A slower, larger cache below memory (the disk tier, `disk_cache.DiskPrefixStore`)."""

    def lookup(self, tokens: list[int], at_least: int = 0) -> tuple[list[Any], int] | None:
        """A cache of more than `at_least` leading tokens of `tokens`, and how many it holds."""
        ...

    def store(self, tokens: list[int], cache: list[Any]) -> None:
        """Keep the first `len(tokens)` tokens of `cache` (which may hold more), if worth it."""
        ...

    def warm(self, n: int, budget: int) -> list[tuple[list[int], list[Any]]]:
        """Up to `n` recently used (tokens, cache) pairs within `budget` bytes, most recent first."""
        ...

    def usage(self) -> tuple[int, int]:
        """(bytes, entries) it holds for this model."""
        ...

    def close(self) -> None: ...


@dataclass(eq=False, slots=True)
class _Entry:
    tokens: np.ndarray
    cache: list[Any]
    nbytes: int
    trimmable: bool


def _cache_bytes(tokens: list[int], cache: list[Any]) -> int:
    return sum(c.nbytes for c in cache)


def shared_prefix(a: np.ndarray, b: np.ndarray) -> int:
    """How many leading tokens `a` and `b` have in common."""
    n = min(len(a), len(b))
    differ = np.flatnonzero(a[:n] != b[:n])
    return int(differ[0]) if len(differ) else n


class PrefixCache:
    """An LRU of (tokens, KV cache) bounded by bytes and entries; touched by one thread only.

    The bytes it may hold are also what the engine's KV budget leaves it: the scheduler calls
    `evict` before a live sequence would go short.
    """

    def __init__(
        self,
        max_bytes: int,
        *,
        max_entries: int = 16,
        min_reuse: int = MIN_REUSE_TOKENS,
        lower: LowerTier | None = None,
        measure: Callable[[list[int], list[Any]], int] | None = None,
    ) -> None:
        self.max_bytes = max_bytes
        self._measure = measure or _cache_bytes
        """The bytes an entry counts for: its arrays', or (in a group, where every rank must
        evict the same entries) the plan's arithmetic for its length."""
        self.max_entries = max_entries
        self.min_reuse = min_reuse
        self.lower = lower
        self._entries: OrderedDict[int, _Entry] = OrderedDict()
        self._next_key = 0
        self.nbytes = 0
        self.hits = self.misses = 0
        self.lower_hits = self.lower_misses = 0
        """Lookups the lower tier answered, and those neither tier could: they add up to `misses`."""

    def __len__(self) -> int:
        return len(self._entries)

    def fetch(self, tokens: list[int]) -> tuple[list[Any] | None, list[int]]:
        """A copy of the best cache for `tokens` and the tokens it still lacks.

        At least one token is always left to feed: the next token's logits come from it.
        """
        query = np.asarray(tokens, dtype=np.int64)
        best: tuple[int, int] | None = None  # (reusable tokens, key)
        for key, entry in self._entries.items():
            usable = min(shared_prefix(entry.tokens, query), len(tokens) - 1)
            if usable < len(entry.tokens) and not entry.trimmable:
                continue  # only a trimmable cache can be cut back to the shared part
            if best is None or usable >= best[0]:  # ties: the most recently used
                best = (usable, key)
        usable = best[0] if best is not None and best[0] >= self.min_reuse else 0
        if self.lower is not None and usable < len(tokens) - 1:
            found = self._ask_lower(lambda: self.lower.lookup(tokens, usable), None)  # type: ignore[union-attr]
            if found is not None:
                cache, n = found
                self.misses += 1
                self.lower_hits += 1
                self.insert(tokens[:n], copy.deepcopy(cache))  # for the next prompt that shares it
                return cache, tokens[n:]
        if best is None or not usable:
            self.misses += 1
            self.lower_misses += self.lower is not None
            return None, tokens
        self.hits += 1
        key = best[1]
        self._entries.move_to_end(key)
        entry = self._entries[key]
        # The arrays are immutable and shared; each KV cache object is new, so the first
        # write to the copy allocates its own buffer and the entry stays intact.
        cache = copy.deepcopy(entry.cache)
        if usable < len(entry.tokens):
            trim_prompt_cache(cache, len(entry.tokens) - usable)
        return cache, tokens[usable:]

    def insert(self, tokens: list[int], cache: list[Any], persist: int = 0) -> None:
        """Keep `cache` (which holds exactly `tokens`) for later prompts that share its prefix,
        and hand its first `persist` tokens to the lower tier."""
        if self.lower is not None and 0 < persist <= len(tokens):
            self._ask_lower(lambda: self.lower.store(tokens[:persist], cache), None)  # type: ignore[union-attr]
        nbytes = self._measure(tokens, cache)
        if not tokens or nbytes > self.max_bytes:
            return
        entry = _Entry(np.asarray(tokens, dtype=np.int64), cache, nbytes, can_trim_prompt_cache(cache))
        # An older entry that this one extends (or repeats) is now redundant.
        for key, old in list(self._entries.items()):
            if len(old.tokens) <= len(entry.tokens) and (entry.trimmable or len(old.tokens) == len(entry.tokens)):
                if shared_prefix(old.tokens, entry.tokens) == len(old.tokens):
                    self._drop(key)
        self._entries[self._next_key] = entry
        self._next_key += 1
        self.nbytes += nbytes
        while len(self._entries) > self.max_entries or self.nbytes > self.max_bytes:
            self._drop(next(iter(self._entries)))

    def evict(self, nbytes: int) -> int:
        """Drop least recently used entries until at least `nbytes` are freed; returns the bytes freed."""
        freed = 0
        while freed < nbytes and self._entries:
            before = self.nbytes
            self._drop(next(iter(self._entries)))
            freed += before - self.nbytes
        return freed

    def warm(self, n: int = WARM_ENTRIES) -> None:
        """Fill memory from the lower tier's most recently used prefixes, within the byte bound."""
        if self.lower is not None:
            for tokens, cache in reversed(self._ask_lower(lambda: self.lower.warm(n, self.max_bytes), [])):  # type: ignore[union-attr]
                self.insert(tokens, cache)

    def stats(self) -> PrefixCacheStats:
        memory = CacheTier(hits=self.hits, misses=self.misses, bytes=self.nbytes, entries=len(self._entries))
        if self.lower is None:
            return PrefixCacheStats(memory)
        nbytes, entries = self.lower.usage()
        return PrefixCacheStats(memory, CacheTier(self.lower_hits, self.lower_misses, nbytes, entries))

    def clear(self) -> None:
        self._entries.clear()
        self.nbytes = 0

    def close(self) -> None:
        """Drop the entries and let the lower tier finish its writes."""
        self.clear()
        if self.lower is not None:
            self._ask_lower(self.lower.close, None)

    def _ask_lower(self, call: Callable[[], T], fallback: T) -> T:
        """The lower tier's failures (its disk, its files) must never fail a request."""
        try:
            return call()
        except Exception:
            logger.exception("prefix cache: the lower tier failed; serving from memory alone")
            return fallback

    def _drop(self, key: int) -> None:
        self.nbytes -= self._entries.pop(key).nbytes
