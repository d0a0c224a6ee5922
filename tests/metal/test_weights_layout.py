"""Weights layout: OpenBLAS preloaded by re-execution, quantized models unpacked where faster."""

from __future__ import annotations

import json
import os
import urllib.request
from pathlib import Path

import mlx.core as mx
import mlx.nn as nn
import pytest

from pensieve.metal.layout import choose_layout, dequantize_model, float32_bytes
from pensieve.utils.blas import REEXEC_MARK, mlx_runs_on_cpu, openblas_library, preload_environment
from tests.support import API_KEY, CliServer


def quantized_mlp() -> nn.Module:
    mx.random.seed(3)
    model = nn.Sequential(nn.Embedding(256, 64), nn.Linear(64, 128), nn.ReLU(), nn.Linear(128, 256))
    nn.quantize(model, group_size=32, bits=4)
    return model


def test_dequantized_model_computes_what_the_quantized_one_did() -> None:
    model = quantized_mlp()
    tokens = mx.array([[1, 5, 9, 200]])
    before = model(tokens)
    dequantize_model(model)
    after = model(tokens)
    assert not any(isinstance(m, (nn.QuantizedLinear, nn.QuantizedEmbedding)) for _, m in model.named_modules())
    assert after.dtype == mx.float32
    assert mx.allclose(before.astype(mx.float32), after, atol=1e-4).item()


def test_float32_size_and_layout_choice() -> None:
    model = quantized_mlp()
    expected = (256 * 64 + 64 * 128 + 128 + 128 * 256 + 256) * 4
    assert float32_bytes(model) == expected
    def layout(budget: int, strategy: str = "auto", backend: str = "cpu", blas: bool = True) -> str:
        return choose_layout(model, budget_bytes=budget, strategy=strategy, backend=backend, blas_ready=blas)

    assert layout(expected * 4) == "dequantized"
    assert layout(expected * 2) == "quantized"
    assert layout(expected * 100, blas=False) == "quantized"
    assert layout(1, strategy="dequantized", blas=False) == "dequantized"
    assert layout(expected * 2, backend="cuda") == "both"  # bfloat16 twin: half of float32
    assert layout(expected * 100, backend="metal") == "quantized"
    assert layout(expected * 100, strategy="quantized") == "quantized"


def _preloads() -> bool:
    """OpenBLAS is preloaded only for MLX's CPU backend (Linux), and only if one is installed."""
    return mlx_runs_on_cpu() and openblas_library() is not None


def test_preload_environment_only_when_it_helps() -> None:
    assert preload_environment({}, "quantized") is None
    assert preload_environment({REEXEC_MARK: "x"}, "auto") is None
    env = preload_environment({"LD_PRELOAD": "/lib/other.so"}, "auto")
    if not _preloads():
        assert env is None
    else:
        assert env is not None and env["LD_PRELOAD"].startswith("/lib/other.so ")
        assert env[REEXEC_MARK] in env["LD_PRELOAD"]


@pytest.mark.slow
def test_served_embedded_model_uses_openblas_and_float32_when_available(tmp_path) -> None:
    """The real `pensieve start`: same PID after re-executing, OpenBLAS mapped, weights float32."""
    server = CliServer(tmp_path, env={"PENSIEVE_PERFORMANCE_WARMUP": "false"}).start()
    try:
        proc_maps = Path(f"/proc/{server.proc.pid}/maps")
        maps = proc_maps.read_text() if proc_maps.exists() else ""  # macOS has no /proc
        request = urllib.request.Request(f"{server.base_url}/health", headers={"x-api-key": API_KEY})
        weights = json.loads(urllib.request.urlopen(request).read())["models"][0]["weight_bytes"]
        if _preloads():
            assert "libopenblas" in maps
            assert weights > 4 * 98_000_000  # 135M parameters in float32, not the 98 MB 4-bit file
        else:
            assert "libopenblas" not in maps
            assert weights < 120_000_000
    finally:
        assert server.stop() == 0
    assert os.environ.get(REEXEC_MARK) is None
