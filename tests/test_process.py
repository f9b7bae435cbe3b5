"""Facts about the worker process: its build fingerprint and whether it has sibling workers."""

from __future__ import annotations

import sys
from pathlib import Path
from types import FrameType, SimpleNamespace

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


@pytest.mark.parametrize(
    ("argv", "environment", "workers"),
    [
        (["/venv/bin/uvicorn", "main:app"], {}, 1),
        (["/venv/bin/uvicorn", "main:app", "--reload"], {}, 1),
        (["/venv/bin/uvicorn", "main:app", "--reload", "--workers", "4"], {}, 1),  # the reloader runs one
        (["/venv/bin/uvicorn", "main:app", "--reload-dir", "src", "--workers=4"], {}, 4),  # no --reload
        (["/venv/bin/uvicorn", "main:app", "--workers", "4"], {}, 4),
        (["/venv/bin/uvicorn", "main:app", "--workers=4"], {}, 4),
        (["/venv/bin/uvicorn", "main:app"], {"WEB_CONCURRENCY": "3"}, 3),
        (["/venv/lib/python3.13/site-packages/uvicorn/__main__.py", "main:app", "--workers", "2"], {}, 2),
        (["/venv/bin/gunicorn", "main:app", "-k", "uvicorn_worker.UvicornWorker"], {}, 1),
        (["/venv/bin/gunicorn", "main:app", "-w", "4"], {}, 4),
        (["/venv/bin/gunicorn", "main:app", "-w4"], {}, 4),
        (["/venv/bin/gunicorn", "main:app", "--workers", "4"], {}, 4),
        (["/venv/bin/gunicorn", "main:app", "--workers=4"], {}, 4),
        (["/venv/bin/gunicorn", "main:app"], {"WEB_CONCURRENCY": "3"}, 3),
        (["/venv/bin/gunicorn", "main:app", "-w", "1"], {"WEB_CONCURRENCY": "3"}, 1),  # the flag wins
        (["/venv/bin/gunicorn", "main:app"], {"GUNICORN_CMD_ARGS": "--bind :80 --workers=3"}, 3),
        (["/venv/bin/gunicorn", "main:app", "-w2"], {"GUNICORN_CMD_ARGS": "-w 3"}, 2),
        (["/venv/bin/hypercorn", "main:app"], {}, 1),
        (["/venv/bin/hypercorn", "main:app", "-w", "0"], {}, 1),  # served in hypercorn's own process
        (["/venv/bin/hypercorn", "main:app", "-w4"], {}, 4),
        (["/venv/bin/hypercorn", "main:app", "--workers=4"], {}, 4),
        (["/venv/bin/granian", "--interface", "asgi", "main:app"], {}, 1),
        (["/venv/bin/granian", "--interface", "asgi", "--workers", "4", "main:app"], {}, 4),
        (["/venv/bin/granian", "--interface", "asgi", "--workers=4", "--reload", "main:app"], {}, 4),
        (["/venv/bin/granian", "--interface", "asgi", "main:app"], {"GRANIAN_WORKERS": "2"}, 2),
        (["/venv/bin/daphne", "main:app"], {"WEB_CONCURRENCY": "3"}, 1),
    ],
)
def test_the_worker_count_is_read_from_every_form_of_each_servers_command_line(
    argv: list[str], environment: dict[str, str], workers: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in ("WEB_CONCURRENCY", "GRANIAN_WORKERS", "GUNICORN_CMD_ARGS"):
        monkeypatch.delenv(name, raising=False)
    for name, value in environment.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setattr(sys, "argv", argv)
    assert process.worker_processes() == workers
    assert process.has_sibling_workers() is (workers > 1)


def test_a_server_distreload_cannot_read_is_guessed_from_the_process_having_a_supervisor(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(sys, "argv", ["main.py"])
    assert process.worker_processes() is None
    assert not process.has_sibling_workers()
    monkeypatch.setattr(process.multiprocessing, "parent_process", lambda: object())
    assert process.has_sibling_workers()


class UvicornServer:
    """What a uvicorn ``Server`` behind its signal handler gives: its config."""

    def __init__(self, workers: int, reload: bool) -> None:
        self.config = SimpleNamespace(workers=workers, should_reload=reload)

    def handle_exit(self, sig: int, frame: FrameType | None) -> None: ...


UvicornServer.__module__ = "uvicorn.server"


@pytest.mark.parametrize(("workers", "reload", "expected"), [(1, False, 1), (4, False, 4), (4, True, 1)])
def test_a_running_uvicorn_is_asked_for_its_own_settings(
    workers: int, reload: bool, expected: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``uvicorn.run(app, workers=4)`` from a script has no uvicorn command line to read."""
    server = UvicornServer(workers, reload)
    monkeypatch.setattr(sys, "argv", ["main.py"])
    monkeypatch.setattr(process, "server_objects", lambda: iter([server]))
    assert process.worker_processes() == expected


def test_a_hypercorn_worker_process_reads_the_config_its_supervisor_gave_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(sys, "argv", ["main.py"])
    monkeypatch.setattr(process, "hypercorn_worker_arguments", lambda: {"config": SimpleNamespace(workers=3)})
    assert process.worker_processes() == 3


def test_identity_names_host_and_pid() -> None:
    identity = process.WorkerIdentity(host="web-1", pid=42)
    assert str(identity) == "web-1:42"


def test_a_gunicorn_worker_is_asked_for_its_arbiters_worker_count(monkeypatch: pytest.MonkeyPatch) -> None:
    """A gunicorn.conf.py's ``workers = 4`` is on no command line: the worker's own config has it."""
    from gunicorn.workers.base import Worker

    worker = Worker.__new__(Worker)
    worker.cfg = SimpleNamespace(workers=4)  # type: ignore[assignment]
    server = SimpleNamespace(config=SimpleNamespace(callback_notify=worker.notify, workers=1))
    monkeypatch.setattr(sys, "argv", ["/venv/bin/gunicorn", "main:app", "-c", "gunicorn.conf.py"])
    monkeypatch.setattr(process, "server_objects", lambda: iter([server]))
    assert process.worker_processes() == 4
