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
"""

from __future__ import annotations

import copy
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

import numpy as np
from mlx_lm.models.cache import can_trim_prompt_cache, trim_prompt_cache

MIN_REUSE_TOKENS = 32
"""Shorter shared prefixes are cheaper to prefill again than to take from another sequence."""


@dataclass(eq=False, slots=True)
class _Entry:
    tokens: np.ndarray
    cache: list[Any]
    nbytes: int
    trimmable: bool


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

    def __init__(self, max_bytes: int, *, max_entries: int = 16, min_reuse: int = MIN_REUSE_TOKENS) -> None:
        self.max_bytes = max_bytes
        self.max_entries = max_entries
        self.min_reuse = min_reuse
        self._entries: OrderedDict[int, _Entry] = OrderedDict()
        self._next_key = 0
        self.nbytes = 0

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
        if best is None or best[0] < self.min_reuse:
            return None, tokens
        usable, key = best
        self._entries.move_to_end(key)
        entry = self._entries[key]
        # The arrays are immutable and shared; each KV cache object is new, so the first
        # write to the copy allocates its own buffer and the entry stays intact.
        cache = copy.deepcopy(entry.cache)
        if usable < len(entry.tokens):
            trim_prompt_cache(cache, len(entry.tokens) - usable)
        return cache, tokens[usable:]

    def insert(self, tokens: list[int], cache: list[Any]) -> None:
        """Keep `cache` (which holds exactly `tokens`) for later prompts that share its prefix."""
        nbytes = sum(c.nbytes for c in cache)
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

    def clear(self) -> None:
        self._entries.clear()
        self.nbytes = 0

    def _drop(self, key: int) -> None:
        self.nbytes -= self._entries.pop(key).nbytes
