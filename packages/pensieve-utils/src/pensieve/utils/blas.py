"""An optimized BLAS for MLX's Linux CPU build, set up before MLX is imported.

MLX's Linux CPU wheel links the reference BLAS, whose matrix products are an order of magnitude
slower than OpenBLAS's. Preloading a system OpenBLAS (`LD_PRELOAD`) makes MLX's `cblas_*` calls
resolve to it. The dynamic linker reads `LD_PRELOAD` only at process start, so the serving
process re-executes itself once with it set. This module must not import MLX.
"""

from __future__ import annotations

import ctypes.util
import importlib.metadata
import os
import sys
from collections.abc import Mapping
from pathlib import Path

REEXEC_MARK = "PENSIEVE_BLAS_PRELOADED"
_CANDIDATES = (
    "/usr/lib/x86_64-linux-gnu/libopenblas.so.0",
    "/usr/lib/aarch64-linux-gnu/libopenblas.so.0",
    "/usr/lib64/libopenblas.so.0",
    "/usr/lib/libopenblas.so.0",
)


def openblas_library() -> str | None:
    """Path or soname of a system OpenBLAS, if one is installed."""
    for path in _CANDIDATES:
        if Path(path).is_file():
            return path
    return ctypes.util.find_library("openblas")


def mlx_runs_on_cpu() -> bool:
    """True on Linux without MLX's CUDA backend installed (macOS always has Metal)."""
    if not sys.platform.startswith("linux"):
        return False
    for dist in ("mlx-cuda-13", "mlx-cuda-12", "mlx-cuda"):
        try:
            importlib.metadata.distribution(dist)
            return False
        except importlib.metadata.PackageNotFoundError:
            continue
    return True


def openblas_loaded() -> bool:
    """Whether this process has an OpenBLAS mapped (after a preload, or linked by something)."""
    try:
        return "libopenblas" in Path("/proc/self/maps").read_text()
    except OSError:
        return False


def preload_environment(env: Mapping[str, str], strategy: str = "auto") -> dict[str, str] | None:
    """The environment to re-execute with, or None when there is nothing to do.

    Nothing to do: not the CPU backend, strategy `quantized` (keep MLX's own kernels), no
    OpenBLAS installed, or this process is already the re-executed one.
    """
    if strategy == "quantized" or env.get(REEXEC_MARK) or not mlx_runs_on_cpu():
        return None
    library = openblas_library()
    if library is None:
        return None
    preload = " ".join(p for p in (env.get("LD_PRELOAD", ""), library) if p)
    return {**env, "LD_PRELOAD": preload, REEXEC_MARK: library}


def reexec_with_openblas(strategy: str = "auto") -> None:
    """Replace this process with itself under LD_PRELOAD (same PID); returns if not needed."""
    env = preload_environment(os.environ, strategy)
    if env is None:
        return
    os.execve(sys.executable, [sys.executable, "-m", "pensieve.cli", *sys.argv[1:]], env)
