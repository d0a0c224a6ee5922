"""The web page's routes over HTTP: who gets the page at `/`, its assets, the history endpoint,
and `server.web_ui = false`. The page itself, in a browser, is tested in tests/web."""

from __future__ import annotations

import http.client
import json
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from pensieve.server.web_page import ASSETS
from tests.support import API_KEY, ServerThread, make_settings

BROWSER_ACCEPT = "text/html,application/xhtml+xml,application/xml;q=0.9,image/avif,image/webp,*/*;q=0.8"


def get(server: ServerThread, path: str, headers: dict[str, str] | None = None, method: str = "GET") -> tuple[int, dict[str, str], bytes]:
    request = urllib.request.Request(f"{server.base_url}{path}", headers=headers or {}, method=method)
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, {k.lower(): v for k, v in response.headers.items()}, response.read()
    except urllib.error.HTTPError as err:
        return err.code, {k.lower(): v for k, v in err.headers.items()}, err.read()


def test_a_browser_gets_the_page_and_every_other_client_keeps_the_json(tiny_server: ServerThread) -> None:
    status, headers, body = get(tiny_server, "/", {"Accept": BROWSER_ACCEPT})
    assert status == 200 and headers["content-type"].startswith("text/html")
    assert b'<script type="module" src="/ui/app.js">' in body
    assert "default-src 'none'" in headers["content-security-policy"] and "connect-src 'self'" in headers["content-security-policy"]
    assert headers["vary"] == "Accept" and "access-control-allow-origin" not in headers
    for accept in (None, "*/*", "application/json", "text/html;q=0"):
        status, headers, body = get(tiny_server, "/", {"Accept": accept} if accept else {})
        assert status == 200 and headers["content-type"].startswith("application/json"), accept
        assert json.loads(body)["name"] == "pensieve"
    for accept in (None, BROWSER_ACCEPT):  # Claude Code probes HEAD /
        status, _, body = get(tiny_server, "/", {"Accept": accept} if accept else {}, method="HEAD")
        assert status == 200 and body == b""


def test_every_asset_is_served_without_a_key_and_what_the_page_names_exists(tiny_server: ServerThread) -> None:
    _, _, page = get(tiny_server, "/", {"Accept": BROWSER_ACCEPT})
    named = {part.split('"')[0] for part in page.decode().split('"/ui/')[1:]}
    assert {f"/ui/{name}" for name in named} <= set(ASSETS)
    for path, kind in ASSETS.items():
        status, headers, body = get(tiny_server, path)
        assert status == 200 and headers["content-type"].startswith(kind) and body, path
        assert headers["x-content-type-options"] == "nosniff"
    # Every module the scripts import is served too.
    for path in (p for p in ASSETS if p.endswith(".js")):
        source = get(tiny_server, path)[2].decode()
        for line in source.splitlines():
            if line.startswith("import ") and " from " in line:
                target = line.split(" from ")[1].strip(' ";').removeprefix("./")
                assert f"/ui/{target}" in ASSETS, (path, line)
    for path in ("/ui/missing.js", "/ui/../pyproject.toml", "/ui/index.html"):
        assert get(tiny_server, path, {"x-api-key": API_KEY})[0] == 404, path


def _history(server: ServerThread, query: str = "", key: str | None = API_KEY) -> tuple[int, Any]:
    status, _, body = get(server, f"/v1/pensieve/history{query}", {"x-api-key": key} if key else {})
    return status, json.loads(body)


def test_history_needs_the_key_and_says_what_since_must_be(tiny_server: ServerThread) -> None:
    status, body = _history(tiny_server, key=None)
    assert status == 401 and "missing API key" in body["error"]["message"]
    status, body = _history(tiny_server, key="wrong")
    assert status == 401 and body["error"]["type"] == "authentication_error"
    status, body = _history(tiny_server, "?since=yesterday")
    assert status == 400 and "Unix time" in body["error"]["message"]
    status, body = _history(tiny_server)
    assert status == 200 and set(body) == {"interval_s", "window_s", "samples", "in_flight", "totals"}


def _stream_request(server: ServerThread, max_tokens: int) -> http.client.HTTPResponse:
    connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=60)
    body = {"max_tokens": max_tokens, "temperature": 0, "stream": True, "messages": [{"role": "user", "content": "count to a thousand"}]}
    connection.request("POST", "/v1/messages", json.dumps(body), {"x-api-key": API_KEY, "content-type": "application/json"})
    return connection.getresponse()


def test_history_samples_tokens_requests_and_lists_requests_in_flight(tiny_server: ServerThread) -> None:
    _, before = _history(tiny_server)
    response = _stream_request(tiny_server, max_tokens=4000)
    try:
        deadline = time.monotonic() + 30
        running: list[dict[str, Any]] = []
        while time.monotonic() < deadline:  # the sampler needs a second to time a running request
            response.read1(65536)
            running = [r for r in _history(tiny_server)[1]["in_flight"] if r["path"] == "/v1/messages"]
            if running and running[0]["tokens_per_s"]:
                break
            time.sleep(0.2)
        assert running and running[0]["model"] == "tiny-llama" and running[0]["output_tokens"] > 0, running
        assert running[0]["tokens_per_s"] > 0 and running[0]["input_tokens"] > 0
    finally:
        response.close()  # hanging up cancels the generation
    time.sleep(1.5)
    status, after = _history(tiny_server, f"?since={before['samples'][-1]['t'] if before['samples'] else 0}")
    assert status == 200 and after["samples"]
    assert all(s["t"] > (before["samples"][-1]["t"] if before["samples"] else 0) for s in after["samples"])
    assert max(s["tokens_per_s"] for s in after["samples"]) > 0
    assert max(s["in_flight"] for s in after["samples"]) >= 1
    assert after["totals"]["output_tokens"] > before["totals"]["output_tokens"]
    assert not [r for r in after["in_flight"] if r["path"] == "/v1/messages"]


def test_the_prefix_cache_hits_show_in_the_totals(tiny_server: ServerThread) -> None:
    _, before = _history(tiny_server)
    messages = [{"role": "user", "content": "Tell me about the sea. " * 12}]
    for _ in range(2):
        request = urllib.request.Request(
            f"{tiny_server.base_url}/v1/messages",
            data=json.dumps({"max_tokens": 4, "temperature": 0, "messages": messages}).encode(),
            headers={"x-api-key": API_KEY, "content-type": "application/json"},
        )
        with urllib.request.urlopen(request, timeout=60) as answer:
            usage = json.loads(answer.read())["usage"]
    assert usage["cache_read_input_tokens"] > 0
    _, after = _history(tiny_server)
    assert after["totals"]["cached_tokens"] - before["totals"]["cached_tokens"] >= usage["cache_read_input_tokens"]
    assert after["totals"]["requests"] >= before["totals"]["requests"] + 2


@pytest.fixture(scope="module")
def no_web_ui(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerThread]:
    settings = make_settings(tiny_model_dir, tmp_path_factory.mktemp("no-web-ui"), server__web_ui=False)
    with ServerThread(settings) as server:
        yield server


def test_web_ui_false_leaves_json_at_the_root_and_nothing_else(no_web_ui: ServerThread) -> None:
    status, headers, body = get(no_web_ui, "/", {"Accept": BROWSER_ACCEPT})
    assert status == 200 and headers["content-type"].startswith("application/json")
    assert json.loads(body)["status"] == "ok"
    for path in ("/ui/app.js", "/v1/pensieve/history"):
        status, _, body = get(no_web_ui, path, {"x-api-key": API_KEY})
        assert status == 404 and "no route" in json.loads(body)["error"]["message"]
