"""Shared fixtures: the tiny random-weight model, and servers on loopback ports."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from pensieve.modelmgr.synthetic import make_random_model
from pensieve.utils.logging import logger
from tests.support import CliServer, ServerThread, make_settings


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A seeded 2-layer llama with the embedded tokenizer and a 32k context (fast on CPU)."""
    return make_random_model(tmp_path_factory.mktemp("models") / "tiny-llama", "tiny-llama", seed=0)


@pytest.fixture
def warnings_logged() -> Iterator[list[str]]:
    """Messages of WARNING and above logged while the test runs (the server logs through loguru)."""
    messages: list[str] = []
    sink = logger.add(lambda message: messages.append(message.record["message"]), level="WARNING")
    yield messages
    logger.remove(sink)


@pytest.fixture(scope="session")
def tiny_server(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerThread]:
    """The real app over the tiny model, shared by the protocol tests of a session."""
    settings = make_settings(tiny_model_dir, tmp_path_factory.mktemp("home"))
    with ServerThread(settings) as server:
        yield server


@pytest.fixture(scope="session")
def embedded_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[CliServer]:
    """`pensieve start` on the embedded SmolLM2 model, as a user starts it."""
    server = CliServer(tmp_path_factory.mktemp("embedded-home"), "--log-level", "INFO").start()
    yield server
    server.stop()
