"""The history ring buffer over a real observer and model pool (nothing loaded, nothing running)."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from pensieve.modelmgr import ModelPool
from pensieve.server.history import History
from pensieve.server.observe import Observer, RequestSummary
from tests.support import make_settings


@pytest.fixture
def history(tiny_model_dir: Path, tmp_path: Path) -> History:
    pool = ModelPool(make_settings(tiny_model_dir, tmp_path))
    return History(Observer(), pool, interval_s=1.0, window_s=3.0)


def _finished(observer: Observer, request_id: str, prompt: int, cached: int) -> None:
    summary = RequestSummary(request_id, "POST", "/v1/messages", "/v1/messages", 200, 0.5, input_tokens=prompt, output_tokens=3, cached_tokens=cached)
    observer.end(summary)


def test_the_buffer_keeps_one_window_of_samples_oldest_dropped_first(history: History) -> None:
    taken = []
    for _ in range(5):
        taken.append(history.sample())
        time.sleep(0.01)  # samples a second apart in the server; here apart enough to tell by `t`
    assert list(history.samples) == taken[-3:]
    assert [s["t"] for s in history.snapshot()["samples"]] == [s.t for s in taken[-3:]]
    assert history.snapshot(since=taken[-2].t)["samples"] == [history.snapshot()["samples"][-1]]


def test_a_sample_counts_what_ended_in_its_interval_only(history: History) -> None:
    observer = history.observer
    _finished(observer, "req_a", prompt=100, cached=60)
    _finished(observer, "req_b", prompt=50, cached=0)
    first = history.sample()
    second = history.sample()
    assert (first.requests, first.input_tokens, first.cached_tokens) == (2, 150, 60)
    assert (second.requests, second.input_tokens, second.cached_tokens) == (0, 0, 0)
    assert first.active_bytes >= 0 and first.queued == 0 and first.in_flight == 0
    assert history.snapshot()["totals"] == {"requests": 2, "input_tokens": 150, "cached_tokens": 60, "output_tokens": 6}
