"""Pydantic v2 wire types (Anthropic, OpenAI) and the neutral internal types the engine speaks."""

from pensieve.models.internal import (
    ChatMessage,
    ChatRequest,
    Finished,
    GenerationEvent,
    GenerationFailed,
    SamplingParams,
    TextDelta,
    ThinkingDelta,
    ToolCall,
    ToolCallEvent,
    ToolSpec,
    Usage,
)

__all__ = [
    "ChatMessage",
    "ChatRequest",
    "Finished",
    "GenerationEvent",
    "GenerationFailed",
    "SamplingParams",
    "TextDelta",
    "ThinkingDelta",
    "ToolCall",
    "ToolCallEvent",
    "ToolSpec",
    "Usage",
]
