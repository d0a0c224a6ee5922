"""Model files that vanish around a load: a clear error naming the model, the rest still served.

Corrupt, truncated and unsupported files at load are tests/modelmgr/test_broken_models.py;
this adds files that disappear after the model was listed, or while it is loaded.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.reliability.conftest import ANTHROPIC, OPENAI, chat, error_of, post_json, store_server
from tests.support import ServerThread, health

WEIGHTS = "model.safetensors"


@pytest.fixture
def files(tiny_model_dir: Path, tmp_path: Path) -> Iterator[tuple[ServerThread, Path]]:
    with store_server(tiny_model_dir, tmp_path, ["good", "vanishing", "deleted", "loaded"], model__unknown="error") as running:
        yield running


def _states(server: ServerThread) -> dict[str, dict[str, Any]]:
    return {m["name"]: m for m in health(server.base_url)["models"]}


@pytest.mark.parametrize("path", [ANTHROPIC, OPENAI])
def test_weights_that_vanish_before_the_load_are_a_clear_error_until_they_are_back(
    files: tuple[ServerThread, Path], path: str
) -> None:
    server, store = files
    assert _states(server)["vanishing"]["state"] == "available"
    kept = (store / "vanishing" / WEIGHTS).read_bytes()
    (store / "vanishing" / WEIGHTS).unlink()

    status, body = post_json(server, path, chat(model="vanishing"))
    kind, message = error_of(path, body)
    assert status == 500 and kind == "api_error"
    assert "vanishing" in message and "has no model*.safetensors weights" in message
    assert _states(server)["vanishing"]["state"] == "error"
    assert post_json(server, path, chat(model="good"))[0] == 200  # the others are served
    assert health(server.base_url)["status"] == "ok"

    (store / "vanishing" / WEIGHTS).write_bytes(kept)  # fixed on disk: no restart needed
    assert post_json(server, path, chat(model="vanishing"))[0] == 200


def test_a_model_folder_deleted_after_listing_is_not_found(files: tuple[ServerThread, Path]) -> None:
    server, store = files
    assert "deleted" in _states(server)
    shutil.rmtree(store / "deleted")
    status, body = post_json(server, ANTHROPIC, chat(model="deleted"))
    assert status == 404 and error_of(ANTHROPIC, body)[0] == "not_found_error"
    assert "deleted" not in _states(server)


def test_files_deleted_under_a_loaded_model_do_not_stop_it(files: tuple[ServerThread, Path]) -> None:
    """The weights are in memory once loaded: the model keeps answering until it is unloaded."""
    server, store = files
    assert post_json(server, ANTHROPIC, chat(model="loaded"))[0] == 200
    shutil.rmtree(store / "loaded")
    status, body = post_json(server, ANTHROPIC, chat(model="loaded"))
    assert status == 200 and body["usage"]["output_tokens"] > 0, json.dumps(body)[:300]
