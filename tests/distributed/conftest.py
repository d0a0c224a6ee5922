"""A random llama whose greedy answers vary token by token, served alone and by two ranks."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import anthropic
import pytest

from pensieve.modelmgr.synthetic import make_random_model
from tests.support import API_KEY, ServerThread, make_settings


@pytest.fixture(scope="session")
def varied_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """tiny-llama (4 heads, 2 KV heads: both split over 2 ranks) with its projections x4, so
    nearly every greedy token differs from the last: a comparison of two paths means something."""
    return make_random_model(tmp_path_factory.mktemp("models") / "varied-llama", "tiny-llama", seed=0, scale=4)


@pytest.fixture(scope="session")
def layered_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 3-layer Qwen2, which mlx-lm can also split by layers (pipeline: 2 layers on rank 0, 1 on rank 1)."""
    return make_random_model(tmp_path_factory.mktemp("models") / "layered-qwen2", "tiny-qwen2", seed=0, scale=4)


@pytest.fixture(scope="session")
def alone(varied_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerThread]:
    """The same model served by one process: the reference for every answer of the group."""
    with ServerThread(make_settings(varied_model_dir, tmp_path_factory.mktemp("alone-home"))) as server:
        yield server


def client(base_url: str) -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url=base_url, api_key=API_KEY, max_retries=0, timeout=60)
