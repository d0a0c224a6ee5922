"""Which backend MLX computes on, and the attention kernels chosen for CUDA."""

from __future__ import annotations

import os

import pytest

from pensieve.metal import configure_cuda_attention, device_info
from pensieve.metal import device as device_module
from pensieve.metal.device import CUDNN_ATTENTION_ENV


def test_this_machine_is_described_for_health() -> None:
    info = device_info().as_dict()
    assert info["backend"] in {"metal", "cuda", "cpu"}
    assert info["kind"] == ("cpu" if info["backend"] == "cpu" else "gpu")
    assert info["mlx_version"] and info["platform"]


def test_cuda_serves_with_mlx_attention_unless_cudnn_is_asked_for_or_already_chosen(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(CUDNN_ATTENTION_ENV, raising=False)
    monkeypatch.setattr(device_module, "_backend", lambda: "metal")
    configure_cuda_attention(False)
    assert CUDNN_ATTENTION_ENV not in os.environ  # nothing to choose off CUDA

    monkeypatch.setattr(device_module, "_backend", lambda: "cuda")
    configure_cuda_attention(False)
    assert os.environ[CUDNN_ATTENTION_ENV] == "0"

    monkeypatch.delenv(CUDNN_ATTENTION_ENV)
    configure_cuda_attention(True)
    assert os.environ[CUDNN_ATTENTION_ENV] == "1"

    monkeypatch.setenv(CUDNN_ATTENTION_ENV, "1")  # the user's own setting wins
    configure_cuda_attention(False)
    assert os.environ[CUDNN_ATTENTION_ENV] == "1"
