"""Header facts and the memory estimate, checked against what MLX actually allocates."""

from __future__ import annotations

import json
import re
import shutil
from dataclasses import replace
from pathlib import Path

import mlx.core as mx
import mlx_lm
import pytest
from mlx.utils import tree_flatten
from mlx_lm.models.cache import make_prompt_cache

from pensieve.modelmgr.estimate import MIN_CONTEXT, MemoryPlan, attention_scores_bytes, plan_memory
from pensieve.modelmgr.facts import ModelFacts, model_facts
from pensieve.modelmgr.gguf import read_gguf, read_gguf_header
from pensieve.modelmgr.sources import source_from_path
from pensieve.modelmgr.synthetic import make_random_model
from pensieve.utils import ModelLoadError
from tests.modelmgr.gguf_files import T, random_model, write_gguf


@pytest.mark.parametrize("weight_type", [T.F32, T.F16, T.Q8_0, T.Q4_0, T.Q4_1, T.BF16], ids=lambda t: t.name)
def test_gguf_header_predicts_loaded_bytes(tmp_path: Path, weight_type: T) -> None:
    model, config = random_model("qwen2", 49152)
    path = tmp_path / "m.gguf"
    write_gguf(path, model, config, "qwen2", weight_type)
    header = read_gguf_header(path)
    loaded, _ = read_gguf(path)
    assert header.memory_bytes == sum(v.nbytes for v in loaded.values())
    assert header.quantization == weight_type.name
    facts = model_facts(source_from_path(path))
    assert facts.context_length == 4096 and facts.config["model_type"] == "qwen2"
    assert facts.disk_bytes == path.stat().st_size


@pytest.mark.parametrize("bits", [None, 4])
def test_mlx_folder_facts_match_the_loaded_model(tmp_path: Path, bits: int | None) -> None:
    folder = make_random_model(tmp_path / "m", "tiny-llama", bits=bits, context_length=4096)
    facts = model_facts(source_from_path(folder))
    model, _ = mlx_lm.load(str(folder))
    assert facts.weight_bytes == sum(v.nbytes for _, v in tree_flatten(model.parameters()))
    assert facts.quantization == ("4-bit (group 64)" if bits else "f32")
    assert facts.context_length == 4096

    # The KV term: a real cache after 512 tokens holds exactly 512 tokens' worth.
    cache = make_prompt_cache(model)
    model(mx.zeros((1, 512), dtype=mx.int32), cache=cache)
    mx.eval([c.state for c in cache])
    assert sum(c.nbytes for c in cache) == facts.kv_cost.bytes(512) == 512 * facts.kv_cost.full


def test_model_types_are_looked_up_as_mlx_lm_does(tmp_path: Path, tiny_mlx: Path) -> None:
    """`mistral` is served by mlx-lm's llama module (its remapping table); unknown types are refused."""
    folder = tmp_path / "m"
    shutil.copytree(tiny_mlx, folder)
    config = json.loads((folder / "config.json").read_text())
    for model_type, known in [("mistral", True), ("llama", True), ("nosuch", False), ("..utils", False)]:
        (folder / "config.json").write_text(json.dumps({**config, "model_type": model_type}))
        if known:
            assert model_facts(source_from_path(folder)).config["model_type"] == model_type
        else:
            with pytest.raises(ModelLoadError, match=f"model_type '{re.escape(model_type)}' is not an architecture mlx-lm"):
                model_facts(source_from_path(folder))


@pytest.fixture(scope="module")
def facts(tiny_mlx: Path) -> ModelFacts:
    return model_facts(source_from_path(tiny_mlx))


def _plan(facts: ModelFacts, budget: int, **kwargs) -> MemoryPlan:
    return plan_memory(facts, name="m", budget=budget, concurrency=5, prefill_step=2048,
                       configured_context=kwargs.pop("configured_context", None), **kwargs)  # fmt: skip


