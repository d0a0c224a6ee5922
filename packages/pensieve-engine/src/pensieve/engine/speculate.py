"""Speculative decoding for a lone sequence: propose several tokens, verify them in one pass.

A decode step of a lone sequence costs about the same for one token as for a few: on a GPU it
is bound by reading the weights and by per-step overhead, not by arithmetic. So candidate
tokens (`proposers.py`: the request's own earlier tokens, or a small draft model) are fed to
the model together with the last token, and every position whose candidate the model itself
would have produced is kept, plus the model's own token at the first position that differs.

Exact, not approximate. Every proposal is a point mass (a definite token). Greedy: a candidate
is kept when it is the model's argmax there. Sampling: each position is sampled from the
target's distribution (top-k, top-p, temperature: `TokenSampler.distribution`) with that
position's own noise, and the candidate is kept when the sample equals it. That is the
standard acceptance rule (Leviathan et al. 2023, Chen et al. 2023) for a point-mass draft q = δ_d:
accept d with probability min(1, p(d)/q(d)) = p(d), else draw from norm(max(0, p - q)), which
is p without d, exactly the law of a sample from p that is not d. And because a position's
noise depends only on the seed and the position, a seeded answer is the same token for token
with speculation or without. The draft model proposes its greedy token for this reason too,
and so that its probabilities never have to be carried to the verification.

Adaptive: `Controller` measures, per sequence, seconds per token of plain pipelined decoding
and of speculation (verification passes, plus the plain steps that could not be queued ahead
because a proposal was expected) and stops speculating for a while where it is the slower
of the two (free prose, high temperature, a CPU where a pass costs as much per token as one).
While it is off, the single-sequence path decodes exactly as without it.
"""

from __future__ import annotations

import statistics
import time
from collections import deque
from dataclasses import dataclass
from typing import Any, Literal

import mlx.core as mx
from mlx_lm.models.cache import can_trim_prompt_cache

from pensieve.engine.proposers import DraftModel, DraftProposer, PromptLookup, Proposer
from pensieve.engine.sampling import Sampler, TokenSampler


@dataclass(frozen=True, slots=True)
class SpeculationConfig:
    mode: Literal["auto", "off"] = "auto"
    ngram_min: int = 2
    """Shortest run of the sequence's last tokens looked up in its earlier tokens."""
    ngram_max: int = 4
    max_draft: int = 8
    """Most candidate tokens verified in one pass."""


class Controller:
    """Whether speculation pays for one sequence, from what it measures.

    It starts speculating at once (an answer may begin by copying). Plain decoding is timed on
    pipelined steps only (the next step queued before this token was read); speculation's time
    includes the unpipelined steps it causes. Every `JUDGE_STEPS` speculative steps the two
    rates are compared, after a few plain tokens to measure the plain rate if there is none
    yet; when speculation is slower it pauses for `backoff` plain tokens, doubling up to
    `MAX_PAUSE` while it keeps losing, so a later copy in the same answer (an Edit call after
    some prose) is still found.
    """

    CALIBRATE = 3
    """Plain tokens decoded to know what speculation has to beat (one unpipelined, two timed)."""
    JUDGE_STEPS = 4
    MIN_PAUSE = 16
    MAX_PAUSE = 256
    PLAIN_SAMPLES = 8
    """The plain rate is the median of this many recent steps: one slow step (the host was
    busy) must not make speculation look good for the rest of the answer."""

    def __init__(self, max_draft: int) -> None:
        self.max_draft = max_draft
        self.draft_limit = max(1, min(4, max_draft))
        """Tokens asked of a draft model (each costs it a pass): grows while all are accepted."""
        self._plain: deque[float] = deque(maxlen=self.PLAIN_SAMPLES)
        self.pause = 0
        self.backoff = self.MIN_PAUSE
        self._window_s = 0.0
        self._window_tokens = 0
        self._window_steps = 0

    @property
    def allows(self) -> bool:
        return self.pause <= 0

    @property
    def plain_s(self) -> float | None:
        """Seconds per token of pipelined plain decoding."""
        return statistics.median(self._plain) if self._plain else None

    def plain(self, seconds: float | None) -> None:
        self.pause -= 1
        if seconds is not None:
            self._plain.append(seconds)

    def speculative(self, seconds: float | None, tokens: int) -> None:
        if seconds is None:
            return
        self._window_s += seconds
        self._window_tokens += tokens
        self._window_steps += 1
        if self._window_steps < self.JUDGE_STEPS:
            return
        plain_s = self.plain_s
        if plain_s is None:
            self.pause = self.CALIBRATE  # the window is judged once the plain rate is known
            return
        if self._window_tokens / self._window_s < 1.0 / plain_s:
            self.pause, self.backoff = self.backoff, min(2 * self.backoff, self.MAX_PAUSE)
        else:
            self.backoff = self.MIN_PAUSE
        self._window_s, self._window_tokens, self._window_steps = 0.0, 0, 0

    def drafted(self, proposed: int, accepted: int) -> None:
        if accepted == proposed:
            self.draft_limit = min(self.draft_limit + 1, self.max_draft)
        elif 2 * accepted < proposed:
            self.draft_limit = max(1, self.draft_limit - 1)


def can_verify(cache: list[Any], width: int) -> bool:
    """Whether `width` tokens can be written to the cache and the rejected ones cut back.

    A sliding-window cache that would wrap around cannot be cut back (mlx-lm's RotatingKVCache
    is trimmable only before it is full), and some caches (recurrent state) never can.
    """
    if not can_trim_prompt_cache(cache):
        return False
    return all(c.offset + width <= c.max_size for c in cache if getattr(c, "max_size", None))


