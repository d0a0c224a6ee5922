"""Speculative sampling keeps the target's distribution: a chi-square test on the tiny model.

Each sample is three tokens decoded on the single-sequence path with a draft model (the
target's own weights at 4 bits) proposing at every step, so most tokens come out of a
verification pass, where drafts are accepted or rejected. The frequencies of the 8 possible
answers (top-k 2 at each position) are compared with the exact probabilities, computed from
the model's logits through the same `TokenSampler.distribution` that plain sampling uses.
The seeds are fixed, so the test is deterministic.
"""

from __future__ import annotations

import copy
from collections import Counter
from pathlib import Path

import mlx.core as mx
import mlx.nn as nn
from mlx_lm import load
from mlx_lm.models.cache import make_prompt_cache

from pensieve.engine.proposers import DraftModel
from pensieve.engine.sampling import TokenSampler
from pensieve.engine.solo import SoloSequence
from pensieve.engine.speculate import Speculation, SpeculationConfig
from pensieve.models import SamplingParams

SAMPLES = 400
PARAMS = SamplingParams(temperature=3.0, top_k=2)
"""Hot enough that every one of the 8 answers is likely (5.7% to 26%)."""
CHI2_CRITICAL_7_DOF = 24.322
"""The chi-square distribution's 99.9% quantile at 7 degrees of freedom (8 cells)."""


def exact_probabilities(model, prompt: list[int], length: int) -> dict[tuple[int, ...], float]:
    """Every answer of `length` tokens with its probability under the sampler's distribution."""
    sampler = TokenSampler(PARAMS, seed=0)
    answers: dict[tuple[int, ...], float] = {(): 1.0}
    for _ in range(length):
        grown = {}
        for answer, p in answers.items():
            logits = model(mx.array(prompt + list(answer))[None])[0, -1]
            dist = mx.exp(sampler.distribution(logits - mx.logsumexp(logits)))
            for token in mx.argsort(-dist)[:4].tolist():
                if dist[token].item() > 0:
                    grown[(*answer, token)] = p * dist[token].item()
        answers = grown
    return answers


def test_speculative_samples_follow_the_target_distribution(tiny_model_dir: Path) -> None:
    model, tokenizer = load(str(tiny_model_dir))
    small, _ = load(str(tiny_model_dir))
    nn.quantize(small, group_size=32, bits=4)
    mx.eval(small.parameters())
    draft = DraftModel(small)
    prompt = tokenizer.encode("The quick brown fox jumps over the lazy dog.")
    base = make_prompt_cache(model)
    model(mx.array(prompt[:-1])[None], cache=base)
    mx.eval([c.state for c in base])

    counts: Counter[tuple[int, ...]] = Counter()
    proposed = accepted = passes = 0
    for seed in range(SAMPLES):
        sampler = TokenSampler(PARAMS, seed=seed)
        spec = Speculation(SpeculationConfig(), stop_ids=frozenset(), sampler=sampler, draft=draft)
        solo = SoloSequence(model, list(prompt), copy.deepcopy(base), [prompt[-1]], sampler=sampler, budget=3,
                            prefill_chunk=lambda _: 512, speculation=spec)
        answer: list[int] = []
        while solo.budget > 0:
            answer += solo.advance() or []
        counts[tuple(answer)] += 1
        proposed, accepted, passes = proposed + spec.proposed, accepted + spec.accepted, passes + spec.passes

    expected = exact_probabilities(model, prompt, 3)
    assert len(expected) == 8 and abs(sum(expected.values()) - 1) < 1e-4
    assert set(counts) <= set(expected)  # a draft outside the top 2 is never accepted
    chi2 = sum((counts[a] - SAMPLES * p) ** 2 / (SAMPLES * p) for a, p in expected.items())
    assert chi2 < CHI2_CRITICAL_7_DOF, (chi2, counts, expected)
    # The rule was exercised both ways, and passes did yield several tokens.
    assert 0.2 * proposed < accepted < 0.95 * proposed
    assert passes < 2 * SAMPLES
