"""`pensieve doctor`: check the machine, the install and the configuration, one line each.

Each check says what it found and, when something is wrong, what to do. A check that cannot
run (MLX missing, a broken config file) fails on its own line and the others still run, so one
problem does not hide the next. Exit code 1 if any check failed, else 0 (warnings included).
"""

from __future__ import annotations

import os
import platform
import socket
import sys
from collections.abc import Callable
from dataclasses import dataclass

import click

from pensieve.cli.common import fetch_health, human_bytes, log_file_for
from pensieve.utils import PensieveError, Settings, load_settings
from pensieve.utils.blas import mlx_runs_on_cpu, openblas_library
from pensieve.utils.paths import model_store_dir
from pensieve.utils.pidfile import pid_file_path, running_server

MARKS = {"ok": "✓", "warn": "!", "fail": "✗", "info": "·"}


@dataclass(slots=True)
class Check:
    name: str
    level: str
    detail: str


def _platform() -> Check:
    detail = f"{platform.system()} {platform.release()} {platform.machine()}, Python {platform.python_version()}"
    if sys.platform == "darwin" and platform.machine() != "arm64":
        return Check("platform", "warn", detail + ": MLX needs Apple Silicon (arm64) for Metal")
    return Check("platform", "ok", detail)


def _mlx() -> Check:
    try:
        from pensieve.metal import device_info
    except Exception as exc:  # a missing or broken MLX wheel raises all sorts
        return Check("mlx", "fail", f"cannot import MLX ({exc}); reinstall: pip install 'pensieve-metal'")
    info = device_info()
    level = "ok" if info.kind == "gpu" or sys.platform != "darwin" else "warn"
    return Check("mlx", level, f"MLX {info.mlx_version} on {info.backend} ({info.name})")


def _memory(settings: Settings) -> Check:
    try:
        from pensieve.metal import memory_budget_bytes, total_system_memory
    except Exception as exc:
        return Check("memory", "fail", f"cannot read memory figures: {exc}")
    total = total_system_memory()
    budget = memory_budget_bytes(settings.model.memory_budget_fraction, settings.model.memory_budget_gb)
    level = "warn" if budget > total else "ok"
    return Check("memory", level, f"{human_bytes(total)} total, budget {human_bytes(budget)}")


def _model_store(settings: Settings) -> Check:
    store = model_store_dir()
    count = sum(1 for _ in store.iterdir()) if store.is_dir() else 0
    detail = f"{store} ({count} entries)" if store.is_dir() else f"{store} (not created yet)"
    try:
        from pensieve.modelmgr.sources import resolve_source

        source = resolve_source(settings.model.default, model_store_dir(), allow_paths=True)
    except PensieveError as exc:
        return Check("models", "fail", f"{detail}; default model: {exc.message}")
    except Exception as exc:
        return Check("models", "fail", f"{detail}; cannot resolve the default model: {exc}")
    return Check("models", "ok", f"{detail}; default model {source.name} ({source.kind})")


def _windows(settings: Settings) -> Check:
    """What the default model can hold on this budget: the question a Claude Code user has."""
    try:
        from pensieve.modelmgr.catalog import windows
        from pensieve.modelmgr.facts import model_facts
        from pensieve.modelmgr.sources import resolve_source

        source = resolve_source(settings.model.default, model_store_dir(), allow_paths=True)
        fits = windows(model_facts(source), settings)
    except PensieveError as exc:
        return Check("windows", "fail", exc.message)
    n = settings.performance.max_concurrent_requests
    parts = [
        f"{'unquantized' if w.kv_bits is None else f'{w.kv_bits}-bit'} KV "
        + (f"{w.single} tokens alone, {w.concurrent} each at {n}" if w.single else "does not fit")
        for w in fits
    ]
    level = "ok" if fits[0].single else ("warn" if any(w.single for w in fits) else "fail")
    return Check("windows", level, f"{source.name}: " + "; ".join(parts))


def _port(settings: Settings) -> Check:
    host, port = settings.server.host, settings.server.port
    live, _ = running_server()
    if live is not None and live.port == port:
        state = fetch_health(live.url).get("status", "not answering")
        return Check("port", "ok", f"{host}:{port} is served by Pensieve (PID {live.pid}, {state})")
    try:
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        with socket.socket(family, socket.SOCK_STREAM) as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind((host, port))
    except OSError as exc:
        return Check("port", "fail", f"{host}:{port} is not available ({exc.strerror or exc}); free it or set server.port")
    return Check("port", "ok", f"{host}:{port} is free")


def _daemon() -> Check:
    live, stale = running_server()
    if live is not None:
        return Check("daemon", "ok", f"running, PID {live.pid} at {live.url}")
    if stale is not None:
        return Check("daemon", "warn", f"stale PID file {pid_file_path()} (PID {stale.pid} is gone); `pensieve status` removes it")
    return Check("daemon", "info", "not running")


def _logs(settings: Settings) -> Check:
    path = log_file_for(settings)
    folder = path.parent
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    if not os.access(folder, os.W_OK):
        return Check("logs", "fail", f"{path}: {folder} is not writable")
    return Check("logs", "ok", str(path))


def _cpu_speedup() -> Check:
    """Whether the server will preload OpenBLAS for MLX's CPU backend (pensieve.utils.blas)."""
    if not mlx_runs_on_cpu():
        return Check("cpu-blas", "info", "MLX computes on the GPU here; no BLAS preload needed")
    found = openblas_library()
    if found:
        return Check("cpu-blas", "ok", f"OpenBLAS {found} will be preloaded; small models run in float32")
    return Check(
        "cpu-blas", "warn",
        "OpenBLAS not found: prefill on the CPU is ~10x slower; install it "
        "(Debian/Ubuntu: sudo apt-get install libopenblas0-pthread)",
    )  # fmt: skip


def run_checks(config_file: str | None) -> list[Check]:
    checks = [_platform()]
    try:
        settings = load_settings(config_file)
        where = settings.config_file or "no config file (defaults and environment)"
        checks.append(Check("config", "ok", str(where)))
    except PensieveError as exc:
        checks.append(Check("config", "fail", exc.message))
        settings = Settings()
    steps: list[Callable[[], Check]] = [
        _mlx,
        lambda: _memory(settings),
        lambda: _model_store(settings),
        lambda: _windows(settings),
        lambda: _port(settings),
        _daemon,
        lambda: _logs(settings),
        _cpu_speedup,
    ]
    checks.extend(step() for step in steps)
    return checks


@click.command()
@click.option("--config", "config_file", type=click.Path(dir_okay=False), help="TOML settings file to check.")
def doctor(config_file: str | None) -> None:
    """Check platform, MLX, memory, models, port, configuration and logs."""
    checks = run_checks(config_file)
    for check in checks:
        click.echo(f"{MARKS[check.level]} {check.name:<9} {check.detail}")
    failed = [c.name for c in checks if c.level == "fail"]
    if failed:
        click.echo(f"\n{len(failed)} problem(s): {', '.join(failed)}", err=True)
        sys.exit(1)
