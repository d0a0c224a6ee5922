"""What the backend can run: a quantized KV cache needs whole groups along the head, and kernels
that MLX's CUDA backend lacks."""

from __future__ import annotations

from dataclasses import replace

import pytest

from pensieve.metal import device_info, kernels, quantized_kv_runs


def test_a_quantized_kv_cache_runs_where_the_head_holds_whole_groups() -> None:
    assert quantized_kv_runs(8, 128) and quantized_kv_runs(4, 64)  # this CPU has the kernels
    assert not quantized_kv_runs(8, 80) and not quantized_kv_runs(4, 0)


def test_not_on_cuda(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(kernels, "device_info", lambda: replace(device_info(), backend="cuda"))
    assert not quantized_kv_runs(8, 128)
