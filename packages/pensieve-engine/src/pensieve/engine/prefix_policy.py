"""Which prefix of a prompt outlasts its request: everything before the last user turn.

That is what the requests that follow share with this one. An agent's next request re-sends
the conversation with a tool result and the model's reply appended; a new session of the same
agent, or a subagent of the same kind, sends the same system prompt and tools before a
different first message. Tool results are not user turns, so while an agent works through its
tools the lasting prefix stays put and is kept once; it moves when the person types again.
(Claude Code's billing line, which changes with every request, was dropped before rendering:
`server/anthropic_in.py`.)

The boundary is found by rendering the conversation a second time with the last user turn's
text emptied and taking the tokens the two renderings share. Whatever the chat template does
around a user turn, that is a prefix of the real prompt by construction, so a cache of it is
the real prompt's cache.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from pensieve.engine.prefix_cache import shared_prefix
from pensieve.engine.prompt import RenderedPrompt, render_prompt
from pensieve.models import ChatRequest
from pensieve.utils import PensieveError


def lasting_prefix(
    tokenizer: Any,
    request: ChatRequest,
    rendered: RenderedPrompt,
    encode: Callable[[str], list[int]] | None = None,
) -> int:
    """How many leading tokens of `rendered` come before the request's last user turn (0: none)."""
    messages = list(request.messages)
    last = max((i for i, m in enumerate(messages) if m.role == "user"), default=None)
    if request.raw_prompt is not None or last is None:
        return 0
    messages[last] = messages[last].model_copy(update={"content": ""})
    try:
        blank = render_prompt(tokenizer, request.model_copy(update={"messages": messages}), encode)
    except PensieveError:  # a template that refuses an empty turn: keep nothing
        return 0
    return shared_prefix(np.asarray(rendered.tokens), np.asarray(blank.tokens))
