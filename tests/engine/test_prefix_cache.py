"""The prefix cache on real mlx-lm KV caches: which entry a prompt gets, and how much of it."""

from __future__ import annotations

import mlx.core as mx
from mlx_lm.models.cache import ArraysCache, KVCache

from pensieve.engine.prefix_cache import PrefixCache

LAYERS, HEADS, DIM = 2, 2, 8


def filled(tokens: list[int]) -> list[KVCache]:
    """A KV cache whose row i holds the value of token i, so trims and copies can be checked."""
    caches = []
    for _ in range(LAYERS):
        cache = KVCache()
        rows = mx.broadcast_to(mx.array(tokens, dtype=mx.float32)[None, None, :, None], (1, HEADS, len(tokens), DIM))
        cache.update_and_fetch(rows, rows)
        caches.append(cache)
    mx.eval([c.state for c in caches])
    return caches


def held(cache: list[KVCache]) -> list[int]:
    layer = cache[0]
    return [int(v) for v in layer.keys[0, 0, : layer.offset, 0].tolist()]


CONVERSATION = list(range(100, 200))


def test_a_follow_up_turn_gets_the_whole_earlier_sequence_and_feeds_only_the_new_tokens() -> None:
    prefix = PrefixCache(1 << 30)
    prefix.insert(CONVERSATION, filled(CONVERSATION))
    cache, rest = prefix.fetch([*CONVERSATION, 7, 8, 9])
    assert cache is not None and rest == [7, 8, 9]
    assert held(cache) == CONVERSATION


def test_a_prompt_that_leaves_an_entry_midway_gets_it_cut_back_to_the_shared_part() -> None:
    prefix = PrefixCache(1 << 30)
    prefix.insert(CONVERSATION, filled(CONVERSATION))
    prompt = [*CONVERSATION[:60], 1, 2, 3]
    cache, rest = prefix.fetch(prompt)
    assert cache is not None and rest == [1, 2, 3]
    assert held(cache) == CONVERSATION[:60]


def test_an_exact_repeat_leaves_the_last_token_to_feed_for_its_logits() -> None:
    prefix = PrefixCache(1 << 30)
    prefix.insert(CONVERSATION, filled(CONVERSATION))
    cache, rest = prefix.fetch(CONVERSATION)
    assert cache is not None and rest == CONVERSATION[-1:]
    assert held(cache) == CONVERSATION[:-1]


def test_the_longest_shared_prefix_wins_and_a_few_shared_template_tokens_are_not_reused() -> None:
    prefix = PrefixCache(1 << 30)
    header = [1, 2, 3, 4]
    a, b = [*header, *range(500, 600)], [*header, *range(700, 800)]
    prefix.insert(a, filled(a))
    prefix.insert(b, filled(b))
    cache, rest = prefix.fetch([*a[:80], 9])
    assert cache is not None and held(cache) == a[:80] and rest == [9]
    # A new conversation that shares only the chat template's first tokens starts clean.
    cache, rest = prefix.fetch([*header, *range(900, 1000)])
    assert cache is None and rest == [*header, *range(900, 1000)]


def test_writing_to_a_fetched_cache_leaves_the_entry_intact() -> None:
    prefix = PrefixCache(1 << 30)
    prefix.insert(CONVERSATION, filled(CONVERSATION))
    cache, _ = prefix.fetch([*CONVERSATION[:50], 5])
    assert cache is not None
    for layer in cache:
        rows = mx.full((1, HEADS, 60, DIM), -1.0)
        layer.update_and_fetch(rows, rows)
    mx.eval([c.state for c in cache])
    again, _ = prefix.fetch([*CONVERSATION, 5])
    assert again is not None and held(again) == CONVERSATION


def test_an_extended_sequence_replaces_its_prefix_and_bounds_evict_the_least_recently_used() -> None:
    one = sum(c.nbytes for c in filled(CONVERSATION))
    prefix = PrefixCache(max_bytes=3 * one, max_entries=8)
    prefix.insert(CONVERSATION[:50], filled(CONVERSATION[:50]))
    prefix.insert(CONVERSATION, filled(CONVERSATION))
    assert len(prefix) == 1  # the 50-token entry is covered by the 100-token one
    others = [[n, *range(1000 * n, 1000 * n + 99)] for n in (1, 2, 3)]
    for tokens in others:
        prefix.insert(tokens, filled(tokens))
    assert prefix.nbytes <= 3 * one and len(prefix) == 3
    assert prefix.fetch([*CONVERSATION, 1])[0] is None  # the oldest went first
    assert prefix.fetch([*others[0], 1])[0] is not None


def test_an_entry_bigger_than_the_whole_budget_is_not_kept() -> None:
    prefix = PrefixCache(max_bytes=16)
    prefix.insert(CONVERSATION, filled(CONVERSATION))
    assert len(prefix) == 0 and prefix.nbytes == 0


def test_a_cache_that_cannot_be_trimmed_is_reused_only_as_a_whole() -> None:
    state = ArraysCache(1)
    state[0] = mx.zeros((1, 4))
    prefix = PrefixCache(1 << 30)
    prefix.insert(CONVERSATION, [state])
    assert prefix.fetch([*CONVERSATION[:80], 1])[0] is None
    cache, rest = prefix.fetch([*CONVERSATION, 1])
    assert cache is not None and rest == [1]