def test_plan_offers_the_full_window_when_one_sequence_fits(facts: ModelFacts) -> None:
    """Nothing is reserved per slot: one full window beside the weights is enough."""
    one = _plan(facts, 2**40).fixed + facts.kv_cost.bytes(32768)
    plan = _plan(facts, one)
    assert plan.context_length == facts.context_length == 32768
    assert plan.reserved == plan.weights + plan.activations + plan.base + 32768 * facts.kv_cost.full <= plan.budget
    assert plan.window_at(5) < 32768 and plan.window_at(1) == 32768  # five at once each get less


def test_plan_shrinks_an_unconfigured_window_to_fit(facts: ModelFacts) -> None:
    budget = _plan(facts, 2**40).fixed + facts.kv_cost.bytes(4096) + 100
    plan = _plan(facts, budget)
    assert plan.context_length == 4096 and plan.reserved <= budget


def test_plan_refuses_a_configured_window_that_does_not_fit(facts: ModelFacts) -> None:
    budget = _plan(facts, 2**40).fixed + facts.kv_cost.bytes(4096)
    with pytest.raises(ModelLoadError, match=r"set model.context_length to 4096 or less, or performance.kv_cache_bits") as info:
        _plan(facts, budget, configured_context=16384)
    assert "more than the memory budget" in info.value.message and "swap" in info.value.message


def test_plan_refuses_a_model_too_big_for_the_budget(facts: ModelFacts) -> None:
    floor = _plan(facts, 2**40).fixed + facts.kv_cost.bytes(MIN_CONTEXT)
    with pytest.raises(ModelLoadError, match="smaller or more quantized model"):
        _plan(facts, floor - 1)


def test_a_quantized_kv_cache_grows_the_window(facts: ModelFacts) -> None:
    scores = _plan(facts, 2**40, fused_attention=False).activations - _plan(facts, 2**40).activations
    assert scores == attention_scores_bytes(2**40)  # unfused attention (or a quantized cache) plans for its scores
    budget = _plan(facts, 2**30, fused_attention=False).fixed + facts.kv_cost.bytes(4096) + 100  # the smallest cap
    windows = {bits: _plan(facts, budget, kv_bits=bits, fused_attention=False).context_length for bits in (None, 8, 4)}
    assert windows[None] == 4096 and windows[8] >= 2 * 4096 * 0.9 and windows[4] >= 2 * windows[8] * 0.9


def whole_groups(facts: ModelFacts) -> ModelFacts:
    """The tiny model with heads of 64 (its own 16 hold no whole quantization group)."""
    return replace(facts, config={**facts.config, "head_dim": 64})


def test_auto_kv_bits_quantizes_only_when_the_window_would_not_fit(facts: ModelFacts, tmp_path: Path) -> None:
    from pensieve.modelmgr.catalog import plan_for
    from tests.support import make_settings

    facts = whole_groups(facts)

    def planned(budget: int) -> MemoryPlan:
        return plan_for(facts, make_settings("m", tmp_path, model__memory_budget_gb=budget / 1024**3))

    roomy = planned(2**34)
    assert roomy.kv_bits is None and roomy.context_length == 32768
    tight = _plan(facts, 2**30, fused_attention=False).fixed + facts.kv_cost.bytes(16384)  # the smallest cap
    squeezed = planned(tight)
    assert squeezed.kv_bits == 8 and squeezed.context_length == 32768  # 8-bit gives the whole window back
    assert _plan(facts, tight, fused_attention=False).context_length == 16384


def test_a_kv_width_that_cannot_run_is_planned_unquantized(facts: ModelFacts, tmp_path: Path) -> None:
    """The engine keeps a cache whose head size holds no whole groups of 64 (or that this
    backend has no kernels for) unquantized, so the plan must not count on the smaller cache."""
    from pensieve.modelmgr.catalog import plan_for
    from tests.support import make_settings

    settings = make_settings("m", tmp_path, performance__kv_cache_bits=8)
    assert plan_for(whole_groups(facts), settings).kv_bits == 8
    assert facts.head_dim == 16 and plan_for(facts, settings).kv_bits is None
