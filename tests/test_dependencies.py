"""Each package declares what it imports and nothing more, so its wheel works on its own.

`make check-deps` runs deptry on each package for third-party imports; these tests show that the
check fails when it should, and check what deptry cannot see: the seven packages share the
`pensieve` namespace, which deptry resolves as one module, so which siblings a package imports
is read from the import graph that import-linter builds (grimp) and compared here.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import grimp
import pytest
from packaging.requirements import Requirement

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ["utils", "models", "metal", "engine", "modelmgr", "server", "cli"]
DEPTRY = Path(sys.executable).with_name("deptry")


def _declared(package: str) -> set[str]:
    project = tomllib.loads((ROOT / "packages" / f"pensieve-{package}" / "pyproject.toml").read_text())
    return {Requirement(spec).name for spec in project["project"]["dependencies"]}


def test_each_package_declares_exactly_the_siblings_it_imports() -> None:
    graph = grimp.build_graph("pensieve")
    for package in PACKAGES:
        imported = {
            target.split(".")[1]
            for module in graph.find_descendants(f"pensieve.{package}") | {f"pensieve.{package}"}
            for target in graph.find_modules_directly_imported_by(module)
            if target.startswith("pensieve.") and target.split(".")[1] != package
        }
        declared = {name.removeprefix("pensieve-") for name in _declared(package) if name.startswith("pensieve-")}
        assert declared == imported, f"pensieve-{package} declares {sorted(declared)} but imports {sorted(imported)}"


def _deptry(package_dir: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(DEPTRY), "src"], cwd=package_dir, capture_output=True, text=True, timeout=120)


@pytest.fixture
def models_copy(tmp_path: Path) -> Path:
    """pensieve-models as it is, in a folder of its own; deptry passes it."""
    copy = tmp_path / "pensieve-models"
    shutil.copytree(ROOT / "packages" / "pensieve-models", copy)
    clean = _deptry(copy)
    assert clean.returncode == 0, clean.stdout + clean.stderr
    return copy


def test_the_check_fails_on_an_import_the_package_does_not_declare(models_copy: Path) -> None:
    module = models_copy / "src" / "pensieve" / "models" / "internal.py"
    module.write_text(module.read_text() + "\nimport loguru  # declared by pensieve-utils, not here\n")
    result = _deptry(models_copy)
    assert result.returncode != 0
    assert "'loguru' imported but" in result.stdout + result.stderr


def test_the_check_fails_on_a_dependency_the_package_does_not_import(models_copy: Path) -> None:
    pyproject = models_copy / "pyproject.toml"
    pyproject.write_text(pyproject.read_text().replace("    'pydantic>=2.7',\n", "    'pydantic>=2.7',\n    'click>=8.1',\n"))
    result = _deptry(models_copy)
    assert result.returncode != 0
    assert "'click' defined as a dependency but not used" in result.stdout + result.stderr
