"""No model name from a request reaches a file outside the model store."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from pensieve.modelmgr import ModelPool
from pensieve.modelmgr.sources import resolve_source
from pensieve.modelmgr.store import ModelStore
from pensieve.utils import InvalidRequestError, NotFoundError
from tests.modelmgr.conftest import add_model
from tests.support import make_settings


@pytest.fixture
def outside(tmp_path: Path, tiny_mlx: Path) -> Path:
    """A perfectly loadable model that sits next to the store, not in it."""
    return Path(shutil.copytree(tiny_mlx, tmp_path / "outside"))


@pytest.mark.parametrize(
    "name",
    [
        "../outside",
        "models/../outside",
        "org/../../outside",
        "..",
        ".",
        "./outside",
        "%2e%2e/outside",
        "org\\..\\outside",
        "outside/",
        "a/b/c",
        "org--outside",
        "",
    ],
)
def test_request_names_cannot_climb_out(store: Path, outside: Path, name: str) -> None:
    with pytest.raises(NotFoundError):
        resolve_source(name, store, allow_paths=False)


def test_absolute_paths_are_not_names(store: Path, outside: Path) -> None:
    with pytest.raises(NotFoundError):
        resolve_source(str(outside), store, allow_paths=False)
    # ...while the operator may serve any path.
    assert resolve_source(str(outside), store, allow_paths=True).path == outside


def test_a_symlinked_entry_pointing_out_is_refused(store: Path, outside: Path) -> None:
    (store / "linked").symlink_to(outside, target_is_directory=True)
    with pytest.raises(NotFoundError, match="links outside the model store"):
        resolve_source("linked", store, allow_paths=False)


def test_a_symlinked_file_pointing_out_is_refused(store: Path, outside: Path, tiny_mlx: Path) -> None:
    entry = add_model(store, "org/model", tiny_mlx)
    (entry / "model.safetensors").unlink()
    (entry / "model.safetensors").symlink_to(outside / "model.safetensors")
    with pytest.raises(NotFoundError, match="links outside"):
        resolve_source("org/model", store, allow_paths=False)


def test_store_entries_resolve_by_name(store: Path, tiny_mlx: Path) -> None:
    add_model(store, "org/model", tiny_mlx)
    source = resolve_source("org/model", store, allow_paths=False)
    assert (source.name, source.kind, source.path) == ("org/model", "mlx", store / "org--model")
    assert [e.name for e in ModelStore(store).entries()] == ["org/model"]


def test_pool_never_serves_an_outside_file(store: Path, outside: Path, tiny_mlx: Path, tmp_path: Path) -> None:
    add_model(store, "good", tiny_mlx)
    (store / "linked").symlink_to(outside, target_is_directory=True)
    strict = ModelPool(make_settings("good", tmp_path, model__unknown="error"), store=store)
    for name in ("../outside", str(outside), "linked"):
        with pytest.raises(NotFoundError):
            strict.resolve_name(name)
    lenient = ModelPool(make_settings("good", tmp_path), store=store)
    assert lenient.resolve_name("../outside") == "good"  # unknown names get the default model
    listed = {m.name: m for m in lenient.status()}
    assert listed["linked"].state == "error" and listed["linked"].size_bytes is None


def test_alias_targets_are_operator_paths(store: Path, outside: Path, tmp_path: Path, tiny_mlx: Path) -> None:
    add_model(store, "good", tiny_mlx)
    settings = make_settings("good", tmp_path, model__aliases={"claude-*": str(outside)}, model__unknown="error")
    pool = ModelPool(settings, store=store)
    assert pool.resolve_name("claude-sonnet-4-5") == "outside"


def test_remove_deletes_only_inside_the_store(store: Path, outside: Path) -> None:
    models = ModelStore(store)
    (store / "linked").symlink_to(outside, target_is_directory=True)
    models.remove("linked")
    assert not (store / "linked").exists() and (outside / "config.json").is_file()
    with pytest.raises(InvalidRequestError):
        models.remove("../outside")
    with pytest.raises(NotFoundError):
        models.remove("missing")


def test_staging_leaves_nothing_when_interrupted(store: Path) -> None:
    models = ModelStore(store)
    with pytest.raises(RuntimeError), models.staging("half") as target:
        target.mkdir()
        (target / "config.json").write_text("{}")
        raise RuntimeError("download interrupted")
    assert os.listdir(store) == []
    with models.staging("whole") as target:
        target.mkdir()
        (target / "config.json").write_text("{}")
    assert os.listdir(store) == ["whole"]
    with pytest.raises(InvalidRequestError, match="already in the store"), models.staging("whole"):
        pass
