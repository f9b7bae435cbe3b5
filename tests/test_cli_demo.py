"""``distreload demo``'s arguments (the demo itself is tested in test_demo.py)."""

from __future__ import annotations

import pytest

from distreload.cli import main
from distreload.cli.demo import DEFAULT_REDIS_PORT


def test_help_names_the_stable_embedded_redis_port(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["demo", "--help"]) == 0
    text = capsys.readouterr().out
    assert "--redis-port PORT" in text and f"default: {DEFAULT_REDIS_PORT}" in text


@pytest.mark.parametrize("argv", [["--redis-port", "70000"], ["--redis-port", "x"], ["--hosts", "0"]])
def test_bad_numbers_are_usage_errors(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["demo", *argv]) == 2
    err = capsys.readouterr().err
    assert err.startswith("usage: distreload demo ") and err.splitlines()[-1].startswith("distreload demo: ")
