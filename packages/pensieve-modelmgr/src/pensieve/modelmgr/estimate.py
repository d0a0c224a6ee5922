"""How much memory a model will take, worked out before loading it.

    total = weights + kv_cache + overhead
    weights  = the tensors' bytes once loaded (file headers; GGUF types MLX expands count as F16),
               the draft model's too when one is loaded beside it (model.draft)
    kv_cache = 2 (K and V) x layers x kv_heads x head_dim x bytes_per_element
               x context_length x max_concurrent_requests (for the model and for its draft,
               whose cache each sequence keeps)
    overhead = 64 MiB + prefill_step_size x (vocab + 2 x intermediate + 4 x hidden) x bytes
               + performance.prefix_cache_mb
               (one prefill chunk's logits and activations, the engine's prompt-prefix cache,
               and MLX's own buffers)

The KV term is the worst case: every sequence of a full batch at the full context. Loading a
model that only fits in the average case is how a Mac ends up swapping, so the estimate is kept
pessimistic and the window is what gives: when the user has not set `model.context_length`, a
model whose full window does not fit is served with the largest window that does (logged), and
refused only if not even a small window fits.
"""

from __future__ import annotations

from dataclasses import dataclass

from pensieve.modelmgr.facts import ModelFacts
from pensieve.utils import ModelLoadError

_BASE_OVERHEAD = 64 * 1024**2
MIN_CONTEXT = 2048
"""Below this a chat model is of little use; refuse rather than shrink further."""
_CONTEXT_STEP = 256


def gib(value: int) -> str:
    return f"{value / 1024**3:.2f} GiB"


@dataclass(frozen=True, slots=True)
class MemoryEstimate:
    weights: int
    kv_cache: int
    overhead: int
    context_length: int
    concurrency: int

    @property
    def total(self) -> int:
        return self.weights + self.kv_cache + self.overhead

    def describe(self) -> str:
        return (
            f"{gib(self.total)} = {gib(self.weights)} weights + {gib(self.kv_cache)} KV cache "
            f"({self.context_length} tokens x {self.concurrency} sequences) + "
            f"{gib(self.overhead)} overhead"
        )

    def as_dict(self) -> dict[str, int]:
        return {
            "total_bytes": self.total,
            "weight_bytes": self.weights,
            "kv_cache_bytes": self.kv_cache,
            "overhead_bytes": self.overhead,
            "context_length": self.context_length,
            "concurrency": self.concurrency,
        }


def _kv_bytes_per_token(facts: ModelFacts, draft: ModelFacts | None) -> int:
    return facts.kv_bytes_per_token + (draft.kv_bytes_per_token if draft else 0)


def estimate_memory(
    facts: ModelFacts,
    *,
    context_length: int,
    concurrency: int,
    prefill_step: int,
    prefix_cache_bytes: int = 0,
    draft: ModelFacts | None = None,
) -> MemoryEstimate:
    vocab = facts.text_config("vocab_size", 0)
    hidden = facts.text_config("hidden_size", 0)
    intermediate = facts.text_config("intermediate_size", 0) or 4 * hidden
    activations = prefill_step * (vocab + 2 * intermediate + 4 * hidden) * facts.activation_bytes
    overhead = _BASE_OVERHEAD + activations + prefix_cache_bytes
    return MemoryEstimate(
        weights=facts.weight_bytes + (draft.weight_bytes if draft else 0),
        kv_cache=_kv_bytes_per_token(facts, draft) * context_length * concurrency,
        overhead=overhead,
        context_length=context_length,
        concurrency=concurrency,
    )


def plan_memory(
    facts: ModelFacts,
    *,
    name: str,
    budget: int,
    concurrency: int,
    prefill_step: int,
    configured_context: int | None,
    prefix_cache_bytes: int = 0,
    draft: ModelFacts | None = None,
) -> MemoryEstimate:
    """The estimate the model will load with, or ModelLoadError if it cannot fit the budget.

    A configured context is honoured as given (capped at the model's own window); otherwise
    the window shrinks to what fits, in steps of 256 tokens, down to MIN_CONTEXT.
    """
    wanted = min(facts.context_length, configured_context or facts.context_length)

    def at(context: int) -> MemoryEstimate:
        return estimate_memory(
            facts,
            context_length=context,
            concurrency=concurrency,
            prefill_step=prefill_step,
            prefix_cache_bytes=prefix_cache_bytes,
            draft=draft,
        )

    estimate = at(wanted)
    if estimate.total <= budget:
        return estimate
    fixed = at(0).total
    per_token = _kv_bytes_per_token(facts, draft) * concurrency
    fits = (budget - fixed) // per_token if per_token and budget > fixed else 0
    fits -= fits % _CONTEXT_STEP
    smallest = min(MIN_CONTEXT, wanted)
    if configured_context is None and fits >= smallest:
        return at(int(fits))
    advice = (
        f"set model.context_length to {fits} or less, or lower performance.max_concurrent_requests"
        if fits >= smallest
        else "use a smaller or more quantized model (pensieve models convert <model> --bits 4)"
    )
    raise ModelLoadError(
        f"model '{name}' needs an estimated {estimate.describe()}, more than the memory budget of "
        f"{gib(budget)} (model.memory_budget_fraction / model.memory_budget_gb). Refusing to load "
        f"it rather than let the machine swap: {advice}, or raise the budget"
    )
