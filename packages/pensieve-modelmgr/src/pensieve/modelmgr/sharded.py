"""One model over the ranks of a group: each rank's share, its load, and the plan they agree on.

Tensor parallel (`distributed.parallel = "tensor"`, mlx-lm's `Model.shard`): every layer's
attention heads and MLP columns are split over the ranks, so each rank holds 1/N of those
weights and 1/N of the KV cache (its share of the KV heads); embeddings, norms and the output
head stay whole on every rank, and each layer ends in an all-reduce. Pipeline parallel
(`"pipeline"`, mlx-lm's `model.model.pipeline`): each rank holds a run of layers, their weights
and their KV cache, and the hidden state travels from rank to rank. MLX folders load through
mlx-lm's own `sharded_load`; a GGUF file is loaded whole and then split the same way.

Every rank plans its memory for its own share on its own machine's budget (`estimate.py`);
the ranks then agree on one KV arithmetic, because the scheduler they all run in lockstep
(`engine/lockstep.py`) must admit and evict exactly alike: the smallest window, the smallest
KV pool, one quantization width, and the per-token cost of the heaviest rank. Each step of that
agreement is a collective under the group's load deadline; a rank that cannot take its share
says why in its own log and the others refuse the model naming it.
"""

from __future__ import annotations

import importlib
import time
from dataclasses import replace
from typing import Any

import mlx.core as mx
import numpy as np
from mlx.utils import tree_flatten

from pensieve.engine import KVCost, quantized_factor
from pensieve.engine.group import Group, join
from pensieve.modelmgr.catalog import plan_for
from pensieve.modelmgr.estimate import MemoryPlan
from pensieve.modelmgr.facts import ModelFacts, context_length_of, layer_kinds
from pensieve.modelmgr.loader import LoadedModel, check_source
from pensieve.modelmgr.sources import ModelSource
from pensieve.utils import ModelLoadError, PensieveError, Settings
from pensieve.utils.logging import logger
from pensieve.utils.settings import DistributedSettings

SAME_EVERYWHERE = (
    "performance.max_concurrent_requests",
    "performance.prefill_step_size",
    "performance.prefix_cache_mb",
    "performance.prefix_cache_entries",
)
"""Settings the scheduler decides by: every rank runs it on its own settings, so they must agree."""
_KIND_NAMES = {"full": "full_attention", "sliding": "sliding_attention", "state": "linear_attention"}
"""A layer kind written back as a `layer_types` entry that `facts.layer_kinds` reads as the same kind."""


def pipeline_split(layers: int, size: int) -> list[int]:
    """Layers per rank as mlx-lm's `PipelineMixin.pipeline` splits them (the low ranks get the extra)."""
    base, extra = divmod(layers, size)
    return [base + (1 if r < extra else 0) for r in range(size)]


def supports(facts: ModelFacts, parallel: str) -> bool:
    """Whether mlx-lm's class for this architecture can be split this way."""
    module = importlib.import_module(f"mlx_lm.models.{facts.config.get('model_type')}")
    model = getattr(module, "Model", None)
    if parallel == "tensor":
        return hasattr(model, "shard")
    inner = [getattr(module, name) for name in dir(module) if name.endswith("Model") and name != "Model"]
    return any(hasattr(cls, "pipeline") for cls in inner)


