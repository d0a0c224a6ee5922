"""The real Claude Code CLI against Pensieve, in print mode.

Claude Code's first request is ~75 KB: ~21k tokens of system prompt and two dozen tools. A
one-layer variant of the tiny random-weight model (32k context) serves it; the embedded 8k model
must refuse it with the `prompt is too long` error that Claude Code understands. What the server
received is recorded by a test-only middleware placed in front of the app's own.

Why one layer: MLX evaluates lazily, so a prefill computes attention over the whole prompt only
for the layers whose output a later layer needs. With one layer, the 21k prompt is embedded and
written to the KV cache in well under a second; the two-layer tiny model needs 18-35 s on a
2-core CPU (with or without a preloaded OpenBLAS), for each of the three runs.

Random weights say nothing useful, so the output is steered through the engine's public
`sampler_for` hook: for the plain answer, the model's own greedy choice among word tokens for
a few tokens, then end-of-sequence; for the tool round trip, the exact tokens of a tool call, then of a final
answer. Every forward pass, the parsing, the SSE encoding and Claude Code running the tool are
real. The binary comes from `make test` (`PENSIEVE_CLAUDE`: the newest native build) or `.cache/claude-code`.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jsonschema
import mlx.core as mx
import pytest
from aiohttp import web

from pensieve.modelmgr.synthetic import PRESETS, make_random_model
from pensieve.models import ChatRequest
from pensieve.server import create_app
from pensieve.server.keys import REQUEST_ID
from tests.e2e.test_anthropic_sdk import forced_output
from tests.support import API_KEY, ServerThread, make_settings

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parents[2]
GREEDY_TOKENS = 12


class RecordingServer(ServerThread):
    """The real app, with a first middleware that records each exchange."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.exchanges: list[dict[str, Any]] = []

    @web.middleware
    async def _record(self, request: web.Request, handler: Any) -> web.StreamResponse:
        raw = await request.read()
        response = await handler(request)
        body = response.body if isinstance(response, web.Response) else None  # SSE: not kept
        self.exchanges.append(
            {
                "request_id": request.get(REQUEST_ID),
                "method": request.method,
                "path": request.path_qs,
                "request": json.loads(raw) if raw else None,
                "status": response.status,
                "response": json.loads(body) if isinstance(body, bytes) and body.startswith(b"{") else None,
            }
        )
        return response

    async def _start(self) -> None:
        app = create_app(self.settings, self.pool)
        app.middlewares.insert(0, self._record)
        self._runner = web.AppRunner(app, shutdown_timeout=5)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", self.port).start()
        await self.pool.engine(None)

    def posts(self) -> list[dict[str, Any]]:
        return [e for e in self.exchanges if e["method"] == "POST" and e["path"].startswith("/v1/messages")]


@pytest.fixture(scope="module")
def claude() -> Path:
    installed = sorted((REPO / ".cache/claude-code/node_modules/@anthropic-ai").glob("claude-code-*/claude"))
    path = Path(os.environ.get("PENSIEVE_CLAUDE") or (installed[0] if installed else ".cache/claude-code"))
    if not path.is_file():
        pytest.fail(f"Claude Code is not installed at {path}: run `make test`, which fetches its native build "
                    "(`npm install --prefix .cache/claude-code @anthropic-ai/claude-code-linux-x64`)")  # fmt: skip
    return path


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One throwaway HOME and working folder for every run, so the prompts share a prefix."""
    return tmp_path_factory.mktemp("claude-code")


def run_claude(claude: Path, workdir: Path, base_url: str, prompt: str, *extra: str) -> subprocess.CompletedProcess[str]:
    home = workdir / "home"
    home.mkdir(exist_ok=True)
    env = {
        "PATH": os.environ["PATH"],
        "HOME": str(home),
        "ANTHROPIC_BASE_URL": base_url,
        "ANTHROPIC_API_KEY": API_KEY,
        "CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC": "1",
        "API_TIMEOUT_MS": "600000",  # as for real local models, whose ~21k-token prefill is slow
        "DISABLE_AUTOUPDATER": "1",
    }
    return subprocess.run(
        [str(claude), "-p", prompt, "--allowedTools", "Bash", *extra],
        cwd=workdir, env=env, capture_output=True, text=True, timeout=540,
    )  # fmt: skip


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RecordingServer]:
    """The tiny llama with one layer instead of two (see the module docstring)."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setitem(PRESETS, "tiny-llama-1layer", {**PRESETS["tiny-llama"], "num_hidden_layers": 1})
        model = make_random_model(tmp_path_factory.mktemp("models") / "tiny-llama-1layer", "tiny-llama-1layer", seed=0)
    with RecordingServer(make_settings(model, tmp_path_factory.mktemp("cc-tiny-home"))) as server:
        yield server


