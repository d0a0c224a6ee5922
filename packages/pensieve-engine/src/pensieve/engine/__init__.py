"""One loaded model at work: prompt rendering, batching, sampling, streaming, parsing."""

from pensieve.engine.engine import Engine, EngineConfig, Generation
from pensieve.engine.kv_budget import KVCost, quantized_factor
from pensieve.engine.prompt import RenderedPrompt, render_prompt
from pensieve.engine.proposers import DraftModel
from pensieve.engine.speculate import SpeculationConfig

__all__ = [
    "DraftModel",
    "Engine",
    "EngineConfig",
    "Generation",
    "KVCost",
    "RenderedPrompt",
    "SpeculationConfig",
    "quantized_factor",
    "render_prompt",
]