class Speculation:
    """One sequence's speculative decoding: its proposers, controller and figures.

    The single-sequence path (`solo.py`) asks `propose` for candidates when nothing is in
    flight, runs one pass over them, and hands the logits to `accept`; `wants_break` tells it
    not to queue the next plain step ahead when a proposal is expected. Created per request
    (`Engine.speculation_for`) and carried by its job, so the draft model's cache and the
    figures survive a stay in the batch.
    """

    def __init__(
        self,
        config: SpeculationConfig,
        *,
        stop_ids: frozenset[int],
        sampler: TokenSampler | None,
        draft: DraftModel | None = None,
        prefill_step_size: int = 2048,
    ) -> None:
        self.stop_ids = stop_ids
        self.sampler = sampler
        self._lookup = PromptLookup(config.ngram_min, config.ngram_max)
        self._draft = DraftProposer(draft, prefill_step_size) if draft is not None else None
        self.controller = Controller(config.max_draft)
        self._source: Proposer | None = None
        self._last: float | None = None
        self.proposed = self.accepted = self.verified = self.passes = self.tokens = 0
        """Drafts proposed and kept; verification passes; all decode passes and their tokens."""

    def wants_break(self, history: list[int]) -> bool:
        """Whether the next step should wait for this token: a proposal is likely to follow it."""
        if not self.controller.allows:
            return False
        return self._draft is not None or self._lookup.propose(history, 1) is not None

    def propose(self, history: list[int], budget: int, cache: list[Any]) -> mx.array | None:
        """Candidates to follow `history`, within the budget, or None for a plain step."""
        if not self.controller.allows:
            return None
        limit = min(self.controller.max_draft, budget - 1)
        if limit < 1 or not can_verify(cache, limit + 1):
            return None
        self._source = None
        drafts = self._lookup.propose(history, limit)
        if drafts is not None:
            self._source = self._lookup
        elif self._draft is not None:
            drafts = self._draft.propose(history, min(limit, self.controller.draft_limit))
            self._source = self._draft
        return drafts

    def accept(self, logits: mx.array, drafts: mx.array) -> list[int]:
        """The tokens the sequence gains from one verification pass over [last, *drafts].

        `logits` has one row per input position: row i judges draft i, and the row after the
        last kept draft gives the model's own next token. Stops after a stop token.
        """
        if self.sampler is None:
            choices = mx.argmax(logits, axis=-1)
        else:
            logprobs = logits - mx.logsumexp(logits, axis=-1, keepdims=True)
            choices = self.sampler.sample(logprobs, self.sampler.position)
        mx.eval(choices, drafts)
        chosen, proposed = choices.tolist(), drafts.tolist()
        n = 0
        while n < len(proposed) and chosen[n] == proposed[n]:
            n += 1
        tokens = proposed[:n] + [chosen[n]]
        for i, token in enumerate(tokens):
            if token in self.stop_ids:
                tokens = tokens[: i + 1]
                break
        kept = min(n, len(tokens))
        if self.sampler is not None:
            self.sampler.position += len(tokens)
        if self._source is not None:
            self._source.settle(kept)
            if self._source is self._draft:
                self.controller.drafted(len(proposed), n)
        self.proposed += len(proposed)
        self.accepted += kept
        self.verified += 1
        self._delivered(len(tokens), speculative=True)
        return tokens

    def delivered(self, *, pipelined: bool, prompt: bool = False) -> None:
        """A plain step produced one token; `pipelined` if it was queued before the last was
        read. The token of a prompt's pass is no decode pass: it only starts the clock."""
        if prompt:
            self._last = time.perf_counter()
            return
        speculative = not pipelined and self.controller.allows
        self._delivered(1, speculative=speculative, pipelined=pipelined)

    def _delivered(self, tokens: int, *, speculative: bool, pipelined: bool = False) -> None:
        now = time.perf_counter()
        seconds = None if self._last is None else now - self._last
        self._last = now
        self.passes += 1
        self.tokens += tokens
        if speculative:
            self.controller.speculative(seconds, tokens)
        else:
            self.controller.plain(seconds if pipelined else None)

    def figures(self) -> dict[str, float]:
        """For the request's phase breakdown and /metrics."""
        return {
            "speculation_proposed": float(self.proposed),
            "speculation_accepted": float(self.accepted),
            "speculation_acceptance": round(self.accepted / self.proposed, 4) if self.proposed else 0.0,
            "speculation_passes": float(self.verified),
            "decode_passes": float(self.passes),
            "decode_pass_tokens": float(self.tokens),
            "tokens_per_pass": round(self.tokens / self.passes, 4) if self.passes else 0.0,
        }

    def release(self) -> None:
        """Free the draft model's cache and the lookup's mirror (the sequence ended)."""
        self._lookup.release()
        if self._draft is not None:
            self._draft.release()


def speculation_for(
    config: SpeculationConfig,
    sampler: Sampler | None,
    *,
    stop_ids: frozenset[int],
    draft: DraftModel | None,
    prefill_step_size: int,
) -> Speculation | None:
    """A sequence's speculation, or None where it is off.

    Only greedy and `TokenSampler` sequences speculate: verification samples several positions
    at once, which needs a sampler that draws by position. A plain callable (a test forcing
    tokens) keeps one call per token. A grammar is no obstacle: it masks the verification's rows
    (`solo.py`).
    """
    if config.mode == "off" or not (sampler is None or isinstance(sampler, TokenSampler)):
        return None
    return Speculation(config, stop_ids=stop_ids, sampler=sampler, draft=draft, prefill_step_size=prefill_step_size)