def greedy_words_then_stop(server: ServerThread, produced: dict[str, list[int]]) -> Any:
    """A sampler factory: the model's most likely *word* token, GREEDY_TOKENS times, then EOS.

    Only tokens that decode to an ASCII word (with or without a leading space) may be chosen,
    so the answer is visible text: a random model's unconstrained favourite may be a newline,
    which Claude Code would print as nothing at all. Each request's tokens are kept in
    `produced` under its request id.
    """
    tokenizer = server.call(server.pool.engine(None)).tokenizer
    eos = min(tokenizer.eos_token_ids)
    words = [tokenizer.decode([i]).strip() for i in range(len(tokenizer.get_vocab()))]
    mask = mx.array([0.0 if w.isascii() and w.isalpha() else -mx.inf for w in words])

    def sampler_for(request: ChatRequest) -> Any:
        tokens = produced.setdefault(request.request_id, [])

        def sample(logprobs: mx.array) -> mx.array:
            if len(tokens) >= GREEDY_TOKENS:
                return mx.array([eos], dtype=mx.uint32)
            token = mx.argmax(logprobs + mask[: logprobs.shape[-1]], axis=-1).astype(mx.uint32)
            tokens.append(int(token.item()))
            return token

        return sample

    return sampler_for


def main_request(posts: list[dict[str, Any]]) -> dict[str, Any]:
    """The agent's request (with its tools), not a small background call Claude Code may add."""
    (main,) = [p for p in posts if p["request"].get("tools")]
    return main


def test_print_mode_answers_with_the_models_text(claude: Path, workdir: Path, tiny: RecordingServer) -> None:
    engine = tiny.call(tiny.pool.engine(None))
    produced: dict[str, list[int]] = {}
    original, engine.sampler_for = engine.sampler_for, greedy_words_then_stop(tiny, produced)
    try:
        done = run_claude(claude, workdir, tiny.base_url, "Say hello.")
    finally:
        engine.sampler_for = original
    assert done.returncode == 0, done.stderr + done.stdout
    # Claude Code up to 2.1.197 (what npm installs on node 20) probes HEAD / before its first
    # request; 2.1.332 (the native build) does not. A probe, when sent, is answered 200.
    assert all(e["status"] == 200 for e in tiny.exchanges if (e["method"], e["path"]) == ("HEAD", "/"))
    posts = tiny.posts()
    assert all(p["status"] == 200 for p in posts)
    main = main_request(posts)
    sent = main["request"]
    assert main["path"] == "/v1/messages?beta=true" and sent["stream"] is True and len(sent["tools"]) > 10
    assert "Say hello." in json.dumps(sent["messages"])
    answer = engine.tokenizer.decode(produced[main["request_id"]]).strip()
    assert answer and done.stdout.strip() == answer


COMMAND = "echo pensieve-roundtrip | tr a-z A-Z"
TOOL_CALL = f'<tool_call>\n{{"name": "Bash", "arguments": {{"command": "{COMMAND}", "description": "Print a marker"}}}}\n</tool_call>'
FINAL = "Round trip complete."


def tool_script(request: ChatRequest) -> str:
    """Call Bash first; once a tool result is in the conversation, answer."""
    if any(m.role == "tool" for m in request.messages):
        return FINAL
    return TOOL_CALL if request.tools else "ok"


def test_tool_round_trip_through_claude_code(claude: Path, workdir: Path, tiny: RecordingServer) -> None:
    before = len(tiny.posts())
    with forced_output(tiny, tool_script) as seen:
        done = run_claude(claude, workdir, tiny.base_url, "Print the marker with Bash, then say you are done.")
    assert done.returncode == 0, done.stderr + done.stdout
    assert done.stdout.strip() == FINAL
    posts = tiny.posts()[before:]
    assert [p["status"] for p in posts] == [200] * len(posts)
    with_results = [p for p in posts if "tool_result" in json.dumps(p["request"]["messages"])]
    assert len(with_results) == 1 and len(posts) >= 2
    follow_up = with_results[0]["request"]["messages"]
    calls = [b for m in follow_up if m["role"] == "assistant" and isinstance(m["content"], list) for b in m["content"] if b["type"] == "tool_use"]
    assert [(c["name"], c["input"]["command"]) for c in calls] == [("Bash", COMMAND)]
    assert calls[0]["id"].startswith("toolu_")
    results = [b for m in follow_up if m["role"] == "user" and isinstance(m["content"], list) for b in m["content"] if b["type"] == "tool_result"]
    assert [r["tool_use_id"] for r in results] == [calls[0]["id"]]
    output = results[0]["content"] if isinstance(results[0]["content"], str) else " ".join(b.get("text", "") for b in results[0]["content"])
    assert "PENSIEVE-ROUNDTRIP" in output and not results[0].get("is_error")  # the command really ran
    (understood,) = [r for r in seen if r.request_id == with_results[0]["request_id"]]
    tool_turns = [m for m in understood.messages if m.role == "tool"]
    assert tool_turns and tool_turns[-1].tool_call_id == calls[0]["id"] and "PENSIEVE-ROUNDTRIP" in tool_turns[-1].content