def rank_facts(facts: ModelFacts, parallel: str, size: int, rank: int) -> ModelFacts:
    """The facts of rank `rank`'s share, for its memory plan; ModelLoadError if it cannot be split."""
    name = facts.config.get("model_type")
    if not supports(facts, parallel):
        other = "pipeline" if parallel == "tensor" else "tensor"
        hint = f'set distributed.parallel = "{other}"' if supports(facts, other) else "serve it on one machine"
        raise ModelLoadError(f"mlx-lm cannot split a {name} model for {parallel} parallelism; {hint}")
    if parallel == "tensor":
        heads = facts.text_config("num_attention_heads", 1)
        kv_heads = facts.text_config("num_key_value_heads") or heads
        if heads % size or kv_heads % size:
            raise ModelLoadError(
                f"its {heads} attention heads and {kv_heads} KV heads do not split evenly over {size} ranks; "
                f'use a group of a size that divides them, or distributed.parallel = "pipeline"'
            )
        config = _with(facts.config, head_dim=facts.head_dim, num_attention_heads=heads // size,
                       num_key_value_heads=kv_heads // size)  # fmt: skip
        weights = facts.weight_bytes // size
    else:
        layers = facts.text_config("num_hidden_layers", 0)
        split = pipeline_split(layers, size)
        start = sum(split[rank + 1 :])  # rank 0 runs the last layers (mlx-lm's order)
        kinds = layer_kinds(facts)[start : start + split[rank]]
        config = _with(facts.config, num_hidden_layers=split[rank], layer_types=[_KIND_NAMES[k] for k in kinds])
        weights = facts.weight_bytes * split[rank] // max(1, layers)
    return replace(facts, config=config, weight_bytes=weights)


def _with(config: dict[str, Any], **values: Any) -> dict[str, Any]:
    """A copy of `config` with `values` set where `ModelFacts.text_config` reads them."""
    out = dict(config)
    text = out.get("text_config")
    nested = dict(text) if isinstance(text, dict) else None
    for key, value in values.items():
        if nested is not None and key not in out:
            nested[key] = value
        else:
            out[key] = value
    if nested is not None:
        out["text_config"] = nested
    return out


class Sharding:
    """How this process holds its share of the group's one model."""

    def __init__(self, group: Group) -> None:
        self.group = group
        self._costs: list[KVCost] = []

    @classmethod
    def join(cls, settings: DistributedSettings) -> Sharding | None:
        """This process's share of a group `mlx.launch` started; None when it was started alone."""
        group = join(settings.backend, parallel=settings.parallel, timeout_s=settings.timeout_s,
                     load_timeout_s=settings.load_timeout_s)  # fmt: skip
        return cls(group) if group is not None else None

    @property
    def parallel(self) -> str:
        return self.group.parallel

    def plan(self, source: ModelSource, settings: Settings) -> tuple[ModelFacts, MemoryPlan]:
        """This rank's facts and plan, once every rank has one (a collective).

        The KV cache's width is agreed first: where "auto" quantizes on one rank (its window
        would not fit otherwise), every rank quantizes alike.
        """
        group = self.group
        problem: PensieveError | None = None
        facts: ModelFacts | None = None
        plan: MemoryPlan | None = None
        try:
            whole = check_source(source)
            facts = rank_facts(whole, self.parallel, group.size, group.rank)
            shares = [rank_facts(whole, self.parallel, group.size, r) for r in range(group.size)]
            plan = plan_for(facts, settings, name=source.name)
        except PensieveError as exc:
            problem = exc
        bits = int(self._agree(problem, source, [0 if plan is None else plan.kv_bits or 16]).min())
        assert facts is not None and plan is not None  # _agree raised otherwise
        if (plan.kv_bits or 16) != bits:
            try:
                plan = plan_for(facts, settings, name=source.name, bits=None if bits == 16 else bits)
            except PensieveError as exc:
                problem = exc
            self._agree(problem, source, [])
        self._check_alike(source, settings, plan)
        self._costs = [share.kv_cost.scaled(quantized_factor(plan.kv_bits, share.activation_bytes)) for share in shares]
        return facts, plan

    def _check_alike(self, source: ModelSource, settings: Settings, plan: MemoryPlan) -> None:
        """ModelLoadError on every rank if a setting the scheduler decides by differs between ranks
        (the prefill passes' sizes among them: a pass is a collective, its shape must match)."""
        values = {key: settings.get(key) for key in SAME_EVERYWHERE}
        values["the cap on a prefill pass's attention scores (the backend)"] = plan.attention_scores_bytes
        gathered = self._agree(None, source, [-1 if v is None else round(float(v) * 1000) for v in values.values()])
        for column, key in zip(gathered.T, values, strict=True):
            if (column != column[0]).any():
                other = int(np.flatnonzero(column != column[0])[0])
                raise ModelLoadError(
                    f"{key} differs between rank 0 and rank {other} ({self.group.ranks[other].host}); the ranks "
                    "schedule in step only with the same value: set it alike on every machine"
                )

    def _agree(self, problem: PensieveError | None, source: ModelSource, values: list[int]) -> np.ndarray:
        """Every rank's `values`, or ModelLoadError on every rank if any rank had a problem."""
        with self.group.guard(f"planning {source.name} with the other ranks", self.group.load_timeout_s):
            gathered = self.group.gather([0 if problem is not None else 1, *values])
        if problem is not None:
            raise ModelLoadError(f"could not load model '{source.name}' on rank {self.group.rank}: {problem.message}")
        failed = [r for r in range(self.group.size) if not gathered[r, 0]]
        if failed:
            where = ", ".join(f"rank {r} ({self.group.ranks[r].host})" for r in failed)
            raise ModelLoadError(f"could not load model '{source.name}': {where} cannot take its share; its log says why")
        return gathered[:, 1:]

    def load(self, source: ModelSource) -> LoadedModel:
        """Load this rank's share (every rank at once: the loaders end in a collective)."""
        start = time.perf_counter()
        group = self.group
        with group.guard(f"loading this rank's share of {source.name}", group.load_timeout_s):
            try:
                model, tokenizer, config = self._load_share(source)
            except (RuntimeError, ValueError, FileNotFoundError) as exc:
                raise ModelLoadError(
                    f"could not load model '{source.name}' over the group: {exc}. If another rank failed, its log says why"
                ) from exc
        weight_bytes = sum(v.nbytes for _, v in tree_flatten(model.parameters()))
        seconds = time.perf_counter() - start
        logger.info("rank {}: loaded its {} parallel share of {} ({:.1f} MB) in {:.2f}s",
                    group.rank, self.parallel, source.name, weight_bytes / 1e6, seconds)  # fmt: skip
        return LoadedModel(source, model, tokenizer, config, context_length_of(config), seconds, weight_bytes,
                           layout=f"{self.parallel} parallel, 1 of {group.size} shares")  # fmt: skip

    def _load_share(self, source: ModelSource) -> tuple[Any, Any, dict[str, Any]]:
        """The model, lazily loaded whole, cut to this rank's share, then materialized: only the
        share's weights are read. mlx-lm's `sharded_load` does the same, but ends in a barrier
        on the CPU stream, which NCCL cannot run from any thread but the one that joined the
        group (MLX's GPU streams are per thread); the group's own collective can."""
        group = self.group.mx_group
        if source.kind in ("embedded", "gguf"):
            from pensieve.modelmgr.gguf import load_gguf

            model, tokenizer, config = load_gguf(source.path)
        else:
            from mlx_lm.utils import load_model, load_tokenizer

            model, config = load_model(source.path, lazy=True, strict=False)
            tokenizer = load_tokenizer(source.path, {"trust_remote_code": True}, eos_token_ids=config.get("eos_token_id"))
        if self.parallel == "tensor":  # `plan` checked that the architecture splits this way
            model.shard(group)
        else:
            model.model.pipeline(group)
        mx.eval(model.parameters())
        self.group.all_sum(np.zeros(1, dtype=np.int64))  # every rank holds its share
        return model, tokenizer, config

    def agree(self, plan: MemoryPlan) -> MemoryPlan:
        """The plan every rank admits by: the smallest window and KV pool, the heaviest rank's cost.

        The budget becomes this rank's own fixed bytes plus the common pool, so the pool's
        arithmetic (`kv_pool`, the engine's KV capacity) gives the same figure on every rank.
        """
        group = self.group
        with group.guard("agreeing on the memory plan", group.load_timeout_s):
            figures = group.gather([plan.context_length, plan.kv_pool, plan.budget, plan.weights])
        for rank, (_, pool, budget, weights) in enumerate(figures.tolist()):
            group.record(rank, kv_pool_bytes=pool, budget_bytes=budget, weight_bytes=weights)
        context = int(figures[:, 0].min())
        pool = int(figures[:, 1].min())
        cost = max(self._costs, key=lambda c: c.bytes(context)) if self._costs else plan.kv_cost
        agreed = replace(plan, context_length=context, kv_cost=cost, budget=plan.fixed + pool)
        logger.info("rank {}: the group's plan: {}", group.rank, agreed.describe())
        return agreed

