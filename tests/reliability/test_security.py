"""Security, checked on real servers: loopback by default and refusal to expose an unkeyed
server, keys on every documented operation (compared in constant time), request model names
that cannot leave the model store, body caps, CORS off by default, no secrets in /health, and
no key or content in the log file unless content logging is switched on.

Nothing here listens on anything but loopback: the refusal is checked before any bind.
"""

from __future__ import annotations

import hmac
import json
import signal
import socket
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from pensieve.server import middleware
from pensieve.server.exposure import check_exposure, is_loopback
from pensieve.server.openapi import openapi_document
from pensieve.utils import PensieveError, load_settings
from pensieve.utils.pidfile import read_pid_file
from tests.reliability.conftest import (
    ANTHROPIC,
    OPENAI,
    Server,
    chat,
    error_of,
    headers_for,
    post_json,
    post_raw,
    store_server,
    wait_until,
)
from tests.support import API_KEY, CliServer, ServerThread, free_port, health

KEY = "sk-canary-key-5e1f07"
WRONG_KEY = "sk-wrong-key-77aa31"
CONTENT = "marmot-canary-2291"


def _get(server: Server, path: str, headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], bytes]:
    request = urllib.request.Request(server.base_url + path, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, dict(response.headers), response.read()
    except urllib.error.HTTPError as err:
        return err.code, dict(err.headers), err.read()


# -- binding ----------------------------------------------------------------------------------


def test_the_default_address_is_loopback() -> None:
    assert load_settings(env={}).server.host == "127.0.0.1"


@pytest.mark.parametrize("host", ["127.0.0.1", "127.0.0.2", "::1", "localhost"])
def test_loopback_addresses_need_no_key_of_ones_own(host: str) -> None:
    assert is_loopback(host)
    check_exposure(host, None)


@pytest.mark.parametrize("host", ["0.0.0.0", "::", "", "10.1.2.3", "pensieve.invalid"])
def test_other_addresses_need_a_key_of_ones_own(host: str) -> None:
    assert not is_loopback(host)
    for key in (None, "", API_KEY):  # API_KEY is the built-in, public one
        with pytest.raises(PensieveError, match="refusing to listen"):
            check_exposure(host, key)
    check_exposure(host, KEY)


@pytest.mark.parametrize("key", ["", API_KEY])
def test_pensieve_start_refuses_a_non_loopback_address_without_a_key(tiny_model_dir: Path, tmp_path: Path, key: str) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "pensieve.cli", "start", "--model", str(tiny_model_dir), "--host", "0.0.0.0",
         "--port", str(free_port()), "--api-key", key],
        env={"PATH": "/usr/bin:/bin", "PENSIEVE_HOME": str(tmp_path), "PENSIEVE_PERFORMANCE_WARMUP": "false"},
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert result.returncode != 0
    assert "refusing to listen on 0.0.0.0" in result.stderr and "server.api_key" in result.stderr


# -- keys -------------------------------------------------------------------------------------


def _operations() -> list[tuple[str, str, bool]]:
    """(method, path, needs a key) for every documented operation."""
    found = []
    for path, item in openapi_document()["paths"].items():
        for method, operation in item.items():
            if method != "parameters":
                found.append((method.upper(), path.replace("{model_id}", "some-model"), operation.get("security") != []))
    return found


@pytest.mark.parametrize(("method", "path", "protected"), _operations())
def test_every_documented_operation_needs_the_key_unless_documented_open(rserver: ServerThread, method: str, path: str, protected: bool) -> None:
    def call(headers: dict[str, str]) -> tuple[int, bytes]:
        if method == "POST":
            status, _, raw = post_raw(rserver, path, json.dumps(chat()).encode(), {"content-type": "application/json", **headers})
            return status, raw
        status, _, raw = _get(rserver, path, headers)
        return status, raw

    for headers in ({}, {"x-api-key": WRONG_KEY}, {"Authorization": f"Bearer {WRONG_KEY}"}, {"Authorization": f"Basic {API_KEY}"}):
        status, raw = call(headers)
        if not protected:
            assert status == 200
            continue
        assert status == 401, raw[:300]
        if path.startswith("/v1/chat/"):
            assert error_of(path, json.loads(raw))[0] == "authentication_error"
        else:
            assert json.loads(raw)["error"]["type"] == "authentication_error"
    for good in ({"x-api-key": API_KEY}, {"Authorization": f"Bearer {API_KEY}"}):
        assert call(good)[0] != 401


