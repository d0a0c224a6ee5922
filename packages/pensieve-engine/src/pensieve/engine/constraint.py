"""Constrained decoding: compiled grammars, cached per schema, and one matcher per sequence.

llguidance (Rust, no torch) compiles a grammar and computes, for each step, the bitmask of the
tokens that keep the output inside it. The engine's part is small and lives here:
- `Grammars` turns the engine's tokenizer into llguidance's once, and keeps compiled grammars in
  an LRU keyed by the grammar text: Claude Code sends the same tools every turn, so a turn's
  matcher is a cheap copy of the one compiled for the first turn.
- `SequenceConstraint` is what the compute thread sees: `mask()` for the next token, `advance()`
  with the token chosen, `accepts_eos`. Its `apply()` builds the masked logits lazily (MLX), so
  on the solo path the mask is computed on the CPU while the device runs the forward pass it
  will be applied to (`solo.py`); in a batch, while the device runs the step before's sampling
  and the host builds the step (`batch_processor`).
Masks travel to the device packed (one bit per token, 32 to a word) and are unpacked there.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

import llguidance
import llguidance.numpy as llnp
import mlx.core as mx
import numpy as np

from pensieve.utils import InvalidRequestError
from pensieve.utils.logging import logger


def apply_bitmask(logits: mx.array, words: np.ndarray) -> mx.array:
    """`logits` (rows, vocab) with every token whose bit is clear in `words` (rows, words, or
    one row for all) set to -inf."""
    shifts = mx.arange(32, dtype=mx.uint32)  # made here: MLX arrays belong to their thread's stream
    packed = mx.array(np.atleast_2d(words).view(np.uint32))
    allowed = ((packed[:, :, None] >> shifts) & 1).reshape(packed.shape[0], -1)
    width = logits.shape[-1]
    if allowed.shape[-1] < width:  # the model's output layer is padded past the vocabulary
        allowed = mx.concatenate([allowed, mx.zeros((allowed.shape[0], width - allowed.shape[-1]), dtype=allowed.dtype)], axis=-1)
    return mx.where(allowed[:, :width].astype(mx.bool_), logits, -mx.inf)


class SequenceConstraint:
    """One sequence's position in its grammar; touched by the compute thread only.

    It never rolls its matcher back. llguidance cannot roll back `stop=` lexemes (the free text
    before a tool call is one), and with the `suffix=` ones that it can, a rollback followed by
    a mask made it panic (2026-11-30, the embedded model under `tool_choice` auto), poisoning
    state that every copy of the compiled grammar shares. Looking ahead uses a copy of the
    matcher; going back re-reads the kept tokens into a fresh one.
    """

    def __init__(self, matcher: llguidance.LLMatcher, free: np.ndarray, eos: int, grammar: str, *,
                 fresh: Callable[[], llguidance.LLMatcher], broken: Callable[[], None]) -> None:  # fmt: skip
        self._matcher = matcher
        self.grammar = grammar
        """The Lark text it follows (the other ranks of a group compile it too: lockstep.py)."""
        self._free = free
        """The mask of free text (every token but the special ones): no need to apply it."""
        self._words = np.empty((1, free.size), dtype=np.int32)
        self._eos = eos
        self._fresh = fresh
        """A new matcher at the grammar's start (for `rewind`)."""
        self._broken = broken
        """Called when the matcher fails: the compiled grammar it was copied from is dropped."""
        self._tokens: list[int] = []
        """The generated tokens the matcher has consumed (none after it stopped: only EOS follows)."""

    @property
    def consumed(self) -> int:
        return len(self._tokens)

    def mask(self) -> np.ndarray | None:
        """Packed mask of the tokens allowed next, or None when every token is (free text)."""
        return self._mask_of(self._matcher)

    def _mask_of(self, matcher: llguidance.LLMatcher) -> np.ndarray | None:
        llnp.fill_next_token_bitmask(matcher, self._words)
        if matcher.is_error():  # a bug, not the model's fault: only let the sequence end
            logger.error("grammar matcher failed: {}", matcher.get_error())
            self._broken()
            self._words[:] = 0
            self._words.view(np.uint32)[0, self._eos // 32] = 1 << (self._eos % 32)
        words = self._words[0]
        return None if np.array_equal(words, self._free) else words

    def admissible(self, drafts: list[int]) -> list[int]:
        """The longest prefix of proposed tokens that the grammar accepts from here."""
        return [] if self._matcher.is_stopped() else drafts[: self._matcher.validate_tokens(drafts)]

    def masks_along(self, drafts: list[int]) -> np.ndarray | None:
        """The masks of a verification pass over [last token, *drafts] (admissible drafts),
        one row per position, or None when every row is free text. Computed on a copy: the
        tokens the pass keeps are `advance`d afterwards."""
        ahead = self._matcher.deep_copy() if drafts else self._matcher
        rows: list[np.ndarray | None] = []
        for i in range(len(drafts) + 1):
            if i:
                ahead.consume_token(drafts[i - 1])
            words = self._mask_of(ahead)
            rows.append(None if words is None else words.copy())
        if all(row is None for row in rows):
            return None
        return np.stack([np.full_like(self._free, -1) if row is None else row for row in rows])

    def advance(self, token: int) -> None:
        if self._matcher.is_stopped():
            return
        if self._matcher.consume_token(token):
            self._tokens.append(token)
        else:
            logger.error("grammar matcher refused token {}: {}", token, self._matcher.get_error())

    def rewind(self, generated: int) -> None:
        """Back to `generated` tokens: a failed batched step may have advanced past the tokens
        the sequence kept, and it resumes from those."""
        if self.consumed > generated:
            kept, self._tokens = self._tokens[:generated], []
            self._matcher = self._fresh()
            for token in kept:
                self.advance(token)

    @property
    def accepts_eos(self) -> bool:
        return self._matcher.is_accepting()

    def apply(self, logits: mx.array) -> mx.array:
        words = self.mask()
        return logits if words is None else apply_bitmask(logits, words)

    def batch_processor(self) -> Callable[[mx.array, mx.array], mx.array]:
        """A logits processor for mlx-lm's `BatchGenerator` (one per insertion into a batch).

        `BatchGenerator` calls it while building a step, with the tokens so far (the last one
        being fed now, sampled by the step before) and that row's lazy logits; it queues the
        step after the processors. So the fed token is read first: that waits for the step
        before only. Queueing the pass first, as the solo path does, would serialize the loop
        here, because the token is read from mlx-lm's token buffer, whose update is queued at
        the read, behind the whole pass: the masks would wait for the pass, and the next pass
        for the host. The first call after an insertion feeds a token the constraint has already
        seen (a prompt token, or the last token of the solo path), so it does not advance.
        """
        fresh = True

        def process(tokens: mx.array, logits: mx.array) -> mx.array:
            nonlocal fresh
            if not fresh:
                self.advance(int(tokens[-1].item()))
            fresh = False
            return self.apply(logits)

        return process


class Grammars:
    """The engine's grammar compiler: llguidance's tokenizer, built once, and an LRU of grammars."""

    def __init__(self, tokenizer: Any, max_entries: int = 64) -> None:
        self._tokenizer = tokenizer
        self._max = max_entries
        self._compiled: OrderedDict[str, llguidance.LLMatcher] = OrderedDict()
        self._lltok: llguidance.LLTokenizer | None = None
        self._free: np.ndarray | None = None
        self._lock = threading.Lock()  # prompts are prepared on worker threads, several at once
        self.compiles = 0
        """Grammars compiled so far (the rest were served from the cache)."""

    def _llguidance_tokenizer(self) -> llguidance.LLTokenizer:
        if self._lltok is None:
            fast = getattr(self._tokenizer, "_tokenizer", self._tokenizer)  # mlx-lm's wrapper
            backend = fast.backend_tokenizer
            eos = sorted(self._tokenizer.eos_token_ids)
            self._lltok = llguidance.LLTokenizer(backend.to_str(), n_vocab=len(fast.get_vocab()), eos_token=eos)
            free = llguidance.LLMatcher(self._lltok, "start: /(.|\\n)*/", log_level=0)
            words = llnp.allocate_token_bitmask(1, self._lltok.vocab_size)
            llnp.fill_next_token_bitmask(free, words)
            self._free = words[0].copy()
        return self._lltok

    def constraint(self, lark: str) -> SequenceConstraint:
        """A fresh matcher for `lark` (compiled once, then copied); a 400 if it does not compile."""
        matcher = self._copy(lark)
        return SequenceConstraint(matcher, self._free, min(self._tokenizer.eos_token_ids), lark,  # type: ignore[arg-type]
                                  fresh=lambda: self._copy(lark), broken=lambda: self._forget(lark))  # fmt: skip

    def _copy(self, lark: str) -> llguidance.LLMatcher:
        with self._lock:
            lltok = self._llguidance_tokenizer()
            base = self._compiled.get(lark)
            if base is None:
                base = llguidance.LLMatcher(lltok, lark, log_level=0)
                if base.is_error():
                    raise InvalidRequestError(
                        f"the requested output structure cannot be enforced: {base.get_error().splitlines()[0]}. "
                        "Simplify the schema",
                    )
                self.compiles += 1
                self._compiled[lark] = base
                if len(self._compiled) > self._max:
                    self._compiled.popitem(last=False)
            else:
                self._compiled.move_to_end(lark)
            return base.deep_copy()

    def _forget(self, lark: str) -> None:
        """Drop a compiled grammar whose copy failed: the next request compiles it anew."""
        with self._lock:
            self._compiled.pop(lark, None)
