"""The messages between a model's compute thread and the request reading its tokens.

Two kinds travel on a request's queue and they never share a field: what the compute thread
produced for the sequence (`Admitted` once, `TokenOut`s, then one `SequenceEnd` with its
`FinishReason`), and
control signals put there by the request's own event loop (`Signal`: a keep-alive tick, or
"the client is gone"). Keeping them apart is what lets a reader tell "the model stopped" from
"nobody is listening" without comparing strings.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from enum import Enum, StrEnum


class FinishReason(StrEnum):
    """Why the compute thread ended a sequence."""

    STOP = "stop"
    """The model produced an end-of-sequence token (not part of the answer)."""
    LENGTH = "length"
    """The token budget ran out: `max_tokens` or the rest of the context window."""
    CANCELLED = "cancelled"
    """Dropped before it finished: cancelled by its request, or the engine closed."""
    ERROR = "error"
    """A forward pass failed for this sequence alone (see `SequenceEnd.error`)."""


@dataclass(frozen=True, slots=True)
class Admitted:
    """The sequence has its KV cache: `cached` prompt tokens came from the prefix cache (either
    tier), the rest will be prefilled. Sent before any token, so a stream can open with the split."""

    cached: int


@dataclass(frozen=True, slots=True)
class TokenOut:
    """One generated token; more follow."""

    token: int


@dataclass(frozen=True, slots=True)
class SequenceEnd:
    """The sequence's last message."""

    reason: FinishReason
    token: int | None = None
    """A last token that belongs to the answer (a `LENGTH` end's final token), else None."""
    error: BaseException | None = None


Output = Admitted | TokenOut | SequenceEnd
"""What the compute thread sends a sequence's reader."""

Sink = Callable[[Output], None]
"""Called on the request's event loop with each output of its sequence."""


class Signal(Enum):
    """Control put on a request's queue by its own event loop, never by the compute thread."""

    NUDGE = "nudge"
    """Yield a keep-alive tick: the stream has been quiet for a while."""
    INTERRUPT = "interrupt"
    """Stop reading and cancel the sequence: the client went away."""


Message = Output | Signal
"""Everything a request's queue can hold."""
