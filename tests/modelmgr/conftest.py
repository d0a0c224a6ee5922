"""Model stores for the model manager's tests: real (tiny, random-weight) models on disk."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from pensieve.modelmgr.synthetic import make_random_model


@pytest.fixture(scope="session")
def tiny_mlx(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 2-layer llama MLX folder (float32, 32k context) to copy into stores."""
    return make_random_model(tmp_path_factory.mktemp("src") / "tiny", "tiny-llama", seed=1)


def add_model(store: Path, name: str, source: Path) -> Path:
    """Copy a model folder into `store` as entry `name` (org/name becomes org--name)."""
    target = store / name.replace("/", "--")
    shutil.copytree(source, target)
    return target


@pytest.fixture
def store(tmp_path: Path) -> Path:
    path = tmp_path / "models"
    path.mkdir()
    return path
