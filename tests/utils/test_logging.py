"""The log file: one JSON object a line, the API key masked, rotation by size."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from pathlib import Path

import pytest

from pensieve.utils.logging import current_log_file, logger, reconfigure_logging, setup_logging


@pytest.fixture
def log_file(tmp_path: Path) -> Iterator[Path]:
    path = tmp_path / "logs" / "pensieve.log"
    setup_logging("DEBUG", path, console=False, secrets=["sk-very-secret"])
    yield path
    setup_logging("INFO", None, console=True)


def _records(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_json_lines_carry_component_request_id_and_metadata(log_file: Path) -> None:
    with logger.contextualize(request_id="req_123"):
        logger.bind(model="tiny", output_tokens=7).info("finished {}", "ok")
    logger.warning("no request here")
    first, second = _records(log_file)
    assert first["level"] == "INFO" and first["message"] == "finished ok"
    assert first["request_id"] == "req_123"
    assert first["component"] == "tests"  # not a pensieve.* module: the first part of its name
    assert first["metadata"] == {"model": "tiny", "output_tokens": 7}
    assert first["timestamp"][:4].isdigit() and "T" in first["timestamp"]
    assert second["request_id"] is None and "metadata" not in second
    assert current_log_file() == log_file


def test_standard_library_logging_lands_in_the_file_with_its_component(log_file: Path) -> None:
    logging.getLogger("aiohttp.server").error("boom")
    (record,) = _records(log_file)
    assert record["component"] == "aiohttp.server" and record["level"] == "ERROR"


def test_secret_is_masked_in_every_message(log_file: Path) -> None:
    logger.info("client sent sk-very-secret in a header")
    try:
        raise ValueError("bad key")
    except ValueError:
        logger.exception("failure while checking sk-very-secret")
    text = log_file.read_text()
    assert "sk-very-secret" not in text
    records = _records(log_file)
    assert records[0]["message"] == "client sent *** in a header"
    assert "ValueError: bad key" in records[1]["exception"]


def test_reconfigure_changes_level_and_keeps_the_file(log_file: Path) -> None:
    logger.debug("before")
    reconfigure_logging(level="WARNING", file=None, rotation="20 MB", retention=5, compression="gz", secrets=["new-secret"])
    logger.info("hidden now")
    logger.warning("shown with new-secret masked")
    messages = [r["message"] for r in _records(log_file)]
    assert messages == ["before", "shown with *** masked"]


def test_rotation_by_size_keeps_compressed_files(tmp_path: Path) -> None:
    path = tmp_path / "rot" / "pensieve.log"
    setup_logging("INFO", path, console=False, rotation="2 KB", retention=2, compression="gz")
    try:
        for i in range(200):
            logger.info("line {} {}", i, "x" * 40)
    finally:
        setup_logging("INFO", None, console=True)
    rotated = sorted(p.name for p in path.parent.iterdir() if p.name != "pensieve.log")
    assert rotated and all(name.endswith(".gz") for name in rotated)
    assert len(rotated) <= 2
    assert path.stat().st_size <= 2048 + 400
