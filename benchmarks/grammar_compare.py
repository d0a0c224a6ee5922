"""Compare grammar engines on Claude Code's own tool schemas: compile time and mask time per token.

    .venv/bin/python benchmarks/grammar_compare.py [--tools tests/fixtures/claude_code_tools.json]

Candidates: llguidance, xgrammar and outlines-core, each if importable (only llguidance is a
dependency of Pensieve; install the others beside it to compare, e.g. `uv pip install --target
/tmp/g --no-deps xgrammar apache-tvm-ffi outlines-core` and `PYTHONPATH=/tmp/g`). xgrammar
imports torch at module level but fills masks into any DLPack array; where torch cannot be
imported (its CUDA wheel without the NVIDIA libraries) a stand-in module with the three names
xgrammar touches at import lets it run, with numpy masks.

The tokenizer is the embedded model's (SmolLM2, 49k tokens). For each of the tools: the cold
compile time of its `input_schema` (a fresh compiler, no cache), then a walk through the tokens
of a valid input (required fields, in schema order, the separators the grammar emits), timing
the mask computation before each token and the advance after it (the first mask apart: some
engines finish compiling lazily there). `any` is the union of all tools' call objects, what
`tool_choice: any` compiles. Schemas are first normalized as the engine does (a `propertyNames`
that every object satisfies is dropped). Figures are medians over the tools.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
import types
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from pensieve.engine.grammar import JSON_STYLE, checked_schema

REPO = Path(__file__).resolve().parents[1]

Walk = tuple[float, list[float]]
"""(compile seconds, mask+advance seconds per token)."""


def instance(schema: dict[str, Any]) -> Any:
    """A small valid value for a schema: required properties only, first enum/anyOf branch."""
    if "const" in schema:
        return schema["const"]
    if "enum" in schema:
        return schema["enum"][0]
    if "anyOf" in schema:
        return instance(schema["anyOf"][0])
    kind = schema.get("type", "object")
    if kind == "object":
        required = schema.get("required", [])
        return {k: instance(v) for k, v in schema.get("properties", {}).items() if k in required}
    if kind == "array":
        return [instance(schema.get("items", {"type": "string"}))] * max(1, schema.get("minItems", 1))
    if kind == "string":
        if schema.get("format") == "uri":
            return "https://example.com/docs"
        if "pattern" in schema:
            return "wf_abc123"
        return "list the files in this folder"
    if kind in ("number", "integer"):
        return max(1, schema.get("minimum", 1))
    if kind == "boolean":
        return True
    return None


def call_schema(tools: list[dict[str, Any]]) -> dict[str, Any]:
    """The `{"name": …, "arguments": …}` object of any one of the tools."""
    return {
        "anyOf": [
            {
                "type": "object",
                "properties": {"name": {"const": t["name"]}, "arguments": t["input_schema"]},
                "required": ["name", "arguments"],
                "additionalProperties": False,
            }
            for t in tools
        ]
    }


def dump(value: Any) -> str:
    return json.dumps(value, separators=(", ", ": "), ensure_ascii=False)


def load_tokenizer() -> Any:
    from pensieve.modelmgr.embedded import embedded_model_path
    from pensieve.modelmgr.gguf import read_gguf, tokenizer_wrapper_from_gguf

    return tokenizer_wrapper_from_gguf(read_gguf(embedded_model_path())[1])


# -- the engines ---------------------------------------------------------------------------


def llguidance_walker(tokenizer: Any) -> Callable[[dict[str, Any], list[int]], Walk]:
    import llguidance
    import llguidance.hf
    import llguidance.numpy as llnp

    lltok = llguidance.hf.from_tokenizer(tokenizer._tokenizer, eos_token=tokenizer.eos_token_id)

    def walk(schema: dict[str, Any], tokens: list[int]) -> Walk:
        start = time.perf_counter()
        grammar = llguidance.LLMatcher.grammar_from_json_schema(schema, overrides=JSON_STYLE)
        matcher = llguidance.LLMatcher(lltok, grammar)
        compiled = time.perf_counter() - start
        assert not matcher.is_error(), matcher.get_error()
        mask = llnp.allocate_token_bitmask(1, lltok.vocab_size)
        steps = []
        for token in tokens:
            tick = time.perf_counter()
            llnp.fill_next_token_bitmask(matcher, mask)
            ok = matcher.consume_token(token)
            steps.append(time.perf_counter() - tick)
            assert ok, matcher.get_error()
        return compiled, steps

    return walk


class _Absent(types.ModuleType):
    """Answers every attribute xgrammar reads from torch at import time with an inert object."""

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__"):
            raise AttributeError(name)
        if name[0].isupper():  # classes (torch.Tensor) are used in isinstance checks
            return type(name, (), {})
        return _Absent(f"{self.__name__}.{name}")

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self


def xgrammar_walker(tokenizer: Any) -> Callable[[dict[str, Any], list[int]], Walk]:
    try:
        import torch  # noqa: F401
    except Exception:  # the CUDA wheel without its libraries: a stand-in for import time only
        sys.modules["torch"] = _Absent("torch")
    import xgrammar

    info = xgrammar.TokenizerInfo.from_huggingface(tokenizer._tokenizer, vocab_size=len(tokenizer.get_vocab()))

    def walk(schema: dict[str, Any], tokens: list[int]) -> Walk:
        compiler = xgrammar.GrammarCompiler(info, cache_enabled=False)
        start = time.perf_counter()
        compiled = compiler.compile_json_schema(json.dumps(schema), any_whitespace=False, separators=(", ", ": "))
        matcher = xgrammar.GrammarMatcher(compiled)
        elapsed = time.perf_counter() - start
        mask = np.full(xgrammar.get_bitmask_shape(1, info.vocab_size), -1, dtype=np.int32)
        steps = []
        for token in tokens:
            tick = time.perf_counter()
            matcher.fill_next_token_bitmask(mask)
            ok = matcher.accept_token(token)
            steps.append(time.perf_counter() - tick)
            assert ok, f"xgrammar rejected token {token}"
        return elapsed, steps

    return walk


def outlines_walker(tokenizer: Any) -> Callable[[dict[str, Any], list[int]], Walk]:
    import outlines_core
    from outlines_core.json_schema import build_regex_from_schema

    eos = tokenizer.eos_token_id
    byte_of = _byte_level_decoder()
    by_bytes: dict[bytes, list[int]] = {}
    for text, i in tokenizer.get_vocab().items():
        if i != eos:
            by_bytes.setdefault(bytes(byte_of.get(c, 0) for c in text), []).append(i)
    vocabulary = outlines_core.Vocabulary(eos, by_bytes)

    def walk(schema: dict[str, Any], tokens: list[int]) -> Walk:
        start = time.perf_counter()
        regex = build_regex_from_schema(json.dumps(schema), whitespace_pattern=r"[ ]?")
        index = outlines_core.Index(regex, vocabulary)
        guide = outlines_core.Guide(index)
        elapsed = time.perf_counter() - start
        steps = []
        for token in tokens:
            tick = time.perf_counter()
            guide.get_tokens()
            guide.advance(token)
            steps.append(time.perf_counter() - tick)
        return elapsed, steps

    return walk


def _byte_level_decoder() -> dict[str, int]:
    """GPT-2's byte-level alphabet back to bytes (outlines-core takes token bytes; its own
    `from_pretrained` would fetch the tokenizer from the Hub)."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    chars, extra = list(printable), 0
    for b in range(256):
        if b not in printable:
            printable.append(b)
            chars.append(256 + extra)
            extra += 1
    return {chr(c): b for b, c in zip(printable, chars, strict=True)}


