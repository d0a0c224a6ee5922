"""Split a model's streamed text into answer text, reasoning and tool calls.

Decoded text arrives a few characters at a time, so a stop sequence or a marker such as
`<tool_call>` can straddle two pieces. The parser holds back exactly the tail that could still
turn into one, which is why clients never see a partial stop sequence or a half-written
tool-call marker, and emits everything else at once.

Decisions:
- A tool call is emitted whole, when its end marker arrives (or at the end of generation for
  families such as Mistral's that have no end marker), never as text.
- A call whose text no parser understands is shown as the text the model wrote, markers
  included, rather than lost; it does not count as a tool call, so the turn ends `end_turn`.
- Stop sequences are matched in answer text only, not inside reasoning or a tool call's JSON
  (where a short stop string such as `}` would otherwise cut a call in half).
- Reasoning is hidden, not shown as text, unless the request asked for thinking.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from pensieve.engine.prompt import GENERIC_TOOL_END, GENERIC_TOOL_START, RenderedPrompt
from pensieve.models import ChatRequest, TextDelta, ThinkingDelta, ToolCall, ToolCallEvent

ToolParser = Callable[[str, Any], Any]


@dataclass(frozen=True, slots=True)
class Markers:
    """The model family's markers; None where the family has no such thing."""

    think_start: str | None = None
    think_end: str | None = None
    tool_start: str | None = None
    tool_end: str | None = None

    @classmethod
    def for_prompt(cls, tokenizer: Any, rendered: RenderedPrompt) -> Markers:
        """The markers the model will write for this prompt: its family's reasoning markers, and
        its own tool-call markers only where the template rendered the tools natively."""
        thinking = getattr(tokenizer, "has_thinking", False)
        think = (tokenizer.think_start, tokenizer.think_end) if thinking else (None, None)
        tools = (tokenizer.tool_call_start, tokenizer.tool_call_end) if rendered.template_tools else (GENERIC_TOOL_START, GENERIC_TOOL_END)
        return cls(think[0], think[1], tools[0], tools[1])

    def opens_thinking(self, rendered: RenderedPrompt) -> bool:
        """Whether the prompt ends inside an open reasoning block (templates that open `<think>`
        for the model), so the output starts as reasoning."""
        return self.think_start is not None and rendered.text.rstrip().endswith(self.think_start)


def _held_tail(text: str, needles: list[str]) -> int:
    """Length of the longest suffix of `text` that is a proper prefix of some needle."""
    best = 0
    for needle in needles:
        for n in range(min(len(needle) - 1, len(text)), best, -1):
            if text.endswith(needle[:n]):
                best = n
                break
    return best


def new_tool_call_id() -> str:
    return "toolu_" + uuid.uuid4().hex[:24]


def _parse_call(raw: str, parser: ToolParser | None, tools: Any) -> list[ToolCall]:
    """Parse one call's text; a family parser first, then the generic JSON format."""
    parsed: Any = None
    if parser is not None:
        try:
            parsed = parser(raw, tools)
        except Exception:  # family parsers raise on anything unexpected; fall back below
            parsed = None
    if parsed is None:
        try:
            parsed = json.loads(raw.strip())
        except json.JSONDecodeError:
            return []
    items = parsed if isinstance(parsed, list) else [parsed]
    calls = []
    for item in items:
        if not isinstance(item, dict):
            continue
        fn = item.get("function") if isinstance(item.get("function"), dict) else item
        name = fn.get("name")
        args = fn.get("arguments", fn.get("parameters", {}))
        if isinstance(args, str):
            try:
                args = json.loads(args) if args.strip() else {}
            except json.JSONDecodeError:
                args = {"_raw": args}
        if isinstance(name, str) and isinstance(args, dict):
            calls.append(ToolCall(id=new_tool_call_id(), name=name, arguments=args))
    return calls


