"""Test support: real servers on loopback ports, in a thread or as a `pensieve` subprocess."""

from __future__ import annotations

import asyncio
import json
import os
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from aiohttp import web

from pensieve.modelmgr import ModelPool
from pensieve.server import create_app
from pensieve.utils import Settings, load_settings

API_KEY = "pensieve-local-key"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def make_settings(model: str | Path, home: Path, **overrides: Any) -> Settings:
    """Settings for a test server: no config file, no environment, warm-up off unless asked.

    The prefix cache's disk tier goes under `home` too: an in-process server reads the process
    environment's state directory, which would be the user's own.
    """
    values: dict[str, Any] = {
        "model.default": str(model),
        "performance.warmup": False,
        "performance.prefix_cache_dir": str(home / "state" / "prefix-cache"),
    }
    values.update({k.replace("__", "."): v for k, v in overrides.items()})
    return load_settings(overrides=values, env={"PENSIEVE_HOME": str(home)})


def health(base_url: str) -> dict[str, Any]:
    """GET /health (its body also when it answers 503, not ready), or {} while nothing answers."""
    try:
        with urllib.request.urlopen(f"{base_url}/health", timeout=2) as response:
            return json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return json.loads(exc.read())
    except (urllib.error.URLError, OSError, ValueError):
        return {}


class ServerThread:
    """The real aiohttp app over a real model pool, served from its own thread and loop.

    A thread lets synchronous clients (the official SDKs) call it from the test's own thread.
    """

    def __init__(self, settings: Settings, pool: Any | None = None) -> None:
        self.settings = settings
        self.pool = pool if pool is not None else ModelPool(settings)
        self.port = free_port()
        self.base_url = f"http://127.0.0.1:{self.port}"
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._runner: web.AppRunner | None = None
        self._error: BaseException | None = None

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        try:
            self._loop.run_until_complete(self._start())
        except BaseException as exc:  # surfaced by start()
            self._error = exc
            self._ready.set()
            return
        self._ready.set()
        self._loop.run_forever()

    async def _start(self) -> None:
        app = create_app(self.settings, self.pool)
        self._runner = web.AppRunner(app, shutdown_timeout=5)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", self.port).start()
        await self.pool.engine(None)  # load the default model before tests talk to it

    def start(self) -> ServerThread:
        self._thread.start()
        self._ready.wait(timeout=300)
        if self._error is not None:
            raise self._error
        return self

    def call(self, coro: Any, timeout: float = 60) -> Any:
        """Run a coroutine on the server's loop (to inspect engines from a test)."""
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout)

    def stop(self) -> None:
        if self._runner is not None:
            asyncio.run_coroutine_threadsafe(self._runner.cleanup(), self._loop).result(60)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=30)

    def __enter__(self) -> ServerThread:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


class CliServer:
    """`pensieve start` in a subprocess, as a user runs it."""

    def __init__(self, home: Path, *args: str, env: Mapping[str, str] | None = None) -> None:
        self.port = free_port()
        self.base_url = f"http://127.0.0.1:{self.port}"
        self.home = home
        self.log = home / "server.log"
        self.args = ["start", "--port", str(self.port), *args]
        self.env = {**os.environ, "PENSIEVE_HOME": str(home), **(env or {})}
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 240) -> CliServer:
        self.home.mkdir(parents=True, exist_ok=True)
        with open(self.log, "wb") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "pensieve.cli", *self.args], stdout=log, stderr=subprocess.STDOUT, env=self.env
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"pensieve exited with {self.proc.returncode}:\n{self.log.read_text()}")
            if health(self.base_url).get("status") == "ok":
                return self
            time.sleep(0.3)
        self.stop()
        raise TimeoutError(f"pensieve did not become healthy:\n{self.log.read_text()}")

    def stop(self) -> int | None:
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(2)  # SIGINT, as Ctrl-C
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode
