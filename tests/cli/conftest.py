"""Drive the real `pensieve` command in subprocesses, each test tree under its own PENSIEVE_HOME."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from pensieve.utils.pidfile import PidInfo, read_pid_file

# Variables from the developer's shell that would change what a test server does.
_SCRUB = ("ANTHROPIC_API_KEY", "ANTHROPIC_AUTH_TOKEN", "XDG_CONFIG_HOME", "XDG_STATE_HOME")


class Pensieve:
    """The `pensieve` CLI as a user runs it, with everything under `home`."""

    def __init__(self, home: Path, model: Path | None = None, **env: str) -> None:
        self.home = home
        self.model = model
        self.env = {k: v for k, v in os.environ.items() if k not in _SCRUB and not k.startswith("PENSIEVE_")}
        self.env.update(PENSIEVE_HOME=str(home), PENSIEVE_PERFORMANCE_WARMUP="false", **env)

    def run(self, *args: str, timeout: float = 180) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "pensieve.cli", *args],
            env=self.env,
            capture_output=True,
            text=True,
            timeout=timeout,
            stdin=subprocess.DEVNULL,
        )

    def popen(self, *args: str) -> subprocess.Popen[str]:
        return subprocess.Popen(
            [sys.executable, "-m", "pensieve.cli", *args],
            env=self.env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )

    @property
    def pid_file(self) -> Path:
        return self.home / "state" / "pensieve.pid"

    @property
    def log_file(self) -> Path:
        return self.home / "logs" / "pensieve.log"

    @property
    def config_file(self) -> Path:
        return self.home / "config" / "pensieve.toml"

    def info(self) -> PidInfo:
        info = read_pid_file(self.pid_file)
        assert info is not None, "no PID file"
        return info

    def records(self) -> list[dict[str, Any]]:
        if not self.log_file.exists():
            return []
        return [json.loads(line) for line in self.log_file.read_text().splitlines() if line.strip()]

    def wait_for_record(self, predicate: Callable[[dict[str, Any]], bool], timeout: float = 30) -> dict[str, Any]:
        """The first log record matching `predicate`, waiting for the server to write it."""
        deadline = time.monotonic() + timeout
        while True:
            for record in self.records():
                if predicate(record):
                    return record
            if time.monotonic() > deadline:
                raise AssertionError(f"no matching log record in {self.log_file}:\n{self.log_file.read_text()[-3000:]}")
            time.sleep(0.1)


def http(
    method: str, url: str, body: dict[str, Any] | None = None, key: str | None = None, timeout: float = 60
) -> tuple[int, dict[str, str], bytes]:
    headers = {"content-type": "application/json"}
    if key:
        headers["x-api-key"] = key
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(url, data=data, headers=headers, method=method)
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, dict(response.headers), response.read()
    except urllib.error.HTTPError as err:
        return err.code, dict(err.headers), err.read()


def wait_gone(pid: int, timeout: float = 60) -> None:
    from pensieve.utils.pidfile import process_alive

    deadline = time.monotonic() + timeout
    while process_alive(pid):
        assert time.monotonic() < deadline, f"PID {pid} still running"
        time.sleep(0.1)


@pytest.fixture
def pensieve_home(tmp_path: Path, tiny_model_dir: Path) -> Pensieve:
    return Pensieve(tmp_path / "home", tiny_model_dir)
