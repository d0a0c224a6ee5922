"""Pydantic v2 wire types (Anthropic, OpenAI) and the neutral internal types the engine speaks."""

from pensieve.models.internal import (
    ChatMessage,
    ChatRequest,
    Finished,
    GenerationEvent,
    GenerationFailed,
    ResponseFormat,
    SamplingParams,
    StopReason,
    TextDelta,
    ThinkingDelta,
    ToolCall,
    ToolCallEvent,
    ToolSpec,
    Usage,
)
from pensieve.models.status import EngineLoad, MemoryReport, ModelState, ModelStatus

__all__ = [
    "ChatMessage",
    "EngineLoad",
    "ChatRequest",
    "Finished",
    "GenerationEvent",
    "GenerationFailed",
    "MemoryReport",
    "ModelState",
    "ModelStatus",
    "ResponseFormat",
    "SamplingParams",
    "StopReason",
    "TextDelta",
    "ThinkingDelta",
    "ToolCall",
    "ToolCallEvent",
    "ToolSpec",
    "Usage",
]
