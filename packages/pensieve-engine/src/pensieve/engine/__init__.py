"""One loaded model at work: prompt rendering, batching, sampling, streaming, parsing."""

from pensieve.engine.engine import Engine, EngineConfig, Generation
from pensieve.engine.prompt import RenderedPrompt, render_prompt
from pensieve.engine.proposers import DraftModel
from pensieve.engine.speculate import SpeculationConfig

__all__ = ["DraftModel", "Engine", "EngineConfig", "Generation", "RenderedPrompt", "SpeculationConfig", "render_prompt"]
