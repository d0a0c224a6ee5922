"""The backend is asked what it can run, with a small problem of the real kind."""

from __future__ import annotations

from pensieve.metal import quantized_kv_runs


def test_a_quantized_kv_cache_runs_where_the_head_holds_whole_groups() -> None:
    # This CPU has the kernels; a head of 80 holds no whole group of 64, of any width.
    assert quantized_kv_runs(8, 128) and quantized_kv_runs(4, 64)
    assert not quantized_kv_runs(8, 80) and not quantized_kv_runs(4, 0)