def test_keys_are_compared_in_constant_time(rserver: ServerThread, monkeypatch: pytest.MonkeyPatch) -> None:
    """The middleware compares with hmac.compare_digest (whose time does not depend on where the
    strings differ); this checks every key check goes through it."""
    compared: list[tuple[bytes, bytes]] = []
    real = hmac.compare_digest

    def spy(a: bytes, b: bytes) -> bool:
        compared.append((a, b))
        return real(a, b)

    monkeypatch.setattr(middleware.hmac, "compare_digest", spy)
    assert post_json(rserver, ANTHROPIC, chat(), **{"x-api-key": WRONG_KEY})[0] == 401
    assert post_json(rserver, OPENAI, chat())[0] == 200
    assert compared == [(WRONG_KEY.encode(), API_KEY.encode()), (API_KEY.encode(), API_KEY.encode())]


# -- model names ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def store(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[ServerThread, Path]]:
    """A store next to a loadable model outside it, and an entry that links out to it."""
    root = tmp_path_factory.mktemp("store-security")
    outside = root / "outside"
    outside.symlink_to(tiny_model_dir, target_is_directory=True)
    with store_server(tiny_model_dir, root, ["good"], model__unknown="error") as (server, models):
        (models / "linked").symlink_to(outside, target_is_directory=True)
        yield server, outside


ESCAPES = ["../outside", "../../outside", "models/../outside", "%2e%2e/outside", "..", "./good", "linked", "org\\..\\outside"]


@pytest.mark.parametrize("path", [ANTHROPIC, OPENAI])
@pytest.mark.parametrize("name", [*ESCAPES, "<absolute>"])
def test_request_model_names_cannot_leave_the_store(store: tuple[ServerThread, Path], path: str, name: str) -> None:
    server, outside = store
    name = str(outside) if name == "<absolute>" else name
    status, body = post_json(server, path, chat(model=name))
    assert status == 404 and error_of(path, body)[0] == "not_found_error"
    status, _, raw = _get(server, "/v1/models/" + urllib.request.quote(name, safe=""), {"x-api-key": API_KEY})
    assert status == 404, raw[:300]
    loaded = [m for m in health(server.base_url)["models"] if m["state"] == "loaded"]
    assert [m["name"] for m in loaded] == ["good"]  # nothing from outside was ever loaded


# -- limits, CORS, what is shown --------------------------------------------------------------


