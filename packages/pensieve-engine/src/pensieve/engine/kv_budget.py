"""How much KV cache the engine's sequences hold, and whether one more fits.

On a Mac the KV cache, not compute, decides how much conversation a model can hold: Claude
Code's first request is ~21k tokens. The model manager plans one pool of bytes for it after the
weights and activations (modelmgr/estimate.py); live sequences and the prefix cache share it.
Nothing is reserved per slot: a request is admitted when the tokens it brings fit beside the
tokens the running sequences hold, sequences grow as they decode, and when growth would overrun
the pool the prefix cache gives memory back first and the newest sequence is preempted second
(the scheduler does both; this module only does the arithmetic, from the same layouts mlx-lm's
caches use, so what it predicts is what MLX allocates).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace

STEP = 256
"""mlx-lm's KV caches grow by this many tokens at a time."""

MAX_TOKENS = 1 << 24
HEADROOM_TOKENS = 256
"""Room a newcomer must leave each running sequence to grow before the next check."""


def padded(tokens: int) -> int:
    return -(-tokens // STEP) * STEP


@dataclass(frozen=True, slots=True)
class KVCost:
    """The bytes one sequence's cache holds at a given length, by layer type.

    Full-attention layers keep every token; sliding-window layers (Gemma's, Mistral's local
    layers) keep at most their window; state-space and linear-attention layers keep a state
    whose size does not depend on the length.
    """

    full: int
    """Bytes per token across the full-attention layers (keys and values)."""
    windowed: tuple[tuple[int, int], ...] = ()
    """(window in tokens, bytes per token) for each group of sliding-window layers."""
    fixed: int = 0
    """Bytes of length-independent state (recurrent layers)."""

    def bytes(self, tokens: int) -> int:
        length = padded(max(tokens, 1))
        return self.full * length + sum(per * min(length, padded(window)) for window, per in self.windowed) + self.fixed

    def longest(self, capacity: int) -> int:
        """The longest sequence (a multiple of STEP) whose cache fits in `capacity` bytes."""
        low, high = 0, MAX_TOKENS // STEP
        while low < high:
            mid = (low + high + 1) // 2
            low, high = (mid, high) if self.bytes(mid * STEP) <= capacity else (low, mid - 1)
        return low * STEP

    def plus(self, other: KVCost) -> KVCost:
        """Two caches per sequence (a model and its draft)."""
        return KVCost(self.full + other.full, self.windowed + other.windowed, self.fixed + other.fixed)

    def scaled(self, factor: float) -> KVCost:
        """The same layout with every full-attention element taking `factor` times the bytes
        (a quantized KV cache: packed values plus a scale and bias per group)."""
        return replace(self, full=int(self.full * factor))


def quantized_factor(bits: int | None, element_bytes: int, group_size: int = 64) -> float:
    """Bytes of a quantized KV element over bytes of a plain one (mlx-lm's QuantizedKVCache)."""
    if bits is None:
        return 1.0
    return (bits / 8 + 2 * element_bytes / group_size) / element_bytes


@dataclass(frozen=True, slots=True)
class Occupancy:
    """The lengths of what is running: a lone sequence, a batch, a newcomer being prefilled."""

    solo: int | None = None
    batch: tuple[int, ...] = ()
    filling: int | None = None


class KVBudget:
    """The engine's share of KV memory, and the arithmetic of who fits in it.

    `capacity` may change while the engine runs (the pool gives it more room when another
    model unloads, less when one loads); the scheduler reads it at every step.
    """

    def __init__(self, cost: KVCost, capacity: int) -> None:
        self.cost = cost
        self.capacity = capacity

    def batch_bytes(self, lengths: Sequence[int]) -> int:
        """A batch cache pads every row to the longest (mlx-lm's BatchKVCache, left padding)."""
        return len(lengths) * self.cost.bytes(max(lengths)) if lengths else 0

    def held(self, occupancy: Occupancy, grow: int = 0) -> int:
        """Bytes the running sequences hold, each `grow` tokens longer."""
        total = self.batch_bytes([n + grow for n in occupancy.batch])
        if occupancy.solo is not None:
            total += self.cost.bytes(occupancy.solo + grow)
        if occupancy.filling is not None:
            total += self.cost.bytes(occupancy.filling)
        return total

    def admits(self, occupancy: Occupancy, tokens: int) -> bool:
        """Whether a newcomer of `tokens` prompt tokens may start now.

        It is prefilled alone and then joins the batch, so both its own cache and the batch it
        will make (every row padded to the longest, each with room to grow) must fit. The prefix
        cache is not counted: it gives its memory back before a live sequence goes short.
        """
        if occupancy.solo is None and not occupancy.batch and occupancy.filling is None:
            return True  # alone: the plan guarantees one full window fits
        if occupancy.filling is not None:
            return False  # one prefill at a time
        rows = [*occupancy.batch, *([occupancy.solo] if occupancy.solo is not None else []), tokens]
        joined = self.batch_bytes([n + HEADROOM_TOKENS for n in rows])
        return joined + self.cost.bytes(tokens) <= self.capacity

    def overrun(self, occupancy: Occupancy, held_elsewhere: int = 0) -> int:
        """Bytes by which the next step would exceed the capacity (0 if it fits)."""
        return max(0, self.held(occupancy, grow=1) + held_elsewhere - self.capacity)
