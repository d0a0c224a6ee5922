"""One sequence decoded without batching machinery.

mlx-lm's `BatchGenerator` pays for generality at batch size one (batched caches with padding
masks, per-row bookkeeping): on an H100 a 4-bit Phi-3-mini decodes ~25% slower through it than
through `generate_step`. Most of a local server's life is one user and one stream, so a lone
sequence runs here instead: the `generate_step` loop (forward, sample, `async_eval` the next
step before reading the current token) unrolled one step per call, so the scheduler can admit a
newcomer between steps and hand the sequence, with its KV cache, to the batch.

A constrained sequence (structured output, `constraint.py`) takes one detour per step: the
forward pass is queued, the token it follows is read, and the grammar's mask for the next token
is computed on the CPU while the device runs the pass; the mask is then applied and the token
sampled. Unconstrained sequences keep the plain loop.

With speculation (`speculate.py`) a step may instead verify several proposed tokens in one
pass and return all it keeps. Such a step needs the last token's value before it can be built,
so it is never queued ahead; the cache is cut back to the kept tokens before `advance()`
returns, so `detach()` finds it in the same state as after an unpipelined plain step. Under a
grammar, only the proposed tokens it accepts are verified, and each row of the pass gets the
mask a plain step at that position would: the answer is the same token for token, and an agent
that copies a file into a tool call under `tool_choice` auto keeps the speedup.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import mlx.core as mx
from mlx_lm.generate import generation_stream
from mlx_lm.models.cache import trim_prompt_cache
from mlx_lm.sample_utils import greedy_sampler

from pensieve.engine.constraint import apply_bitmask
from pensieve.engine.speculate import Speculation

ONE_PASS_TOKENS = 512
"""Prompts up to this long are prefilled in the same forward pass that yields the first token."""


class SoloSequence:
    """A sequence's KV cache plus the tokens still to feed; `advance()` does one unit of work."""

    def __init__(
        self,
        model: Any,
        history: list[int],
        cache: list[Any],
        to_feed: list[int],
        *,
        sampler: Any,
        budget: int,
        prefill_chunk: Callable[[int], int],
        prefill_model: Any = None,
        constraint: Any = None,
        speculation: Speculation | None = None,
    ) -> None:
        self.model = model
        self.prefill_model = prefill_model if prefill_model is not None else model
        """Many-token passes may run on a twin with other weights layout (CUDA: unpacked)."""
        self.history = history
        """Prompt and generated tokens so far; the first `fed` of them are in the cache."""
        self.cache = cache
        self.to_feed = list(to_feed)
        self.sampler = sampler or greedy_sampler
        self.budget = budget
        """Tokens this sequence may still generate."""
        self.prefill_chunk = prefill_chunk
        """Prompt tokens per pass on top of a cache of the given length: attention scores grow
        with it, so where they are materialized (no fused kernel) long prompts take smaller passes."""
        self.fed = len(history) - len(self.to_feed)
        """How many tokens of `history` the cache holds."""
        self.constraint = constraint
        """A `SequenceConstraint` (mask, advance) for structured output, or None."""
        self._next: mx.array | None = None
        self._queued_ahead = False
        """Whether `_next` was queued before the token before it was read."""
        self._break_next = False
        """Whether the next take should not queue a step ahead: a proposal is expected."""
        self.speculation = speculation

    def _logits(self, tokens: mx.array, model: Any) -> mx.array:
        return model(tokens[None], cache=self.cache)[:, -1, :]

    def _sample(self, logits: mx.array) -> mx.array:
        if self.constraint is not None:
            mx.async_eval(logits)  # the device runs the pass while the CPU computes the mask
            logits = self.constraint.apply(logits)
        return self.sampler(logits - mx.logsumexp(logits, axis=-1, keepdims=True))

    def _forward(self, tokens: mx.array, model: Any) -> mx.array:
        return self._sample(self._logits(tokens, model))

    def advance(self) -> list[int] | None:
        """Prefill one chunk (returns None) or produce tokens: one, or the ones a verification kept.

        Every token returned is within the budget, and only the last may be a stop token.
        """
        with mx.stream(generation_stream):
            if self._next is None:
                # A short remainder (a follow-up turn after a prefix-cache hit) goes through in
                # one pass; only long prompts are chunked, to bound the logits' memory.
                chunk = self.prefill_chunk(self.fed)
                if len(self.to_feed) > min(chunk, ONE_PASS_TOKENS):
                    n = min(chunk, len(self.to_feed) - 1)
                    self.prefill_model(mx.array(self.to_feed[:n])[None], cache=self.cache)
                    mx.eval([c.state for c in self.cache])
                    self.to_feed = self.to_feed[n:]
                    self.fed += n
                    return None
                if len(self.to_feed) == 1 and self.speculation is not None:
                    drafts = self.speculation.propose(self.history, self.budget, self.cache)
                    if drafts is not None:
                        return self._verify(drafts)
                many = len(self.to_feed) > 1
                self._next = self._forward(mx.array(self.to_feed), self.prefill_model if many else self.model)
                self.fed += len(self.to_feed)
                self.to_feed = []
                mx.async_eval(self._next)
                if many:
                    # The prompt's first token is handed over before the next step is queued:
                    # building that step costs milliseconds the user would wait for. One step
                    # runs unpipelined; the ones after it are queued ahead again.
                    return self._take(self._next, queue_next=False)
            return self._take(self._next, queue_next=True)

    def _take(self, current: mx.array, *, queue_next: bool) -> list[int]:
        self.budget -= 1
        pipelined, prompt = self._queued_ahead, not queue_next
        if self._break_next:
            queue_next = False  # a verification will follow this token: it needs its value
        more = queue_next and self.budget > 0
        if self.constraint is None:
            # Queue the following step before reading this token, as generate_step does, so
            # the device never waits for Python.
            self._next = self._forward(current, self.model) if more else None
            if self._next is not None:
                mx.async_eval(self._next)
            token = int(current.item())
        else:
            # The next token's mask needs this token: queue the pass, read the token, advance
            # the grammar and compute the mask while the pass runs, then sample.
            logits = self._logits(current, self.model) if more else None
            if logits is not None:
                mx.async_eval(logits)
            token = int(current.item())
            self.constraint.advance(token)
            self._next = self._sample(logits) if logits is not None else None
            if self._next is not None:
                mx.async_eval(self._next)
        self._queued_ahead = self._next is not None
        if self._queued_ahead:
            self.fed += 1  # the step queued feeds this token
        self.history.append(token)
        if self._next is None:
            self.to_feed = [token]  # not in the cache yet: the next advance() feeds it
        spec = self.speculation
        if spec is not None:
            spec.delivered(pipelined=pipelined, prompt=prompt)
            # Asked now, while the step just queued runs, for the take after it.
            self._break_next = self._next is not None and spec.wants_break(self.history)
        return [token]

    def _verify(self, drafts: mx.array) -> list[int]:
        """One pass over the last token and the drafts; keep what the model agrees with.

        The pass writes all of them to the cache; the rejected drafts are cut back, and the
        last kept token waits in `to_feed`, as after a plain step that was not queued ahead.
        Under a grammar only the drafts it accepts are verified, and each row of the pass is
        masked as a plain step there would be (the masks computed while the pass runs).
        """
        assert self.speculation is not None
        allowed = None if self.constraint is None else self.constraint.admissible(drafts.tolist())
        if allowed is not None:
            drafts = mx.array(allowed, dtype=mx.uint32)
        inputs = mx.concatenate([mx.array(self.to_feed, dtype=mx.uint32), drafts])
        logits = self.prefill_model(inputs[None], cache=self.cache)[0]
        if allowed is not None:
            mx.async_eval(logits)
            masks = self.constraint.masks_along(allowed)
            logits = logits if masks is None else apply_bitmask(logits, masks)
        tokens = self.speculation.accept(logits, drafts)
        trim_prompt_cache(self.cache, len(inputs) - len(tokens))
        self.history.extend(tokens)
        self.budget -= len(tokens)
        self.fed = len(self.history) - 1
        self.to_feed = [tokens[-1]]
        if self.constraint is not None:
            for token in tokens:
                self.constraint.advance(token)
        return tokens

    def detach(self) -> tuple[list[Any], list[int]]:
        """Stop here and return (cache, tokens to feed) so the batch can carry on.

        After a token is produced the cache already holds it (the next step fed it); that
        step's result is dropped, so the token is trimmed and fed again by the batch.
        """
        with mx.stream(generation_stream):
            if self._next is not None:
                mx.eval(self._next)
                trim_prompt_cache(self.cache, 1)
                self.fed -= 1
                self.to_feed = self.history[self.fed :]
                self._next = None
                self._queued_ahead = False
            mx.eval([c.state for c in self.cache])
        return self.cache, self.to_feed
