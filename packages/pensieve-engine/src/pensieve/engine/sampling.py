"""Per-request samplers.

Greedy requests get no sampler of their own (None), so the batch falls back to one shared
argmax call: mlx-lm's batch step samples the whole batch in one call only when every sequence
shares the same sampler object. A seeded request carries its own PRNG key, so its output does not
depend on what else is in the batch.
"""

from __future__ import annotations

from collections.abc import Callable

import mlx.core as mx
from mlx_lm.sample_utils import apply_top_k, apply_top_p

from pensieve.models import SamplingParams

Sampler = Callable[[mx.array], mx.array]


def make_sampler(params: SamplingParams) -> Sampler | None:
    if params.greedy:
        return None
    inv_temp = 1.0 / params.temperature
    top_k, top_p = params.top_k, params.top_p
    key = mx.random.key(params.seed) if params.seed is not None else None

    def sample(logprobs: mx.array) -> mx.array:
        nonlocal key
        if 0 < top_k < logprobs.shape[-1]:
            logprobs = apply_top_k(logprobs, top_k)
        if 0.0 < top_p < 1.0:
            logprobs = apply_top_p(logprobs, top_p)
        if key is None:
            return mx.random.categorical(logprobs * inv_temp)
        key, sub = mx.random.split(key)
        return mx.random.categorical(logprobs * inv_temp, key=sub)

    return sample
