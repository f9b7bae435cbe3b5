"""Facts about the worker process: its build fingerprint and whether it has sibling workers."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from distreload import process


def test_build_id_follows_the_projects_source_files(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("DISTRELOAD_BUILD_ID", raising=False)
    monkeypatch.chdir(tmp_path)
    module = tmp_path / "fingerprinted_app.py"
    module.write_text("VALUE = 1\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    __import__("fingerprinted_app")
    try:
        before = process.compute_build_id()
        module.write_text("VALUE = 2\n")  # a code change: the restarted worker reports another build
        changed = process.compute_build_id()
        module.write_text("VALUE = 1\n")
        assert before != changed and process.compute_build_id() == before
    finally:
        del sys.modules["fingerprinted_app"]
    # Files outside the project (the virtualenv, the standard library) do not count.
    assert process.compute_build_id() != before


def test_an_explicit_build_id_wins(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DISTRELOAD_BUILD_ID", "release-42")
    assert process.compute_build_id() == "release-42"
    monkeypatch.setenv("DISTRELOAD_BUILD_ID", "x" * 100)
    assert process.compute_build_id() == "x" * 64


def test_sibling_workers_are_guessed_from_how_the_process_was_started(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(sys, "argv", ["uvicorn", "app:app"])
    monkeypatch.delitem(sys.modules, "gunicorn", raising=False)
    assert not process.has_sibling_workers()
    monkeypatch.setattr(sys, "argv", ["gunicorn", "app:app", "-w", "4"])
    assert process.has_sibling_workers()
    monkeypatch.setattr(sys, "argv", ["gunicorn", "app:app", "-w", "1"])
    monkeypatch.setenv("WEB_CONCURRENCY", "3")
    assert process.has_sibling_workers()


def test_identity_names_host_and_pid() -> None:
    identity = process.WorkerIdentity(host="web-1", pid=42)
    assert str(identity) == "web-1:42"
