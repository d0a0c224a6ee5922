"""Fuzz both APIs from the served OpenAPI document (schemathesis, on hypothesis).

Every operation gets requests generated from its schema, valid ones and deliberately invalid
ones (wrong types, missing fields, out-of-range values, odd strings), on a real server over the
tiny model. Each answer must be no 5xx, arrive within a bounded time (no hang), carry a status
and content type the document lists, and match its schema: errors in the shape of the API the
path speaks, successes in theirs. Generation is derandomized (the same cases every CI run);
PENSIEVE_FUZZ_EXAMPLES raises the count for a longer local hunt.

The context window is cut to 256 tokens, so the huge `max_tokens` values the fuzzer likes are
capped (by design, not refused) and a case never generates for long.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from pensieve.server.openapi import openapi_document
from tests.support import API_KEY, ServerThread, health, make_settings

EXAMPLES = int(os.environ.get("PENSIEVE_FUZZ_EXAMPLES", "100"))
CALL_TIMEOUT_S = 60
"""A case that takes longer than this is a hang (the longest legitimate one, 256 tokens on the
tiny model, takes a few seconds)."""
CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance]
"""Not `ignored_auth`: every route takes either credential, so a case with a bad generated
`x-api-key` next to a good bearer token is rightly served. test_security.py sends each
documented operation without a key and with a wrong one instead."""


@pytest.fixture(scope="module")
def fuzz_server(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerThread]:
    settings_ = make_settings(tiny_model_dir, tmp_path_factory.mktemp("fuzz-home"), model__context_length=256)
    with ServerThread(settings_) as server:
        yield server
        # Afterwards: still healthy, nothing left running or queued.
        state = health(server.base_url)
        assert state["status"] == "ok", state
        assert state["requests"]["in_flight"] == 0 and state["models"][0]["load"]["active"] == 0


def _schema() -> schemathesis.BaseSchema:
    """The document as the server builds it (tests/server/test_openapi.py checks it is the one
    served), loaded at collection so each operation is its own test."""
    loaded = schemathesis.openapi.from_dict(openapi_document())
    loaded.config.generation.update(modes=list(GenerationMode), max_examples=EXAMPLES, deterministic=True, allow_x00=True)
    return loaded


schema = _schema()


@schema.parametrize()
@settings(deadline=None, suppress_health_check=list(HealthCheck), derandomize=True, max_examples=EXAMPLES)
def test_every_operation_answers_in_its_documented_shape(case: schemathesis.Case, fuzz_server: ServerThread) -> None:
    # The credential each API's clients send: OpenAI's a bearer token, Anthropic's x-api-key.
    openai_path = case.path.startswith(("/v1/chat/", "/v1/completions"))
    case.call_and_validate(
        base_url=fuzz_server.base_url,
        headers={"Authorization": f"Bearer {API_KEY}"} if openai_path else {"x-api-key": API_KEY},
        checks=CHECKS,
        timeout=CALL_TIMEOUT_S,
    )
