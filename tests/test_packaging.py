"""The seven wheels build, share the namespace, and the lower packages stand alone.

Installs pensieve-models and pensieve-utils (and their declared third-party dependencies, from
the package registry) into a fresh virtual environment and uses them there, proving another
project can depend on the wire types without the server, the engine or MLX.
"""

from __future__ import annotations

import subprocess
import sys
import venv
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ["utils", "models", "metal", "engine", "modelmgr", "server", "cli"]

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def wheels(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    out = tmp_path_factory.mktemp("dist")
    for name in PACKAGES:
        subprocess.run(
            [sys.executable, "-m", "build", "-q", "--wheel", "--no-isolation", "--outdir", str(out),
             str(ROOT / "packages" / f"pensieve-{name}")],
            check=True, capture_output=True,
        )
    found = {p.name.split("-")[0].removeprefix("pensieve_"): p for p in out.glob("pensieve_*.whl")}
    assert sorted(found) == sorted(PACKAGES)
    return found


def test_each_wheel_is_a_namespace_portion_with_types(wheels: dict[str, Path]) -> None:
    for name, wheel in wheels.items():
        files = zipfile.ZipFile(wheel).namelist()
        assert "pensieve/__init__.py" not in files, f"{wheel.name} must not own the pensieve namespace"
        assert f"pensieve/{name}/__init__.py" in files
        assert f"pensieve/{name}/py.typed" in files
        assert all(f.startswith((f"pensieve/{name}/", "pensieve_")) for f in files)


def test_models_and_utils_work_alone_in_a_fresh_environment(wheels: dict[str, Path], tmp_path: Path) -> None:
    env_dir = tmp_path / "venv"
    venv.EnvBuilder(with_pip=True).create(env_dir)
    python = env_dir / "bin" / "python"
    subprocess.run(
        [str(python), "-m", "pip", "install", "-q", "--find-links", str(wheels["models"].parent),
         str(wheels["models"]), str(wheels["utils"])],
        check=True, capture_output=True, timeout=600,
    )
    script = """
import importlib.util
from pensieve.models.anthropic import MessagesRequest
from pensieve.models import ChatRequest, ChatMessage
from pensieve.utils import load_settings, InvalidRequestError
req = MessagesRequest.model_validate({"model": "m", "max_tokens": 8, "messages": [{"role": "user", "content": "hi"}]})
chat = ChatRequest(model=req.model, messages=[ChatMessage(role="user", content="hi")], max_tokens=req.max_tokens)
assert load_settings(env={}).server.port == 8000
assert InvalidRequestError("x").status == 400
for absent in ("pensieve.engine", "pensieve.server", "pensieve.cli", "pensieve.metal", "mlx", "aiohttp"):
    assert importlib.util.find_spec(absent) is None, absent
print("ok", chat.max_tokens)
"""
    result = subprocess.run([str(python), "-c", script], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "ok 8"


def test_the_server_wheel_carries_the_web_page(wheels: dict[str, Path]) -> None:
    files = set(zipfile.ZipFile(wheels["server"]).namelist())
    web = ROOT / "packages" / "pensieve-server" / "src" / "pensieve" / "server" / "web"
    expected = {f"pensieve/server/web/{p.name}" for p in web.iterdir()}
    assert "pensieve/server/web/index.html" in expected and expected <= files
