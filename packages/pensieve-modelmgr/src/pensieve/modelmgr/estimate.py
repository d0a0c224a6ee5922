"""How much memory a model will take, and the window it can offer, worked out before loading.

    budget   = weights + activations + base + KV pool
    weights  = the tensors' bytes once loaded (file headers; GGUF types MLX expands count as F16),
               the draft model's too when one is loaded beside it (model.draft)
    activations = one prefill pass: hidden states and MLP activations of prefill_step tokens,
               the last pass's logits, and, where attention materializes its scores (no fused
               kernel: MLX's CPU and CUDA backends, and a quantized KV cache anywhere), those
               scores, kept under `attention_scores_bytes` by taking long prompts in smaller passes
    base     = 64 MiB of MLX's own buffers
    KV pool  = the rest, one pool shared by the sequences being decoded and the prefix cache

Nothing is reserved per slot. A request is offered the model's whole window (or
`model.context_length`) whenever one sequence of that length fits in the KV pool; how many run
at once is decided at run time by the tokens they hold (engine/kv_budget.py), so
`performance.max_concurrent_requests` is a cap, not a reservation. A model whose window does
not fit even alone is served with the largest that does (logged), unless the user set the
window, and refused only if not even MIN_CONTEXT tokens fit. A quantized KV cache
(`performance.kv_cache_bits`) makes each token's keys and values take about 8/16 or 4/16 of
the model's precision, and the window grows by that much.
"""

from __future__ import annotations

from dataclasses import dataclass

from pensieve.engine import KVCost, quantized_factor
from pensieve.modelmgr.facts import ModelFacts
from pensieve.utils import ModelLoadError

BASE_OVERHEAD = 64 * 1024**2
MIN_CONTEXT = 2048
"""Below this a chat model is of little use; refuse rather than shrink further."""
LAST_PASS_TOKENS = 512
"""The prompt's last pass computes logits for this many positions (engine/solo.py)."""
_CONTEXT_STEP = 256
MIN_SCORES_BYTES = 256 * 1024**2
MAX_SCORES_BYTES = 2 * 1024**3


