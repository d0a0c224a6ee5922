"""`/health` is readiness (503 until the default model can serve); `/` is liveness."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from pensieve.modelmgr import ModelPool
from pensieve.modelmgr import pool as pool_module
from pensieve.server.app import create_app
from tests.support import free_port, make_settings


@pytest.fixture
def gate(monkeypatch: pytest.MonkeyPatch) -> threading.Event:
    """Hold every model load until the test opens the gate (the real loader then runs)."""
    opened = threading.Event()
    real = pool_module.load_source

    def held(source: Any) -> Any:
        assert opened.wait(60), "the test never opened the load gate"
        return real(source)

    monkeypatch.setattr(pool_module, "load_source", held)
    return opened


async def _serve(model: Path | str, home: Path, **overrides: Any) -> AsyncIterator[str]:
    settings = make_settings(model, home, **overrides)
    runner = web.AppRunner(create_app(settings, ModelPool(settings)))
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        await runner.cleanup()


async def _get(session: aiohttp.ClientSession, url: str) -> tuple[int, dict[str, Any]]:
    async with session.get(url) as response:
        return response.status, await response.json()


async def test_health_is_503_while_the_default_model_loads_then_200(
    tiny_model_dir: Path, tmp_path: Path, gate: threading.Event
) -> None:
    async for base in _serve(tiny_model_dir, tmp_path):
        async with aiohttp.ClientSession() as session:
            status, body = await _get(session, f"{base}/health")
            assert status == 503 and body["status"] in ("starting", "loading")
            assert body["models"][0]["name"] == body["model"]  # the same body as when ready
            assert (await _get(session, f"{base}/"))[0] == 200  # liveness answers throughout
            gate.set()
            for _ in range(600):
                status, body = await _get(session, f"{base}/health")
                if status == 200:
                    break
                assert body["status"] in ("starting", "loading")
                await asyncio.sleep(0.05)
            assert status == 200 and body["status"] == "ok"
            assert body["models"][0]["state"] == "loaded" and body["models"][0]["load"]["active"] == 0


async def test_without_preloading_the_server_is_ready_at_once(tiny_model_dir: Path, tmp_path: Path, gate: threading.Event) -> None:
    async for base in _serve(tiny_model_dir, tmp_path, model__preload=False):
        async with aiohttp.ClientSession() as session:
            status, body = await _get(session, f"{base}/health")
            assert status == 200 and body["status"] == "ok"
            assert body["models"][0]["state"] == "available"


async def test_a_default_model_that_fails_to_load_is_503_error(tmp_path: Path) -> None:
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "config.json").write_text('{"model_type": "llama"}')
    async for base in _serve(broken, tmp_path):
        async with aiohttp.ClientSession() as session:
            for _ in range(200):
                status, body = await _get(session, f"{base}/health")
                if body["status"] == "error":
                    break
                await asyncio.sleep(0.05)
            assert status == 503 and body["status"] == "error" and body["models"][0]["error"]
