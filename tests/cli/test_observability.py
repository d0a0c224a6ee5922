"""What the daemon's observability rests on, in process: per-app metrics, the request log line,
settings read live by the middlewares (metrics auth, CORS, content logging), drain refusal."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from pensieve.server import create_app
from pensieve.server.metrics import METRICS
from pensieve.server.observe import OBSERVER
from pensieve.utils.logging import logger
from tests.cli.conftest import http
from tests.support import API_KEY, ServerThread, make_settings

CANARY = "okapi-canary-9931"


@pytest.fixture(scope="module")
def server(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerThread]:
    settings = make_settings(tiny_model_dir, tmp_path_factory.mktemp("obs-home"))
    with ServerThread(settings) as running:
        yield running


@pytest.fixture
def captured() -> Iterator[list[dict[str, Any]]]:
    records: list[dict[str, Any]] = []
    sink = logger.add(lambda message: records.append(message.record), level="DEBUG")
    yield records
    logger.remove(sink)


def _post(server: ServerThread, text: str, headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], bytes]:
    body = {"model": "m", "max_tokens": 4, "messages": [{"role": "user", "content": text}]}
    return http("POST", f"{server.base_url}/v1/messages", body, key=API_KEY)


def test_each_app_has_its_own_registry(server: ServerThread) -> None:
    other = create_app(server.settings, server.pool)  # a second app in the same process
    assert _post(server, "hi")[0] == 200
    served = server._runner.app[METRICS].render().decode()  # type: ignore[union-attr]
    fresh = other[METRICS].render().decode()
    assert 'pensieve_requests_total{method="POST",route="/v1/messages",status="200"}' in served
    assert "pensieve_requests_total{" not in fresh
    assert "pensieve_mlx_memory_bytes" in fresh  # gauges read from the shared provider


def test_request_log_line_has_figures_but_content_only_when_enabled(server: ServerThread, captured: list[dict[str, Any]]) -> None:
    status, headers, _ = _post(server, CANARY)
    assert status == 200
    (line,) = [r for r in captured if r["extra"].get("request_id") == headers["request-id"] and r["extra"].get("component") == "http"]
    extra = line["extra"]
    assert extra["output_tokens"] == 4 and extra["input_tokens"] > 0 and extra["ttft_s"] > 0
    assert "request_body" not in extra and CANARY not in json.dumps(extra, default=str)

    server.settings.logging.log_content = True  # what a SIGHUP reload does, in place
    try:
        status, headers, _ = _post(server, CANARY)
    finally:
        server.settings.logging.log_content = False
    (line,) = [r for r in captured if r["extra"].get("request_id") == headers["request-id"] and r["extra"].get("component") == "http"]
    assert CANARY in line["extra"]["request_body"]


def test_speculation_shows_in_the_log_line_the_debug_list_and_metrics(server: ServerThread, captured: list[dict[str, Any]]) -> None:
    """The random model repeats its tokens, so the lookup's proposals are accepted."""
    body = {"model": "m", "max_tokens": 40, "temperature": 0, "messages": [{"role": "user", "content": "Hello"}]}
    status, headers, _ = http("POST", f"{server.base_url}/v1/messages", body, key=API_KEY)
    assert status == 200
    (line,) = [r for r in captured if r["extra"].get("request_id") == headers["request-id"] and r["extra"].get("component") == "http"]
    extra = line["extra"]
    assert extra["tokens_per_pass"] > 1 and extra["speculation_acceptance"] > 0
    assert " tok/pass accepted=" in line["message"]
    recent = json.loads(http("GET", f"{server.base_url}/v1/debug/requests", key=API_KEY)[2])["requests"]
    (mine,) = [r for r in recent if r["request_id"] == headers["request-id"]]
    assert mine["profile"]["speculation_accepted"] > 0 and mine["profile"]["decode_passes"] < 39
    metrics = server._runner.app[METRICS].render().decode()  # type: ignore[union-attr]
    figures = {line.rsplit(" ", 1)[0]: float(line.rsplit(" ", 1)[1]) for line in metrics.splitlines() if line.startswith("pensieve_")}
    model = next(k for k in figures if k.startswith("pensieve_decode_passes_total")).split('"')[1]
    assert figures[f'pensieve_speculation_tokens_total{{model="{model}",outcome="accepted"}}'] > 0
    passes = figures[f'pensieve_decode_passes_total{{model="{model}"}}']
    assert figures[f'pensieve_decode_pass_tokens_total{{model="{model}"}}'] > passes > 0


def test_metrics_auth_and_cors_follow_the_live_settings(server: ServerThread) -> None:
    url = f"{server.base_url}/metrics"
    assert http("GET", url)[0] == 401
    server.settings.server.metrics_require_auth = False
    try:
        assert http("GET", url)[0] == 200
    finally:
        server.settings.server.metrics_require_auth = True

    import urllib.request

    def preflight(origin: str) -> tuple[int, dict[str, str]]:
        request = urllib.request.Request(
            f"{server.base_url}/v1/messages",
            method="OPTIONS",
            headers={"Origin": origin, "Access-Control-Request-Method": "POST", "Access-Control-Request-Headers": "x-api-key"},
        )
        try:
            with urllib.request.urlopen(request, timeout=10) as response:
                return response.status, dict(response.headers)
        except urllib.error.HTTPError as err:
            return err.code, dict(err.headers)

    status, headers = preflight("http://app.local")
    assert status != 204 and "Access-Control-Allow-Origin" not in headers  # CORS off by default
    server.settings.server.cors_origins = ["http://app.local"]
    try:
        status, headers = preflight("http://app.local")
        assert status == 204 and headers["Access-Control-Allow-Origin"] == "http://app.local"
        assert headers["Access-Control-Allow-Headers"] == "x-api-key"
        assert "Access-Control-Allow-Origin" not in preflight("http://evil.example")[1]
        request = urllib.request.Request(
            f"{server.base_url}/v1/messages",
            data=json.dumps({"model": "m", "max_tokens": 2, "stream": True, "messages": [{"role": "user", "content": "hi"}]}).encode(),
            headers={"Origin": "http://app.local", "x-api-key": API_KEY, "content-type": "application/json"},
        )
        with urllib.request.urlopen(request, timeout=30) as response:
            assert response.headers["Access-Control-Allow-Origin"] == "http://app.local"  # streamed too
            response.read()
    finally:
        server.settings.server.cors_origins = []


def test_a_draining_server_refuses_new_work_but_answers_health(server: ServerThread) -> None:
    observer = server._runner.app[OBSERVER]  # type: ignore[union-attr]
    observer.draining = True
    try:
        status, headers, body = _post(server, "hi")
        assert status == 529 and json.loads(body)["error"]["type"] == "overloaded_error"
        assert headers.get("retry-after") == "5"
        health = json.loads(http("GET", f"{server.base_url}/health")[2])
        assert health["draining"] is True and health["status"] == "ok"
    finally:
        observer.draining = False