@pytest.fixture(scope="module")
def cli(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[CliServer]:
    """`pensieve start` with a key of its own, a 1 MB body cap, a config file and a log file."""
    home = tmp_path_factory.mktemp("security-home")
    (home / "pensieve.toml").write_text("[logging]\nlog_content = false\n")
    server = CliServer(
        home, "--model", str(tiny_model_dir), "--api-key", KEY, "--config", str(home / "pensieve.toml"),
        "--log-file", str(home / "pensieve.log"),
        env={"PENSIEVE_PERFORMANCE_WARMUP": "false", "PENSIEVE_SERVER_MAX_BODY_MB": "1"},
    ).start()  # fmt: skip
    yield server
    server.stop()


def _listening(port: int) -> set[str]:
    """Addresses with a socket listening on `port`, from the kernel's own table (Linux)."""
    found = set()
    for table, family in (("tcp", socket.AF_INET), ("tcp6", socket.AF_INET6)):
        for line in Path("/proc/net", table).read_text().splitlines()[1:]:
            local, state = line.split()[1], line.split()[3]
            address, _, hex_port = local.partition(":")
            if state == "0A" and int(hex_port, 16) == port:  # 0A: LISTEN
                raw = bytes.fromhex(address)  # 32-bit words in host (little-endian) order
                found.add(socket.inet_ntop(family, b"".join(raw[i : i + 4][::-1] for i in range(0, len(raw), 4))))
    return found


def test_pensieve_start_listens_on_loopback_only_by_default(cli: CliServer) -> None:
    info = read_pid_file(cli.home / "state" / "pensieve.pid")
    assert info is not None and info.host == "127.0.0.1"
    if Path("/proc/net/tcp").exists():
        assert _listening(cli.port) == {"127.0.0.1"}


def _keyed(path: str) -> dict[str, str]:
    return {**headers_for(path), **({"Authorization": f"Bearer {KEY}"} if path == OPENAI else {"x-api-key": KEY})}


@pytest.mark.parametrize("path", [ANTHROPIC, OPENAI])
def test_bodies_over_the_configured_cap_are_413s(cli: CliServer, path: str) -> None:
    big = json.dumps(chat("x" * 1_200_000)).encode()
    status, _, raw = post_raw(cli, path, big, _keyed(path))
    kind, message = error_of(path, json.loads(raw))
    assert status == 413 and kind == "request_too_large" and "1048576-byte limit" in message
    assert post_raw(cli, path, json.dumps(chat("x" * 900_000)).encode(), _keyed(path))[0] != 413


def test_cors_is_off_unless_origins_are_configured(rserver: ServerThread) -> None:
    """Preflights and live settings are in tests/cli/test_observability.py; here, default-off on
    real answers (success and error alike) and the wildcard."""
    origin = {"Origin": "https://site.example"}
    _, headers, _ = post_raw(rserver, ANTHROPIC, json.dumps(chat()).encode(), headers_for(ANTHROPIC, **origin))
    assert not any(h.lower().startswith("access-control-") for h in headers)
    status, headers, _ = _get(rserver, "/v1/models", {**origin, "Access-Control-Request-Method": "GET"})
    assert status == 401 and not any(h.lower().startswith("access-control-") for h in headers)
    rserver.settings.server.cors_origins = ["*"]
    try:
        _, headers, _ = post_raw(rserver, ANTHROPIC, json.dumps(chat()).encode(), headers_for(ANTHROPIC, **origin))
        assert headers["Access-Control-Allow-Origin"] == "*"
        _, headers, _ = _get(rserver, "/v1/models", origin)  # a 401 is readable by the page too
        assert headers["Access-Control-Allow-Origin"] == "*"
    finally:
        rserver.settings.server.cors_origins = []


def test_open_endpoints_reveal_no_secrets(cli: CliServer) -> None:
    for path in ("/health", "/", "/openapi.json"):
        status, _, raw = _get(cli, path)
        assert status == 200 and KEY.encode() not in raw and b"api_key" not in raw
    status, _, raw = _get(cli, "/metrics", {"x-api-key": KEY})
    assert status == 200 and KEY.encode() not in raw


def _log_records(cli: CliServer) -> list[dict[str, Any]]:
    path = cli.home / "pensieve.log"
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.exists() else []


def _logged(cli: CliServer, request_id: str) -> bool:
    return any(r["request_id"] == request_id and r["component"] == "http" for r in _log_records(cli))


def test_logs_hold_no_key_and_no_content_unless_content_logging_is_on(cli: CliServer) -> None:
    ids = []
    for path, body in (
        (ANTHROPIC, chat(f"say {CONTENT}")),
        (ANTHROPIC, chat(f"say {CONTENT}", stream=True)),
        (OPENAI, chat(f"say {CONTENT}", stream=True)),
        ("/v1/messages/count_tokens", {"model": "m", "messages": [{"role": "user", "content": CONTENT}]}),
        (ANTHROPIC, chat(f"{CONTENT} " * 20_000)),  # 400: prompt too long
        (ANTHROPIC, {**chat(), "temperature": CONTENT}),  # 400 whose message quotes the value
    ):
        status, headers, _ = post_raw(cli, path, json.dumps(body).encode(), _keyed(path))
        assert status in (200, 400)
        ids.append(headers["request-id"])
    assert post_raw(cli, ANTHROPIC, json.dumps(chat(CONTENT)).encode(), headers_for(ANTHROPIC, **{"x-api-key": WRONG_KEY}))[0] == 401
    for request_id in ids:
        wait_until(lambda rid=request_id: _logged(cli, rid), what=f"the log line of {request_id}")
    text = (cli.home / "pensieve.log").read_text() + cli.log.read_text()  # the file, and the terminal
    for secret in (KEY, WRONG_KEY, CONTENT):
        assert secret not in text, secret

    # Switched on (a SIGHUP re-reads the config file), the request body is logged; the key never.
    (cli.home / "pensieve.toml").write_text("[logging]\nlog_content = true\n")
    assert cli.proc is not None
    cli.proc.send_signal(signal.SIGHUP)
    wait_until(lambda: any("logging.log_content" in r["message"] for r in _log_records(cli)), what="the reload")
    _, headers, _ = post_raw(cli, ANTHROPIC, json.dumps(chat(f"now {CONTENT}")).encode(), _keyed(ANTHROPIC))
    wait_until(lambda: _logged(cli, headers["request-id"]), what="the logged request")
    text = (cli.home / "pensieve.log").read_text()
    assert CONTENT in text and KEY not in text
