"""Where speculative tokens come from: prompt lookup over a sequence's own tokens, a draft model."""

from __future__ import annotations

import copy
from pathlib import Path

import mlx.core as mx
import mlx.nn as nn
from mlx_lm import load
from mlx_lm.models.cache import make_prompt_cache

from pensieve.engine.proposers import DraftModel, DraftProposer, PromptLookup


def proposal(lookup: PromptLookup, history: list[int], limit: int = 8) -> list[int] | None:
    drafts = lookup.propose(history, limit)
    return None if drafts is None else drafts.tolist()


def test_lookup_proposes_what_followed_the_longest_match() -> None:
    lookup = PromptLookup(1, 4)
    # "5 6 7" occurs twice; the latest occurrence of the longest suffix (2 5 6 7) wins over
    # the later occurrence of the shorter one (5 6 7 -> 40).
    history = [1, 2, 5, 6, 7, 8, 9, 10, 3, 5, 6, 7, 40, 41, 2, 5, 6, 7]
    assert proposal(lookup, history) == [8, 9, 10, 3, 5, 6, 7, 40]
    assert proposal(lookup, history, 3) == [8, 9, 10]


def test_lookup_needs_min_n_matching_tokens() -> None:
    history = [1, 2, 3, 9, 3]
    assert proposal(PromptLookup(1, 4), history) == [9, 3]
    assert proposal(PromptLookup(2, 4), history) is None  # (9, 3) never occurred before
    assert proposal(PromptLookup(2, 4), [1, 2]) is None


def test_lookup_prefers_an_occurrence_followed_by_enough_tokens() -> None:
    """In a loop the latest occurrence is followed by one period only; an earlier one by more."""
    history = [7, 1, 2, 1, 2, 1, 2]
    assert proposal(PromptLookup(2, 2), history, 4) == [1, 2, 1, 2]
    assert proposal(PromptLookup(2, 2), history, 8) == [1, 2, 1, 2]  # none longer: the latest


def test_lookup_follows_a_growing_history_and_starts_over_for_another() -> None:
    lookup = PromptLookup(2, 3)
    history = [4, 5, 6, 4]
    assert proposal(lookup, history) is None
    history.append(5)
    assert proposal(lookup, history) == [6, 4, 5]
    assert proposal(lookup, [9, 8, 9]) is None  # shorter: a different sequence
    assert proposal(lookup, list(range(3000)) + [10, 11]) == list(range(12, 20))


def test_draft_cache_holds_exactly_the_kept_tokens(tiny) -> None:
    """After each proposal and settle, the draft's cache equals a fresh prefill of the history."""
    model, _ = tiny
    draft = DraftProposer(DraftModel(model), prefill_step_size=16)
    history = list(range(100, 140))  # longer than a prefill step: catch-up is chunked
    for kept, extra in [(2, 7), (0, 5), (4, 1), (3, 3)]:
        drafts = draft.propose(history, 4).tolist()
        assert len(drafts) == 4
        draft.settle(kept)
        history += drafts[:kept] + [extra]  # the verified tokens, then the model's own
        fresh = make_prompt_cache(model)
        model(mx.array(history[: draft._held])[None], cache=fresh)
        for ours, theirs in zip(draft._cache, fresh, strict=True):
            assert ours.offset == theirs.offset == draft._held
            keys, fresh_keys = ours.state[0], theirs.state[0]
            assert mx.allclose(keys[..., : ours.offset, :], fresh_keys[..., : theirs.offset, :], atol=1e-4).item()
    # A failed step (the cache grew behind the proposer's back) is noticed and rebuilt.
    broken = copy.copy(draft)
    model(mx.array([1, 2])[None], cache=broken._cache)
    assert broken.propose(history, 2) is not None and broken._held == len(history)


def test_draft_never_proposes_ids_beyond_the_targets_vocabulary(tiny) -> None:
    model, _ = tiny
    draft = DraftProposer(DraftModel(model, vocab=300), prefill_step_size=512)
    drafts = draft.propose(list(range(50)), 6).tolist()
    assert len(drafts) == 6 and max(drafts) < 300


def test_a_quantized_draft_of_the_same_weights_mostly_agrees(tiny_model_dir: Path) -> None:
    """The benchmark's draft-model setup (random weights, the draft is them at fewer bits)
    gives a real acceptance rate: along the target's own greedy answer, the draft's greedy
    token is the target's at most positions."""
    target, _ = load(str(tiny_model_dir))
    small, _ = load(str(tiny_model_dir))
    nn.quantize(small, group_size=32, bits=4)
    history = list(range(200, 260))
    agree = 0
    for _ in range(20):
        token = int(mx.argmax(target(mx.array(history)[None])[0, -1]).item())
        drafted = DraftProposer(DraftModel(small), prefill_step_size=512).propose(history, 1).tolist()
        agree += drafted == [token]
        history.append(token)
    assert agree > 10  # 14 of 20 for this seed
