"""The memory plan for the models people run Claude Code with, on the Macs they have.

Real configs (no weights): the numbers are the ones `pensieve models list` would show for them
on a 16, 32, 64 and 128 GB Mac with the default budget (0.75 of RAM), unquantized KV, 5
concurrent requests, Metal's fused attention.
"""

from __future__ import annotations

from typing import Any

import pytest

from pensieve.modelmgr.estimate import plan_memory
from pensieve.modelmgr.facts import ModelFacts, layer_kinds
from pensieve.utils import ModelLoadError

GB = 1024**3
CLAUDE_CODE_WINDOW = 32768

CONFIGS: dict[str, tuple[dict[str, Any], float]] = {
    # name: (config.json essentials, 4-bit weight GB)
    "Qwen3-8B": ({"model_type": "qwen3", "hidden_size": 4096, "num_hidden_layers": 36, "num_attention_heads": 32,
                  "num_key_value_heads": 8, "head_dim": 128, "intermediate_size": 12288, "vocab_size": 151936,
                  "max_position_embeddings": 40960}, 4.6),
    "Qwen2.5-Coder-7B-Instruct": ({"model_type": "qwen2", "hidden_size": 3584, "num_hidden_layers": 28,
                                   "num_attention_heads": 28, "num_key_value_heads": 4, "intermediate_size": 18944,
                                   "vocab_size": 152064, "max_position_embeddings": 32768}, 4.3),
    "Qwen3-Coder-30B-A3B-Instruct": ({"model_type": "qwen3_moe", "hidden_size": 2048, "num_hidden_layers": 48,
                                      "num_attention_heads": 32, "num_key_value_heads": 4, "head_dim": 128,
                                      "intermediate_size": 6144, "moe_intermediate_size": 768, "num_experts": 128,
                                      "num_experts_per_tok": 8, "vocab_size": 151936,
                                      "max_position_embeddings": 262144}, 17.2),
    "Llama-3.1-8B-Instruct": ({"model_type": "llama", "hidden_size": 4096, "num_hidden_layers": 32,
                               "num_attention_heads": 32, "num_key_value_heads": 8, "intermediate_size": 14336,
                               "vocab_size": 128256, "max_position_embeddings": 131072}, 4.5),
    "gemma-3-12b-it": ({"model_type": "gemma3", "text_config": {
        "model_type": "gemma3_text", "hidden_size": 3840, "num_hidden_layers": 48, "num_attention_heads": 16,
        "num_key_value_heads": 8, "head_dim": 256, "intermediate_size": 15360, "vocab_size": 262208,
        "sliding_window": 1024, "sliding_window_pattern": 6, "max_position_embeddings": 131072}}, 6.9),
}  # fmt: skip
MACS_GB = (16, 32, 64, 128)


def facts_of(name: str) -> ModelFacts:
    config, weight_gb = CONFIGS[name]
    window = config.get("max_position_embeddings") or config["text_config"]["max_position_embeddings"]
    return ModelFacts(config=config, quantization="4-bit (group 64)", context_length=window,
                      disk_bytes=int(weight_gb * GB), weight_bytes=int(weight_gb * GB), activation_bytes=2)  # fmt: skip


def plan_on(name: str, mac_gb: int, kv_bits: int | None = None):
    return plan_memory(facts_of(name), name=name, budget=int(0.75 * mac_gb * GB), concurrency=5,
                       prefill_step=2048, configured_context=None, kv_bits=kv_bits)  # fmt: skip


@pytest.mark.parametrize("mac_gb", MACS_GB)
@pytest.mark.parametrize("name", list(CONFIGS))
def test_a_model_that_fits_beside_32k_tokens_of_kv_is_served_with_32k_or_more(name: str, mac_gb: int) -> None:
    facts = facts_of(name)
    wanted = min(CLAUDE_CODE_WINDOW, facts.context_length)
    budget = int(0.75 * mac_gb * GB)
    fits = facts.weight_bytes + facts.kv_cost.bytes(wanted) <= budget
    try:
        plan = plan_on(name, mac_gb)
    except ModelLoadError:
        assert not fits, f"{name} fits beside {wanted} tokens of KV on a {mac_gb} GB Mac but was refused"
        return
    if fits:
        assert plan.context_length >= wanted, f"{name} on {mac_gb} GB: {plan.describe()}"
    assert plan.reserved <= budget  # one full window beside the weights, never more than the budget
    assert plan.window_at(1) == plan.context_length and plan.window_at(5) <= plan.context_length


def test_the_models_of_the_issue_get_their_windows() -> None:
    """The cases that failed before the shared KV budget (worst case x 5 slots + a fixed prefix share)."""
    assert plan_on("Qwen3-8B", 16).context_length == 40960  # was 5,120
    assert plan_on("Qwen2.5-Coder-7B-Instruct", 16).context_length == 32768  # was 14,336
    assert plan_on("Qwen3-Coder-30B-A3B-Instruct", 32).context_length >= 32768  # was refused
    assert plan_on("Qwen3-Coder-30B-A3B-Instruct", 64).context_length == 262144  # was 39,424
    assert plan_on("Qwen3-Coder-30B-A3B-Instruct", 32, kv_bits=4).context_length > 2 * plan_on("Qwen3-Coder-30B-A3B-Instruct", 32).context_length


def test_sliding_window_layers_count_only_their_window() -> None:
    facts = facts_of("gemma-3-12b-it")
    kinds = layer_kinds(facts)
    assert kinds.count("full") == 8 and kinds.count("sliding") == 40  # every 6th layer is global
    per_layer = 2 * 8 * 256 * 2
    assert facts.kv_cost.bytes(32768) == 8 * per_layer * 32768 + 40 * per_layer * 1024
    # Counted as all-full, the 16 GB Mac would not get its 32k window; per layer type it does.
    assert plan_on("gemma-3-12b-it", 16).context_length >= 32768


def test_layer_types_of_hybrid_models() -> None:
    hybrid = ModelFacts(config={"model_type": "qwen3_next", "num_hidden_layers": 8, "full_attention_interval": 4,
                                "num_attention_heads": 16, "num_key_value_heads": 2, "head_dim": 256},
                        quantization="bf16", context_length=262144, disk_bytes=0, weight_bytes=0, activation_bytes=2)  # fmt: skip
    assert layer_kinds(hybrid) == ["state", "state", "state", "full"] * 2
    listed = ModelFacts(config={"model_type": "x", "num_hidden_layers": 3, "sliding_window": 512, "num_attention_heads": 4,
                                "hidden_size": 256, "layer_types": ["sliding_attention", "full_attention", "linear_attention"]},
                        quantization="bf16", context_length=8192, disk_bytes=0, weight_bytes=0, activation_bytes=2)  # fmt: skip
    assert layer_kinds(listed) == ["sliding", "full", "state"]
    per_layer = 2 * 4 * 64 * 2
    assert listed.kv_cost.bytes(4096) == per_layer * 4096 + per_layer * 512
