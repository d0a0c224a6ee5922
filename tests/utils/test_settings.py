"""Settings: precedence, per-key sources with file lines, and errors that point at the line."""

from __future__ import annotations

from pathlib import Path

import pytest

from pensieve.utils import ConfigError, load_settings
from pensieve.utils.settings import all_keys, key_lines


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "pensieve.toml"
    path.write_text(text)
    return path


def test_precedence_cli_over_env_over_file_over_default(tmp_path: Path) -> None:
    path = _write(tmp_path, '[server]\nport = 9001\nhost = "0.0.0.0"\n\n[model]\nunknown = "error"\n')
    env = {"PENSIEVE_PORT": "9002", "PENSIEVE_SERVER_HOST": "127.0.0.2", "PENSIEVE_HOME": str(tmp_path)}
    settings = load_settings(path, overrides={"server.port": 9003}, env=env)
    assert settings.server.port == 9003
    assert settings.server.host == "127.0.0.2"
    assert settings.model.unknown == "error"
    assert settings.server.drain_timeout_s == 30.0
    sources = settings.sources()
    assert sources["server.port"] == "cli"
    assert sources["server.host"] == "env:PENSIEVE_SERVER_HOST"
    assert sources["model.unknown"] == f"{path}:6"
    assert sources["server.drain_timeout_s"] == "default"
    assert settings.config_file == path


def test_api_key_env_names_in_order(tmp_path: Path) -> None:
    home = {"PENSIEVE_HOME": str(tmp_path)}
    assert load_settings(env={**home, "ANTHROPIC_API_KEY": "a"}).server.api_key == "a"
    both = load_settings(env={**home, "ANTHROPIC_API_KEY": "a", "ANTHROPIC_AUTH_TOKEN": "b"})
    assert both.server.api_key == "b" and both.sources()["server.api_key"] == "env:ANTHROPIC_AUTH_TOKEN"
    ours = load_settings(env={**home, "ANTHROPIC_AUTH_TOKEN": "b", "PENSIEVE_API_KEY": "c"})
    assert ours.server.api_key == "c"


def test_config_file_found_by_env_then_os_folder(tmp_path: Path) -> None:
    explicit = _write(tmp_path, "[server]\nport = 1111\n")
    home = tmp_path / "home"
    assert load_settings(env={"PENSIEVE_HOME": str(home), "PENSIEVE_CONFIG": str(explicit)}).server.port == 1111
    assert load_settings(env={"PENSIEVE_HOME": str(home)}).config_file is None
    (home / "config").mkdir(parents=True)
    (home / "config" / "pensieve.toml").write_text("[server]\nport = 2222\n")
    found = load_settings(env={"PENSIEVE_HOME": str(home)})
    assert found.server.port == 2222
    assert found.sources()["server.port"] == f"{home / 'config' / 'pensieve.toml'}:2"


def test_validation_error_names_key_file_and_line(tmp_path: Path) -> None:
    path = _write(tmp_path, "# comment\n[server]\nhost = 'x'\n\nport = 70000\n")
    with pytest.raises(ConfigError) as info:
        load_settings(path, env={})
    assert f"server.port (from {path}:5)" in info.value.message
    assert "65535" in info.value.message


def test_invalid_toml_names_the_line(tmp_path: Path) -> None:
    path = _write(tmp_path, "[server]\nport = 1\nhost = \n")
    with pytest.raises(ConfigError) as info:
        load_settings(path, env={})
    assert f"{path}:3: invalid TOML" in info.value.message


def test_unknown_keys_and_sections_say_what_exists(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        load_settings(_write(tmp_path, "[server]\nprot = 1\n"), env={})
    assert "server.prot" in info.value.message and ":2)" in info.value.message
    assert "drain_timeout_s" in info.value.message
    with pytest.raises(ConfigError) as info:
        load_settings(_write(tmp_path, "[model]\n\n[sever]\nport = 1\n"), env={})
    assert ":3: unknown section [sever]" in info.value.message
    # The design document's example file used other names: say which replaced them.
    with pytest.raises(ConfigError) as info:
        load_settings(_write(tmp_path, '[server]\naddress = "localhost:8000"\n'), env={})
    assert "use server.host and server.port instead" in info.value.message


def test_env_value_errors_name_the_variable() -> None:
    with pytest.raises(ConfigError) as info:
        load_settings(env={"PENSIEVE_PORT": "eighty"})
    assert "server.port (from env:PENSIEVE_PORT)" in info.value.message


def test_key_lines_follow_tables_dotted_keys_and_multiline_values() -> None:
    text = (
        '[model]\n'
        'default = "x"\n'
        '[model.aliases]\n'
        '"claude-*" = "y"\n'
        '[logging]\n'
        'level = """\n'
        'port = 3\n'
        '"""\n'
        'server.port = 4\n'
        '# retention = 1\n'
        'compression = [\n'
        '  "gz",\n'
        ']  # a comment already there\n'
        '"log.content" = true\n'
    )
    lines = key_lines(text)
    assert lines["model.default"] == 2
    assert lines["model.aliases"] == 3
    assert lines["model.aliases.claude-*"] == 4
    assert "logging.port" not in lines
    assert lines["logging.server.port"] == 9
    assert "logging.retention" not in lines  # a commented-out key is not defined
    assert lines["logging.compression"] == 11
    assert lines["logging.log.content"] == 14


def test_flat_masks_the_api_key(tmp_path: Path) -> None:
    settings = load_settings(overrides={"server.api_key": "hunter2"}, env={"PENSIEVE_HOME": str(tmp_path)})
    flat = settings.flat()
    assert list(flat) == all_keys()
    assert flat["server.api_key"] == "***"
    assert settings.flat(redact=False)["server.api_key"] == "hunter2"
    assert "hunter2" not in str(flat)
