"""Per-request samplers.

Greedy requests get no sampler of their own (None), so the batch falls back to one shared
argmax call: mlx-lm's batch step samples the whole batch in one call only when every sequence
shares the same sampler object.

A sampled request gets a `TokenSampler`, whose noise is a function of the request's seed and of
the output position being sampled, not of how many times it was called. That is what keeps a
seeded answer the same token for token whichever path produced it: alone or in a batch, with a
dropped in-flight step, or through speculative verification, which samples several positions
in one pass and keeps only some of them (`engine/speculate.py`). Requests without a seed draw
a random one.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable

import mlx.core as mx
from mlx_lm.sample_utils import apply_top_k, apply_top_p

from pensieve.models import SamplingParams

Sampler = Callable[[mx.array], mx.array]

_SEED_BITS = 32
"""A request's seed is reduced to this many bits; the other 32 of MLX's 64-bit key hold the position."""


class TokenSampler:
    """Temperature, top-k and top-p sampling with one PRNG key per output position.

    Called with the log-probabilities of one row (the next token), as mlx-lm's `generate_step`
    and `BatchGenerator` call a sampler, it draws for `position` and moves on to the next one.
    """

    def __init__(self, params: SamplingParams, seed: int | None = None) -> None:
        self.inv_temp = 1.0 / params.temperature
        self.top_k = params.top_k
        self.top_p = params.top_p
        seed = params.seed if seed is None else seed
        if seed is None:
            seed = secrets.randbits(_SEED_BITS)
        self._seed = seed % (1 << _SEED_BITS)
        self.position = 0
        """The output position (tokens generated before it) that the next call samples."""

    def __call__(self, logprobs: mx.array) -> mx.array:
        token = self.sample(logprobs, self.position)
        self.position += logprobs.shape[0]
        return token

    def distribution(self, logprobs: mx.array) -> mx.array:
        """Log-probabilities of what is actually sampled: top-k and top-p cut, then tempered.

        Computed over the last axis, so it serves one row or several. Speculative verification
        keeps a proposed token with exactly this distribution's probability.
        """
        scaled = self._scaled(logprobs)
        return scaled - mx.logsumexp(scaled, axis=-1, keepdims=True)

    def _scaled(self, logprobs: mx.array) -> mx.array:
        vocab = logprobs.shape[-1]
        if 0 < self.top_k < vocab:
            logprobs = apply_top_k(logprobs, self.top_k)
        if 0.0 < self.top_p < 1.0:
            logprobs = apply_top_p(logprobs, self.top_p)
        return logprobs * self.inv_temp

    def sample(self, logprobs: mx.array, position: int) -> mx.array:
        """One token per row of `logprobs` ([rows, vocab]); row i is output position `position + i`.

        Each row is drawn on its own (MLX's noise for a [1, vocab] draw is not that of a
        [vocab] one), so a position gets the same token in a one-row step and in a verification.
        Categorical sampling needs no normalization: `distribution` is the same law.
        """
        scaled = self._scaled(logprobs)
        rows = [mx.random.categorical(scaled[i], key=self._key(position + i)) for i in range(scaled.shape[0])]
        return rows[0][None] if len(rows) == 1 else mx.stack(rows)

    def _key(self, position: int) -> mx.array:
        # MLX keys are 64-bit; threefry turns (seed, position) into independent streams.
        return mx.random.key((self._seed << 32) | (position & 0xFFFFFFFF))


def make_sampler(params: SamplingParams) -> TokenSampler | None:
    return None if params.greedy else TokenSampler(params)


def seek(sampler: Sampler | None, position: int) -> None:
    """Point a sampler at the output position it samples next (where a sequence resumes).

    Samplers that are not a `TokenSampler` (tests force tokens with plain callables) keep
    their own state.
    """
    if isinstance(sampler, TokenSampler):
        sampler.position = position
