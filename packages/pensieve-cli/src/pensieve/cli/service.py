"""`pensieve service install|uninstall|print`: run Pensieve under launchd or systemd.

The service manager runs `pensieve start` in the foreground (it is the supervisor: no
--background), with this interpreter and the config file in effect now, and restarts it if it
fails. SIGTERM from the manager drains like `pensieve stop`; `systemctl --user reload` sends
SIGHUP. Secrets are not written into the unit: the API key belongs in the config file.
"""

from __future__ import annotations

import os
import plistlib
import shutil
import subprocess
import sys
from pathlib import Path

import click

from pensieve.cli.common import default_log_file, settings_or_exit
from pensieve.utils import Settings

UNIT_NAME = "pensieve.service"
LAUNCHD_LABEL = "io.pensieve.server"
PLATFORMS = ("linux", "macos")


def current_platform() -> str:
    return "macos" if sys.platform == "darwin" else "linux"


def _command(settings: Settings, python: str) -> list[str]:
    command = [python, "-m", "pensieve.cli", "start"]
    if settings.config_file is not None:
        command += ["--config", str(settings.config_file.expanduser().resolve())]
    if not settings.logging.file:
        command += ["--log-file", str(default_log_file())]
    return command


def _environment() -> dict[str, str]:
    """Environment the service needs to find the same files as this shell (never secrets)."""
    return {name: os.environ[name] for name in ("PENSIEVE_HOME", "PENSIEVE_CONFIG") if os.environ.get(name)}


def _systemd_quote(arg: str) -> str:
    escaped = arg.replace("%", "%%").replace("$", "$$")
    if any(c in escaped for c in ' \t"\\\''):
        escaped = '"' + escaped.replace("\\", "\\\\").replace('"', '\\"') + '"'
    return escaped


def systemd_unit(settings: Settings, python: str = sys.executable) -> str:
    """A systemd user unit: foreground server, restarted on failure, drained on stop."""
    exec_start = " ".join(_systemd_quote(a) for a in _command(settings, python))
    env_lines = "".join(f"Environment={_systemd_quote(f'{k}={v}')}\n" for k, v in _environment().items())
    stop_timeout = int(settings.server.drain_timeout_s) + 15
    return (
        "[Unit]\n"
        "Description=Pensieve local LLM server (Anthropic and OpenAI APIs on MLX)\n"
        "After=network.target\n"
        "\n"
        "[Service]\n"
        "Type=simple\n"
        f"ExecStart={exec_start}\n"
        "ExecReload=/bin/kill -HUP $MAINPID\n"
        f"{env_lines}"
        "KillSignal=SIGTERM\n"
        f"TimeoutStopSec={stop_timeout}\n"
        "Restart=on-failure\n"
        "RestartSec=5\n"
        "\n"
        "[Install]\n"
        "WantedBy=default.target\n"
    )


def launchd_plist(settings: Settings, python: str = sys.executable) -> str:
    """A launchd agent: starts at login, restarted when it exits unsuccessfully."""
    log = default_log_file()
    plist: dict[str, object] = {
        "Label": LAUNCHD_LABEL,
        "ProgramArguments": _command(settings, python),
        "RunAtLoad": True,
        "KeepAlive": {"SuccessfulExit": False},
        "ThrottleInterval": 5,
        "ExitTimeOut": int(settings.server.drain_timeout_s) + 15,
        "ProcessType": "Interactive",
        "StandardOutPath": str(log.with_name("pensieve.launchd.log")),
        "StandardErrorPath": str(log.with_name("pensieve.launchd.log")),
    }
    if env := _environment():
        plist["EnvironmentVariables"] = env
    return plistlib.dumps(plist).decode()


def unit_path(platform: str) -> Path:
    if platform == "macos":
        return Path.home() / "Library" / "LaunchAgents" / f"{LAUNCHD_LABEL}.plist"
    config_home = Path(os.environ.get("XDG_CONFIG_HOME") or Path.home() / ".config")
    return config_home / "systemd" / "user" / UNIT_NAME


def render(platform: str, settings: Settings) -> str:
    return launchd_plist(settings) if platform == "macos" else systemd_unit(settings)


@click.group()
def service() -> None:
    """Run Pensieve at login under launchd (macOS) or systemd (Linux)."""


_platform_option = click.option(
    "--platform", "platform_", type=click.Choice(PLATFORMS), default=None, help="Target platform (default: this one)."
)
_config_option = click.option("--config", "config_file", type=click.Path(dir_okay=False), help="TOML settings file the service uses.")


@service.command("print")
@_platform_option
@_config_option
def print_(platform_: str | None, config_file: str | None) -> None:
    """Show the service file without installing it."""
    click.echo(render(platform_ or current_platform(), settings_or_exit(config_file)), nl=False)


@service.command()
@_config_option
@click.option("--no-enable", is_flag=True, help="Only write the file; do not enable or start it.")
def install(config_file: str | None, no_enable: bool) -> None:
    """Write the service file and (unless --no-enable) enable and start it."""
    platform = current_platform()
    path = unit_path(platform)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(render(platform, settings_or_exit(config_file)), encoding="utf-8")
    click.echo(f"Wrote {path}")
    if no_enable:
        click.echo(f"Enable it with: {' '.join(_enable_commands(platform, path)[-1])}")
        return
    for command in _enable_commands(platform, path):
        _run(command)
    click.echo("Pensieve now runs at login; `pensieve status` shows it.")


@service.command()
@click.option("--no-disable", is_flag=True, help="Only remove the file; do not stop or disable it.")
def uninstall(no_disable: bool) -> None:
    """Stop and disable the service, then remove its file."""
    platform = current_platform()
    path = unit_path(platform)
    if not path.exists():
        click.echo(f"No service file at {path}; nothing to do.")
        return
    if not no_disable:
        if platform == "macos":
            _run(["launchctl", "bootout", f"gui/{os.getuid()}", str(path)], check=False)
        else:
            _run(["systemctl", "--user", "disable", "--now", UNIT_NAME], check=False)
    path.unlink()
    if platform == "linux" and not no_disable:
        _run(["systemctl", "--user", "daemon-reload"], check=False)
    click.echo(f"Removed {path}")


def _enable_commands(platform: str, path: Path) -> list[list[str]]:
    if platform == "macos":
        return [["launchctl", "bootstrap", f"gui/{os.getuid()}", str(path)]]
    return [["systemctl", "--user", "daemon-reload"], ["systemctl", "--user", "enable", "--now", UNIT_NAME]]


def _run(command: list[str], *, check: bool = True) -> None:
    if shutil.which(command[0]) is None:
        if check:
            raise click.ClickException(f"{command[0]} not found; run `{' '.join(command)}` where it exists")
        return
    result = subprocess.run(command, capture_output=True, text=True)
    if result.returncode != 0 and check:
        raise click.ClickException(f"`{' '.join(command)}` failed: {result.stderr.strip() or result.stdout.strip()}")
