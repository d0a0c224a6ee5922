"""aiohttp HTTP API: Anthropic Messages and OpenAI chat completions, auth, SSE."""

from pensieve.server.app import create_app, serve
from pensieve.server.protocols import EngineLike, ModelProvider

__all__ = ["EngineLike", "ModelProvider", "create_app", "serve"]
