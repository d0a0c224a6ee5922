"""Tokenize a rendered prompt piece by piece between special tokens, remembering long pieces.

An agent session re-sends the whole conversation every turn (Claude Code: ~20k tokens, most of
it an unchanging system prompt and tool list). Tokenizers split added special tokens such as
`<|im_start|>` out before anything else, so the text between two of them is encoded on its
own; a piece seen before needs no work. Whether a tokenizer really behaves that way (a
SentencePiece one that adds a prefix space to every piece does not) is checked against its own
full encoding on the first prompts, and the encoder falls back to plain encoding if it differs.
"""

from __future__ import annotations

import re
import threading
from collections import OrderedDict
from typing import Any

MIN_CACHED_CHARS = 256
"""Shorter pieces are cheap to encode; caching them would only churn the cache."""
CHECKS = 4
"""Prompts compared against the tokenizer's own encoding before the piecewise one is trusted."""


class PieceEncoder:
    """`encode(text)` equal to `tokenizer.encode(text, add_special_tokens=False)`, faster on repeats."""

    def __init__(self, tokenizer: Any, max_pieces: int = 64) -> None:
        self._tokenizer = tokenizer
        vocab = tokenizer.get_vocab()
        specials = [t for t in getattr(tokenizer, "all_special_tokens", []) if t in vocab]
        added = getattr(tokenizer, "added_tokens_decoder", {}) or {}
        specials += [t.content for t in added.values() if getattr(t, "special", False) and t.content in vocab]
        self._ids = {t: vocab[t] for t in specials}
        pattern = "|".join(re.escape(t) for t in sorted(self._ids, key=len, reverse=True))
        self._split = re.compile(f"({pattern})") if pattern else None
        self._pieces: OrderedDict[str, list[int]] = OrderedDict()
        self._max_pieces = max_pieces
        self._checks_left = CHECKS
        self._lock = threading.Lock()  # prompts are rendered on worker threads, several at once

    def _full(self, text: str) -> list[int]:
        return list(self._tokenizer.encode(text, add_special_tokens=False))

    def _piece(self, text: str) -> list[int]:
        if len(text) < MIN_CACHED_CHARS:
            return self._full(text)
        with self._lock:
            ids = self._pieces.get(text)
            if ids is not None:
                self._pieces.move_to_end(text)
                return ids
        ids = self._full(text)
        with self._lock:
            self._pieces[text] = ids
            if len(self._pieces) > self._max_pieces:
                self._pieces.popitem(last=False)
        return ids

    def encode(self, text: str) -> list[int]:
        if self._split is None or self._checks_left < 0:
            return self._full(text)
        ids: list[int] = []
        for i, part in enumerate(self._split.split(text)):
            if i % 2:
                ids.append(self._ids[part])
            elif part:
                ids.extend(self._piece(part))
        if self._checks_left > 0:
            full = self._full(text)
            self._checks_left = self._checks_left - 1 if full == ids else -1
            return full
        return ids