class OutputParser:
    """Feed decoded text; get TextDelta / ThinkingDelta / ToolCallEvent back."""

    def __init__(
        self,
        *,
        stop: list[str] | None = None,
        markers: Markers = Markers(),
        parse_tools: bool = False,
        tool_parser: ToolParser | None = None,
        tools: Any = None,
        show_thinking: bool = False,
        start_in_thinking: bool = False,
    ) -> None:
        self._stop = [s for s in (stop or []) if s]
        self._m = markers
        # An empty end marker (Mistral's `[TOOL_CALLS]…`) means the call runs to the end of output.
        self._parse_tools = parse_tools and bool(markers.tool_start)
        self._tool_parser = tool_parser
        self._tools = tools
        self._show_thinking = show_thinking
        self._state = "thinking" if start_in_thinking and markers.think_end else "text"
        self._buf = ""
        self._strip_leading = False
        self.stop_sequence: str | None = None
        self.stopped = False
        self.tool_calls = 0

    @classmethod
    def for_prompt(cls, tokenizer: Any, rendered: RenderedPrompt, request: ChatRequest) -> OutputParser:
        """The parser for one request's output, with the markers and parser its prompt implies.

        A prompt that ends inside an open reasoning block (templates that open `<think>` for the
        model) starts in the thinking state.
        """
        markers = Markers.for_prompt(tokenizer, rendered)
        return cls(
            stop=request.stop,
            markers=markers,
            parse_tools=bool(request.tools) and request.tool_choice != "none",
            tool_parser=tokenizer.tool_parser if rendered.template_tools else None,
            tools=[t.model_dump() for t in request.tools],
            show_thinking=request.thinking,
            start_in_thinking=markers.opens_thinking(rendered),
        )

    def _needles(self) -> list[str]:
        if self._state == "thinking":
            return [self._m.think_end] if self._m.think_end else []
        if self._state == "tool":
            return [self._m.tool_end] if self._m.tool_end else []
        needles = list(self._stop)
        if self._m.think_start:
            needles.append(self._m.think_start)
        if self._parse_tools and self._m.tool_start:
            needles.append(self._m.tool_start)
        return needles

    def _emit(self, out: list, text: str) -> None:
        if self._strip_leading:
            text = text.lstrip()
            self._strip_leading = not text
        if not text:
            return
        if self._state == "thinking":
            if self._show_thinking:
                out.append(ThinkingDelta(text))
        else:
            out.append(TextDelta(text))

    def feed(self, text: str) -> list[Any]:
        out: list[Any] = []
        if self.stopped:
            return out
        self._buf += text
        while self._buf and not self.stopped:
            needles = self._needles()
            hits = [(self._buf.find(n), n) for n in needles if n and n in self._buf]
            if not hits:
                if self._state == "tool":
                    return out  # a tool call is emitted whole, never as text
                keep = _held_tail(self._buf, needles)
                if self._state == "text" and self._parse_tools:
                    # Whitespace before a tool call is dropped, so hold it until text follows.
                    ready = self._buf[: len(self._buf) - keep]
                    keep += len(ready) - len(ready.rstrip())
                ready, self._buf = self._buf[: len(self._buf) - keep], self._buf[len(self._buf) - keep :]
                self._emit(out, ready)
                return out
            pos, needle = min(hits)
            before, self._buf = self._buf[:pos], self._buf[pos + len(needle) :]
            self._on_marker(out, before, needle)
        return out

    def _on_marker(self, out: list, before: str, needle: str) -> None:
        if self._state == "tool":
            self._finish_call(out, before)
            self._state = "text"
            self._strip_leading = True
        elif self._state == "thinking":
            self._emit(out, before)
            self._state = "text"
            self._strip_leading = True
        elif needle in self._stop:
            self._emit(out, before)
            self.stop_sequence = needle
            self.stopped = True
        elif needle == self._m.think_start:
            self._emit(out, before)
            self._state = "thinking"
        else:
            self._emit(out, before.rstrip())
            self._state = "tool"

    def _finish_call(self, out: list, raw: str, *, closed: bool = True) -> None:
        calls = _parse_call(raw, self._tool_parser, self._tools)
        if not calls:  # unparseable: show what the model wrote rather than lose it
            self._state = "text"
            self._emit(out, f"{self._m.tool_start}{raw}{self._m.tool_end if closed else ''}")
            return
        for call in calls:
            out.append(ToolCallEvent(call))
        self.tool_calls += len(calls)

    def finish(self) -> list[Any]:
        """End of generation: flush what was held back; an unterminated tool call is parsed as is."""
        out: list[Any] = []
        if self.stopped:
            return out
        rest, self._buf = self._buf, ""
        if self._state == "tool":
            self._finish_call(out, rest, closed=False)
        else:
            self._emit(out, rest)
        return out
