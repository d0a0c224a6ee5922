"""A store with good and broken models behind a real server: clear errors, the rest still served."""

from __future__ import annotations

import json
import shutil
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from pensieve.modelmgr import ModelPool
from pensieve.modelmgr.loader import load_source
from pensieve.modelmgr.sources import source_from_path
from pensieve.utils import ModelLoadError
from tests.modelmgr.conftest import add_model
from tests.modelmgr.gguf_files import T, random_model, write_gguf, write_unsupported_gguf
from tests.support import API_KEY, ServerThread, make_settings

# Each broken entry, and what its error must say.
BROKEN = {
    "truncated": "is truncated",
    "corrupt": "is corrupt or not a safetensors file",
    "no-tokenizer": "has no tokenizer",
    "unknown-arch": "model_type 'nosuch-arch' is not an architecture mlx-lm",
    "bad-config": "config.json is unreadable",
    "cut-gguf": "truncated",
    "q5k-gguf": "uses the GGUF quantization Q5_K, which MLX cannot read",
}


def _build_store(store: Path, tiny_mlx: Path) -> None:
    add_model(store, "good", tiny_mlx)
    weights = "model.safetensors"
    entry = add_model(store, "truncated", tiny_mlx)
    data = (entry / weights).read_bytes()
    (entry / weights).write_bytes(data[: len(data) // 2])
    entry = add_model(store, "corrupt", tiny_mlx)
    (entry / weights).write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00not json, not at all")
    entry = add_model(store, "no-tokenizer", tiny_mlx)
    (entry / "tokenizer.json").unlink()
    entry = add_model(store, "unknown-arch", tiny_mlx)
    config = json.loads((entry / "config.json").read_text())
    (entry / "config.json").write_text(json.dumps({**config, "model_type": "nosuch-arch"}))
    entry = add_model(store, "bad-config", tiny_mlx)
    (entry / "config.json").write_text('{"model_type": "llama",')
    (store / "good-gguf").mkdir()
    model, config = random_model("llama", 49152)
    write_gguf(store / "good-gguf" / "tiny.Q4_0.gguf", model, config, "llama", T.Q4_0)
    (store / "cut-gguf").mkdir()
    data = (store / "good-gguf" / "tiny.Q4_0.gguf").read_bytes()
    (store / "cut-gguf" / "tiny.gguf").write_bytes(data[: len(data) - 1000])
    (store / "q5k-gguf").mkdir()
    write_unsupported_gguf(store / "q5k-gguf" / "model.Q5_K.gguf", T.Q5_K)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, tiny_mlx: Path) -> Iterator[ServerThread]:
    home = tmp_path_factory.mktemp("home")
    store = home / "models"
    store.mkdir()
    _build_store(store, tiny_mlx)
    settings = make_settings("good", home)
    with ServerThread(settings, ModelPool(settings, store=store)) as running:
        yield running


def _call(server: ServerThread, path: str, body: dict[str, Any] | None = None, *, openai: bool = False) -> tuple[int, dict[str, Any]]:
    headers = {"content-type": "application/json"}
    headers.update({"authorization": f"Bearer {API_KEY}"} if openai else {"x-api-key": API_KEY, "anthropic-version": "2023-06-01"})
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(server.base_url + path, data=data, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=120) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def _message(server: ServerThread, model: str, *, openai: bool = False) -> tuple[int, dict[str, Any]]:
    body = {"model": model, "max_tokens": 3, "messages": [{"role": "user", "content": "hi"}]}
    return _call(server, "/v1/chat/completions" if openai else "/v1/messages", body, openai=openai)


def _models(server: ServerThread) -> dict[str, dict[str, Any]]:
    return {m["name"]: m for m in _call(server, "/health")[1]["models"]}


def test_store_entries_are_listed_before_any_request(server: ServerThread) -> None:
    models = _models(server)
    assert models["good"]["state"] == "loaded"
    assert models["good-gguf"]["state"] == "available" and models["good-gguf"]["quantization"] == "Q4_0"
    for name, reason in BROKEN.items():
        assert models[name]["state"] == "available" and reason in models[name]["error"], name
    names = {m["id"] for m in _call(server, "/v1/models")[1]["data"]}
    assert names == {m["id"] for m in _call(server, "/v1/models", openai=True)[1]["data"]}
    assert {"good", "good-gguf", "smollm2-135m-instruct", *BROKEN} <= names


@pytest.mark.parametrize("name", list(BROKEN))
def test_a_broken_model_answers_in_the_api_error_shape(server: ServerThread, name: str) -> None:
    status, body = _message(server, name)
    assert status == 500 and body["type"] == "error" and body["error"]["type"] == "api_error"
    assert BROKEN[name] in body["error"]["message"] and name in body["error"]["message"]
    status, body = _message(server, name, openai=True)
    assert status == 500 and BROKEN[name] in body["error"]["message"]
    assert body["error"]["type"] == "server_error"
    # ...and the server goes on serving the others.
    assert _message(server, "good")[0] == 200
    assert _models(server)[name]["state"] == "error"
    assert _call(server, "/health")[1]["status"] == "ok"


def test_a_gguf_store_entry_is_served(server: ServerThread) -> None:
    status, body = _message(server, "good-gguf")
    assert status == 200 and body["usage"]["output_tokens"] > 0
    models = _models(server)
    assert models["good-gguf"]["state"] == "loaded" and models["good-gguf"]["load_seconds"] > 0


def test_loader_errors_name_the_model(tmp_path: Path, tiny_mlx: Path) -> None:
    """The same checks guard direct loads (pensieve start --model <folder>)."""
    entry = Path(shutil.copytree(tiny_mlx, tmp_path / "mine"))
    (entry / "tokenizer.json").unlink()
    with pytest.raises(ModelLoadError, match="mine has no tokenizer"):
        load_source(source_from_path(entry))
