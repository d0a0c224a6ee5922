"""Seeded JSON schemas for the structured-output tests: varied, real, and small enough to decode.

Every kind of constraint a client sends shows up (nested objects, enums, arrays, required and
optional fields, string formats, `anyOf`, number ranges and steps, patterns), with lengths bounded so the
embedded model on a 2-core CPU finishes each answer in a few dozen tokens.
"""

from __future__ import annotations

import random
from typing import Any

WORDS = ["city", "name", "size", "color", "count", "owner", "label", "level", "mode", "score", "note", "kind", "date", "mail", "code"]
FORMATS = ["date", "time", "email"]
"""Short ones: a uuid alone is 36 characters, a minute of decoding on a busy 2-core CPU."""
NUMBER_STEP = 0.25
"""JSON numbers have no length limit, and a 135M model left a free fraction sometimes writes
digits until max_tokens (`12.1234567…`; about one answer in twenty). A `multipleOf` bounds them
in the grammar; a quarter is exact in binary, so `jsonschema`'s float division checks it
without rounding error."""


def _leaf(rng: random.Random, depth: int) -> dict[str, Any]:
    kind = rng.choice(["string", "integer", "number", "boolean", "enum", "array", "format", "anyOf", "pattern", "object"])
    if kind == "object" and depth < 2:
        return random_object(rng, depth + 1, width=2)
    if kind == "string" or kind == "object":
        return {"type": "string", "minLength": 1, "maxLength": rng.randint(4, 10)}
    if kind == "integer":
        low = rng.randint(-50, 50)
        return {"type": "integer", "minimum": low, "maximum": low + rng.randint(1, 99)}
    if kind == "number":  # a step bounds the digits too, as maxLength bounds a string (see NUMBER_STEP)
        return {"type": "number", "minimum": 0, "maximum": 100, "multipleOf": NUMBER_STEP}
    if kind == "boolean":
        return {"type": "boolean"}
    if kind == "enum":
        return {"enum": rng.sample(["red", "green", "blue", "small", "large", "on", "off", "yes", "no"], rng.randint(2, 4))}
    if kind == "array":
        item = rng.choice([{"type": "string", "maxLength": 6}, {"type": "integer", "minimum": 0, "maximum": 99}])
        return {"type": "array", "items": item, "minItems": 1, "maxItems": rng.randint(1, 2)}
    if kind == "format":
        return {"type": "string", "format": rng.choice(FORMATS), "maxLength": 16}
    if kind == "pattern":
        return {"type": "string", "pattern": "^[A-Z]{2}-[0-9]{3}$"}
    return {"anyOf": [{"type": "string", "maxLength": 6}, {"type": "integer", "minimum": 0, "maximum": 99}, {"type": "null"}]}


def random_object(rng: random.Random, depth: int = 0, width: int = 3) -> dict[str, Any]:
    names = rng.sample(WORDS, rng.randint(1, width))
    properties = {n: _leaf(rng, depth) for n in names}
    required = sorted(rng.sample(names, rng.randint(1, len(names))), key=names.index)
    return {"type": "object", "properties": properties, "required": required, "additionalProperties": False}


def random_tools(seed: int, count: int) -> list[dict[str, Any]]:
    """`count` tools with seeded input schemas, as Anthropic's `tools` entries."""
    rng = random.Random(seed)
    return [
        {"name": f"tool_{seed}_{i}", "description": f"Record the {' and '.join(sorted(schema['properties']))} of something.", "input_schema": schema}
        for i, schema in enumerate(random_object(rng) for _ in range(count))
    ]


def random_schemas(seed: int, count: int) -> list[dict[str, Any]]:
    rng = random.Random(seed)
    return [random_object(rng) for _ in range(count)]


def as_openai_tool(tool: dict[str, Any], strict: bool = True) -> dict[str, Any]:
    return {
        "type": "function",
        "function": {"name": tool["name"], "description": tool["description"], "parameters": tool["input_schema"], "strict": strict},
    }


def features(schemas: list[dict[str, Any]]) -> set[str]:
    """The kinds of constraint the schemas use, so a test can show its coverage."""
    seen: set[str] = set()

    def walk(node: Any, depth: int) -> None:
        if isinstance(node, dict):
            for key in ("enum", "anyOf", "format", "pattern", "minimum", "maxLength", "required", "items"):
                if key in node:
                    seen.add(key)
            if node.get("type") == "object" and depth > 0:
                seen.add("nested object")
            for value in node.values():
                walk(value, depth + 1)
        elif isinstance(node, list):
            for value in node:
                walk(value, depth)

    for schema in schemas:
        walk(schema, 0)
    return seen