def attention_scores_bytes(budget: int) -> int:
    """Where attention is unfused, a prefill pass's scores stay under this: a twelfth of the budget,
    between 256 MiB and 2 GiB. Smaller passes over a long cache are slower (each pass reads the
    whole cache and the weights): on an H200, a 21k-token prompt of a 30B MoE model with an 8-bit
    KV cache took 71 s in 64-token passes (a 256 MiB cap) against 32 s for mlx_lm.server."""
    return min(MAX_SCORES_BYTES, max(MIN_SCORES_BYTES, budget // 12))


def gib(value: int) -> str:
    return f"{value / 1024**3:.2f} GiB"


@dataclass(frozen=True, slots=True)
class MemoryPlan:
    """A model's share of the memory budget, decided before it loads."""

    budget: int
    weights: int
    activations: int
    base: int
    kv_cost: KVCost
    """Bytes of one sequence's KV cache by length (quantized if `kv_bits`)."""
    context_length: int
    """The window each request is offered."""
    concurrency: int
    kv_bits: int | None
    attention_scores_bytes: int | None
    """The cap on one prefill pass's attention scores; None where attention is fused."""
    activation_element_bytes: int = 2

    @property
    def fixed(self) -> int:
        return self.weights + self.activations + self.base

    @property
    def kv_pool(self) -> int:
        """Bytes left for KV caches, live and cached, when this model has the budget to itself."""
        return max(0, self.budget - self.fixed)

    @property
    def reserved(self) -> int:
        """What the model holds of the budget: weights, activations, and one full window of KV."""
        return self.fixed + self.kv_cost.bytes(self.context_length)

    def window_at(self, sequences: int) -> int:
        """The longest window `sequences` concurrent sequences could each have (KV pool / n)."""
        return min(self.context_length, self.kv_cost.longest(self.kv_pool // max(1, sequences)))

    def describe(self) -> str:
        bits = f"{self.kv_bits}-bit" if self.kv_bits else "unquantized"
        return (
            f"{gib(self.budget)} budget = {gib(self.weights)} weights + {gib(self.activations)} activations + "
            f"{gib(self.base)} MLX buffers + {gib(self.kv_pool)} for KV caches ({bits}: a {self.context_length}-token "
            f"window for one conversation, {self.window_at(self.concurrency)} tokens each for "
            f"{self.concurrency} at once)"
        )

    def as_dict(self) -> dict[str, int | None]:
        return {
            "budget_bytes": self.budget,
            "weight_bytes": self.weights,
            "activation_bytes": self.activations,
            "kv_pool_bytes": self.kv_pool,
            "reserved_bytes": self.reserved,
            "context_length": self.context_length,
            "context_length_at_concurrency": self.window_at(self.concurrency),
            "concurrency": self.concurrency,
            "kv_cache_bits": self.kv_bits,
        }


def activation_bytes(facts: ModelFacts, prefill_step: int, scores_cap: int | None) -> int:
    """Peak transient memory of one prefill pass (see the module docstring)."""
    vocab = facts.text_config("vocab_size", 0)
    hidden = facts.text_config("hidden_size", 0)
    experts = facts.text_config("num_experts_per_tok") or 0
    moe = facts.text_config("moe_intermediate_size") or 0
    intermediate = moe * experts if moe and experts else facts.text_config("intermediate_size", 0) or 4 * hidden
    hidden_states = prefill_step * (2 * intermediate + 4 * hidden) * facts.activation_bytes
    logits = LAST_PASS_TOKENS * vocab * facts.activation_bytes  # the last pass's logits, all positions
    return hidden_states + logits + (scores_cap or 0)


def plan_memory(
    facts: ModelFacts,
    *,
    name: str,
    budget: int,
    concurrency: int,
    prefill_step: int,
    configured_context: int | None,
    kv_bits: int | None = None,
    fused_attention: bool = True,
    draft: ModelFacts | None = None,
) -> MemoryPlan:
    """The plan the model will load with, or ModelLoadError if it cannot fit the budget.

    `fused_attention`: the backend computes attention without materializing the scores (Metal,
    unquantized KV); otherwise long prompts are prefilled in passes whose scores stay under a cap.
    """
    wanted = min(facts.context_length, configured_context or facts.context_length)
    cost = facts.kv_cost.scaled(quantized_factor(kv_bits, facts.activation_bytes))
    if draft is not None:  # each sequence keeps the draft's cache too
        cost = cost.plus(draft.kv_cost)
    scores = None if fused_attention and kv_bits is None else attention_scores_bytes(budget)

    def at(context: int) -> MemoryPlan:
        return MemoryPlan(
            budget=budget,
            weights=facts.weight_bytes + (draft.weight_bytes if draft is not None else 0),
            activations=activation_bytes(facts, prefill_step, scores),
            base=BASE_OVERHEAD,
            kv_cost=cost,
            context_length=context,
            concurrency=concurrency,
            kv_bits=kv_bits,
            attention_scores_bytes=scores,
            activation_element_bytes=facts.activation_bytes,
        )

    plan = at(wanted)
    if plan.reserved <= budget:
        return plan
    fits = cost.longest(plan.kv_pool)
    fits -= fits % _CONTEXT_STEP
    smallest = min(MIN_CONTEXT, wanted)
    if configured_context is None and fits >= smallest:
        return at(fits)
    advice = (
        f"set model.context_length to {fits} or less, or performance.kv_cache_bits to 8 or 4"
        if fits >= smallest
        else "use a smaller or more quantized model (pensieve models convert <model> --bits 4)"
    )
    raise ModelLoadError(
        f"model '{name}' needs {gib(plan.reserved)} for its weights, activations and one {wanted}-token "
        f"window of KV cache, more than the memory budget of {gib(budget)} (model.memory_budget_fraction / "
        f"model.memory_budget_gb). Refusing to load it rather than let the machine swap: {advice}, or raise the budget"
    )