NAME_SCHEMA = {"type": "object", "properties": {"name": {"type": "string", "minLength": 1, "maxLength": 12}}, "required": ["name"], "additionalProperties": False}
CALL_START = '<tool_call>\n{"name": "StructuredOutput", "arguments": {"name": "'


def start_then_grammar(server: ServerThread, produced: dict[str, list[int]]) -> Any:
    """A sampler factory: the first request writes CALL_START's tokens, then the model's own
    most likely token among those the grammar allows, then EOS once the call is closed; the
    follow-up (with the tool result) ends at once. The random model picks the string's
    characters; the grammar alone closes the string, the object and the call."""
    tokenizer = server.call(server.pool.engine(None)).tokenizer
    eos = min(tokenizer.eos_token_ids)

    def sampler_for(request: ChatRequest) -> Any:
        if any(m.role == "tool" for m in request.messages) or not request.tools:
            return lambda logprobs: mx.array([eos], dtype=mx.uint32)
        start = iter(tokenizer.encode(CALL_START, add_special_tokens=False))
        tokens = produced.setdefault(request.request_id, [])

        def sample(logprobs: mx.array) -> mx.array:
            token = next(start, None)
            if token is None and tokenizer.decode(tokens).endswith("</tool_call>"):
                token = eos  # the grammar would allow a second call; one is enough here
            chosen = mx.array([token], dtype=mx.uint32) if token is not None else mx.argmax(logprobs, axis=-1).astype(mx.uint32)
            tokens.append(int(chosen.item()))
            return chosen

        return sample

    return sampler_for


def test_a_constrained_tool_call_round_trips_through_claude_code(claude: Path, workdir: Path, tiny: RecordingServer) -> None:
    """`--json-schema` gives Claude Code a StructuredOutput tool; the call's arguments come from
    the random model inside the grammar, and still validate, parse and come back as Claude
    Code's structured result."""
    engine = tiny.call(tiny.pool.engine(None))
    produced: dict[str, list[int]] = {}
    before = len(tiny.posts())
    original, engine.sampler_for = engine.sampler_for, start_then_grammar(tiny, produced)
    try:
        done = run_claude(claude, workdir, tiny.base_url, "Name a colour.", "--json-schema", json.dumps(NAME_SCHEMA), "--output-format", "json")
    finally:
        engine.sampler_for = original
    assert done.returncode == 0, done.stderr + done.stdout
    posts = tiny.posts()[before:]
    assert [p["status"] for p in posts] == [200] * len(posts)
    main = main_request(posts[:1])
    assert "StructuredOutput" in [t["name"] for t in main["request"]["tools"]]
    eos = set(engine.tokenizer.eos_token_ids)
    written = engine.tokenizer.decode([t for t in produced[main["request_id"]] if t not in eos])
    assert written.startswith(CALL_START) and written.endswith("}}\n</tool_call>")  # closed by the grammar
    arguments = json.loads(written.removeprefix("<tool_call>\n").removesuffix("\n</tool_call>"))["arguments"]
    jsonschema.validate(arguments, NAME_SCHEMA)
    result = json.loads(done.stdout)  # Claude Code ran the tool: the call is its final answer
    assert result["structured_output"] == arguments and not result["is_error"]


@pytest.fixture(scope="module")
def embedded(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RecordingServer]:
    """The embedded SmolLM2-135M (8k context), in process so its answers can be recorded."""
    with RecordingServer(make_settings("smollm2-135m-instruct", tmp_path_factory.mktemp("cc-embedded-home"))) as server:
        yield server


def test_the_8k_model_answers_prompt_is_too_long(claude: Path, workdir: Path, embedded: RecordingServer) -> None:
    done = run_claude(claude, workdir, embedded.base_url, "Say hello.")
    post = main_request(embedded.posts())
    assert post["status"] == 400 and post["response"]["error"]["type"] == "invalid_request_error"
    match = re.fullmatch(r"prompt is too long: (\d+) tokens > 8192 maximum", post["response"]["error"]["message"])
    assert match and int(match[1]) > 12_000  # system prompt and tools: 12.9k tokens from 2.1.332, 21k from 2.1.197
    # Claude Code parsed the numbers out of the message, and says so instead of retrying.
    assert done.returncode != 0
    said = done.stdout + done.stderr
    assert "prompt is too long" in said.lower() and match[1] in said