ENGINES = {"llguidance": llguidance_walker, "xgrammar": xgrammar_walker, "outlines-core": outlines_walker}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tools", type=Path, default=REPO / "tests/fixtures/claude_code_tools.json")
    parser.add_argument("--timeout", type=float, default=120.0, help="give up on an engine's schema after this long")
    args = parser.parse_args()
    tools = json.loads(args.tools.read_text())["tools"]
    tokenizer = load_tokenizer()
    cases = [(t["name"], checked_schema(t["input_schema"], t["name"], "tools", ""), instance(t["input_schema"])) for t in tools]
    union = call_schema([{**t, "input_schema": schema} for t, (_, schema, _) in zip(tools, cases, strict=True)])
    first = tools[1]
    cases.append(("any (union of calls)", union, {"name": first["name"], "arguments": instance(first["input_schema"])}))
    print(f"{len(tools)} tools; tokenizer vocabulary {len(tokenizer.get_vocab())}; Python {sys.version.split()[0]}")
    print("| engine | version | compile median (ms) | compile max (ms) | `any` compile (ms) | first mask median (us) | mask+advance per token median (us) | p99 (us) | failed |")
    print("|---|---|---|---|---|---|---|---|---|")
    for name, make in ENGINES.items():
        try:
            walk = make(tokenizer)
            version = _version(name)
        except Exception as exc:
            print(f"| {name} | - | not available: {type(exc).__name__}: {str(exc)[:80]} | | | | | | |")
            continue
        compiles, firsts, steps, failed = [], [], [], []
        union_ms = float("nan")
        for label, schema, value in cases:
            tokens = tokenizer.encode(dump(value), add_special_tokens=False)
            try:
                compiled, walked = walk(schema, tokens)
            except Exception as exc:
                failed.append(f"{label}: {type(exc).__name__}")
                continue
            if label.startswith("any"):
                union_ms = compiled * 1e3
            else:
                compiles.append(compiled * 1e3)
            firsts.append(walked[0] * 1e6)
            steps.extend(walked[1:])
        us = sorted(s * 1e6 for s in steps) or [float("nan")]
        print(
            f"| {name} | {version} | {statistics.median(compiles or [float('nan')]):.1f} | {max(compiles or [float('nan')]):.1f} "
            f"| {union_ms:.1f} | {statistics.median(firsts or [float('nan')]):.0f} | {statistics.median(us):.0f} | {us[int(len(us) * 0.99) - 1 if len(us) > 1 else 0]:.0f} "
            f"| {len(failed)}{': ' + '; '.join(failed) if failed else ''} |"
        )


def _version(dist: str) -> str:
    import importlib.metadata

    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return "?"


if __name__ == "__main__":
    main()
