"""`pensieve config`, `service` and `doctor`, run as a user runs them."""

from __future__ import annotations

import json
import plistlib
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import tomlkit

from tests.cli.conftest import Pensieve


def test_config_init_writes_the_template_once(pensieve_home: Pensieve) -> None:
    first = pensieve_home.run("config", "init")
    assert first.returncode == 0 and str(pensieve_home.config_file) in first.stdout
    doc = tomlkit.parse(pensieve_home.config_file.read_text())
    assert list(doc) == ["model", "server", "performance", "distributed", "logging"]
    again = pensieve_home.run("config", "init")
    assert again.returncode != 0 and "already exists" in again.stderr
    assert pensieve_home.run("config", "init", "--force").returncode == 0
    elsewhere = pensieve_home.home / "other.toml"
    assert pensieve_home.run("config", "init", "--path", str(elsewhere)).returncode == 0 and elsewhere.exists()


def test_config_show_explains_every_value(pensieve_home: Pensieve) -> None:
    pensieve_home.config_file.parent.mkdir(parents=True)
    pensieve_home.config_file.write_text('[server]\napi_key = "file-secret"\n\n[logging]\nlevel = "DEBUG"\n')
    pensieve_home.env["PENSIEVE_PORT"] = "9123"
    shown = pensieve_home.run("config", "show")
    assert shown.returncode == 0, shown.stderr
    out = shown.stdout
    assert f"# config file: {pensieve_home.config_file}" in out
    assert "port = 9123" in out and "# env:PENSIEVE_PORT" in out
    assert 'level = "DEBUG"' in out and f"# {pensieve_home.config_file}:5" in out
    assert "file-secret" not in out and f"# {pensieve_home.config_file}:2" in out
    assert "drain_timeout_s = 30.0" in out
    as_json = json.loads(pensieve_home.run("config", "show", "--json").stdout)
    assert as_json["settings"]["server.port"] == {"value": 9123, "source": "env:PENSIEVE_PORT"}
    assert as_json["settings"]["server.api_key"]["value"] == "***"

    del pensieve_home.env["PENSIEVE_PORT"]
    pensieve_home.config_file.write_text("[server]\n\nport = -1\n")
    broken = pensieve_home.run("config", "show")
    assert broken.returncode != 0
    assert f"server.port (from {pensieve_home.config_file}:3)" in broken.stderr


def test_systemd_unit_runs_this_interpreter_with_the_config(pensieve_home: Pensieve, tmp_path: Path) -> None:
    config = tmp_path / "my config.toml"
    config.write_text('[server]\napi_key = "never-in-a-unit"\ndrain_timeout_s = 10\n')
    printed = pensieve_home.run("service", "print", "--platform", "linux", "--config", str(config))
    assert printed.returncode == 0, printed.stderr
    unit = printed.stdout
    assert f'ExecStart={sys.executable} -m pensieve.cli start --config "{config}" --log-file ' in unit
    assert "Restart=on-failure" in unit and "KillSignal=SIGTERM" in unit and "TimeoutStopSec=25" in unit
    assert "ExecReload=/bin/kill -HUP $MAINPID" in unit and "WantedBy=default.target" in unit
    assert f"Environment=PENSIEVE_HOME={pensieve_home.home}" in unit
    assert "never-in-a-unit" not in unit

    xdg = tmp_path / "xdg"
    pensieve_home.env["XDG_CONFIG_HOME"] = str(xdg)
    installed = pensieve_home.run("service", "install", "--no-enable", "--config", str(config))
    assert installed.returncode == 0, installed.stderr
    path = xdg / "systemd" / "user" / "pensieve.service"
    assert path.read_text() == unit
    if shutil.which("systemd-analyze"):
        verify = subprocess.run(["systemd-analyze", "verify", str(path)], capture_output=True, text=True)
        assert verify.returncode == 0 and verify.stderr.strip() == "", verify.stderr
    removed = pensieve_home.run("service", "uninstall", "--no-disable")
    assert removed.returncode == 0 and not path.exists()


def test_launchd_plist_keeps_the_server_alive_on_failure(pensieve_home: Pensieve) -> None:
    printed = pensieve_home.run("service", "print", "--platform", "macos")
    assert printed.returncode == 0, printed.stderr
    plist = plistlib.loads(printed.stdout.encode())
    assert plist["Label"] == "io.pensieve.server"
    assert plist["ProgramArguments"][:4] == [sys.executable, "-m", "pensieve.cli", "start"]
    assert plist["KeepAlive"] == {"SuccessfulExit": False} and plist["RunAtLoad"] is True
    assert plist["EnvironmentVariables"] == {"PENSIEVE_HOME": str(pensieve_home.home)}
    assert plist["ExitTimeOut"] == 45


def test_doctor_reports_each_check_and_fails_on_problems(pensieve_home: Pensieve) -> None:
    pensieve_home.env["PENSIEVE_MODEL"] = str(pensieve_home.model)
    healthy = pensieve_home.run("doctor")
    assert healthy.returncode == 0, healthy.stdout + healthy.stderr
    lines = {line.split()[1]: line for line in healthy.stdout.splitlines() if line.strip()}
    assert set(lines) >= {"platform", "config", "mlx", "memory", "models", "port", "daemon", "logs", "cpu-blas"}
    assert "MLX 0." in lines["mlx"] or "MLX 1." in lines["mlx"]
    assert f"default model {pensieve_home.model.name}" in lines["models"]
    assert "is free" in lines["port"]
    assert "OpenBLAS" in lines["cpu-blas"]

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        pensieve_home.env["PENSIEVE_PORT"] = str(taken.getsockname()[1])
        busy = pensieve_home.run("doctor")
    assert busy.returncode == 1
    assert "✗ port" in busy.stdout and "not available" in busy.stdout

    pensieve_home.env["PENSIEVE_MODEL"] = "/no/such/model"
    pensieve_home.env["PENSIEVE_LOGGING_LEVEL"] = "LOUD"
    broken = pensieve_home.run("doctor")
    assert broken.returncode == 1
    assert "✗ config" in broken.stdout and "logging.level (from env:PENSIEVE_LOGGING_LEVEL)" in broken.stdout
