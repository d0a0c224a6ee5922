"""Where speculative tokens come from: the request's own tokens, or a small draft model.

Both propose point masses (a definite token per position, not a distribution), which is what
lets one verification rule in `speculate.py` serve both and keep sampling exact.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

import mlx.core as mx
import numpy as np
from mlx_lm.models.cache import make_prompt_cache, trim_prompt_cache


class Proposer(Protocol):
    name: str

    def propose(self, history: list[int], limit: int) -> mx.array | None:
        """Up to `limit` tokens likely to follow `history` (uint32, possibly lazy), or None."""
        ...

    def settle(self, kept: int) -> None:
        """After verification: `kept` of the last proposal's tokens are now part of the history."""
        ...

    def release(self) -> None:
        """Free what the proposer holds (the sequence ended)."""
        ...


class PromptLookup:
    """Prompt-lookup decoding: the tokens that followed the latest earlier occurrence of the
    sequence's last `n` tokens, for the largest `n` in [min_n, max_n] that occurs.

    Agents copy: file contents into Edit and Write calls, quoted code, paths. Those tokens are
    already in the prompt, so the continuation of a matching n-gram is usually right. The
    search is one vectorized comparison over the tokens (a few microseconds for 20k), on a
    numpy mirror of the history that only ever appends.
    """

    name = "ngram"

    def __init__(self, min_n: int, max_n: int) -> None:
        self.min_n, self.max_n = min_n, max(min_n, max_n)
        self._tokens = np.zeros(1024, dtype=np.int64)
        self._size = 0

    def _mirror(self, history: list[int]) -> np.ndarray:
        n = len(history)
        if n < self._size:  # a different, shorter history: start over
            self._size = 0
        if n > len(self._tokens):
            grown = np.zeros(max(n, 2 * len(self._tokens)), dtype=np.int64)
            grown[: self._size] = self._tokens[: self._size]
            self._tokens = grown
        if n > self._size:
            self._tokens[self._size : n] = history[self._size :]
            self._size = n
        return self._tokens[:n]

    def propose(self, history: list[int], limit: int) -> mx.array | None:
        tokens = self._mirror(history)
        n = len(tokens)
        if n < self.min_n + 1 or limit < 1:
            return None
        # Positions (before the last) holding the last token, narrowed one token further back
        # at a time while some still match.
        ends = np.flatnonzero(tokens[: n - 1] == tokens[n - 1])
        matched = 1
        while matched < min(self.max_n, n - 1) and len(ends):
            candidates = ends[ends >= matched]
            still = candidates[tokens[candidates - matched] == tokens[n - 1 - matched]]
            if not len(still):
                break
            ends, matched = still, matched + 1
        if matched < self.min_n or not len(ends):
            return None
        # The latest occurrence (the most local context) among those followed by `limit`
        # tokens; if none is, the one followed by the most (in a loop, the latest is followed
        # by one period only).
        whole = ends[ends + limit < n]
        start = int(whole[-1] if len(whole) else ends[0]) + 1
        return mx.array(tokens[start : start + limit], dtype=mx.uint32)

    def settle(self, kept: int) -> None:
        pass

    def release(self) -> None:
        self._tokens = np.zeros(0, dtype=np.int64)
        self._size = 0


@dataclass(frozen=True, slots=True)
class DraftModel:
    """A small model sharing the target's tokenizer, loaded next to it (`model.draft`)."""

    model: Any
    prefill_model: Any = None
    """Many-token passes may run on a twin with another weights layout (CUDA: unpacked)."""
    vocab: int | None = None
    """Token ids the target knows: a draft with a larger (padded) output never proposes beyond."""


class DraftProposer:
    """Greedy tokens from a draft model, which keeps its own KV cache of the sequence.

    The draft's cache runs behind the history (tokens accepted from other proposers, or made
    while the sequence was batched) and catches up in one pass before drafting. Its drafting
    steps stay lazy: the target's verification pass takes them as input, and one evaluation at
    the end runs both (as mlx-lm's `speculative_generate_step` does).
    """

    name = "draft"

    def __init__(self, draft: DraftModel, prefill_step_size: int) -> None:
        self.draft = draft
        self.prefill_step_size = prefill_step_size
        self._cache: list[Any] | None = None
        self._held = 0
        """Tokens of the history in the draft's cache."""
        self._fed_drafts = 0
        """Tokens of the last proposal fed to the draft's cache (all but its last)."""

    def _greedy(self, model: Any, tokens: mx.array) -> mx.array:
        logits = model(tokens[None], cache=self._cache)[0, -1]
        if self.draft.vocab is not None:
            logits = logits[: self.draft.vocab]
        return mx.argmax(logits, axis=-1, keepdims=True).astype(mx.uint32)

    def _in_step(self) -> bool:
        """Whether the cache holds exactly what this proposer thinks (a failed step may have left more)."""
        return self._cache is not None and all(getattr(c, "offset", -1) == self._held for c in self._cache)

    def propose(self, history: list[int], limit: int) -> mx.array | None:
        if limit < 1:
            return None
        if not self._in_step():
            self._cache, self._held = make_prompt_cache(self.draft.model), 0
        if self._held >= len(history):  # the last token's logits are needed: feed it again
            trim_prompt_cache(self._cache, self._held - len(history) + 1)
            self._held = len(history) - 1
        prefill = self.draft.prefill_model or self.draft.model
        feed = history[self._held :]
        while len(feed) > self.prefill_step_size:
            prefill(mx.array(feed[: self.prefill_step_size])[None], cache=self._cache)
            mx.eval([c.state for c in self._cache])  # type: ignore[union-attr]
            self._held += self.prefill_step_size
            feed = feed[self.prefill_step_size :]
        token = self._greedy(prefill if len(feed) > 1 else self.draft.model, mx.array(feed))
        self._held = len(history)
        drafted = [token]
        for _ in range(limit - 1):
            token = self._greedy(self.draft.model, token)
            drafted.append(token)
        self._fed_drafts = limit - 1
        return mx.concatenate(drafted)

    def settle(self, kept: int) -> None:
        keep = min(kept, self._fed_drafts)
        if self._cache is not None and self._fed_drafts > keep:
            trim_prompt_cache(self._cache, self._fed_drafts - keep)
        self._held += keep
        self._fed_drafts = 0

    def release(self) -> None:
        self._cache, self._held, self._fed_drafts = None, 0, 0
