"""Facts about this worker process: who it is, which code it runs, and whether it has siblings."""

from __future__ import annotations

import contextlib
import hashlib
import multiprocessing
import os
import shlex
import socket
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .config import ENV_BUILD_ID
from .shutdown import gunicorn_worker_behind, hypercorn_worker_arguments, server_objects

# The host name a worker gives in `distreload status` and the logs, when the machine's own is no help (every
# container its own random one; the demo's several "hosts" on one machine).
ENV_HOST_NAME = "DISTRELOAD_HOST_NAME"


def host_name() -> str:
    return os.environ.get(ENV_HOST_NAME, "").strip()[:253] or socket.gethostname()


@dataclass(frozen=True)
class WorkerIdentity:
    """How ``distreload status`` and the logs name a worker process."""

    host: str = field(default_factory=host_name)
    pid: int = field(default_factory=os.getpid)
    started: float = field(default_factory=time.time)

    def __str__(self) -> str:
        return f"{self.host}:{self.pid}"


_build_id: str | None = None
_build_id_lock = threading.Lock()


def build_id() -> str:
    """This process's build fingerprint, computed once (at the first app start, when the app's modules
    are loaded), since it reads every source file of the project."""
    global _build_id
    with _build_id_lock:
        if _build_id is None:
            _build_id = compute_build_id()
        return _build_id


def compute_build_id() -> str:
    """A fingerprint of the project's own loaded source files, or ``DISTRELOAD_BUILD_ID``.

    A worker restarted by a code change reports a new build, so its pages reload; a worker recycled or
    reached on another host with the same code reports the same one, so nothing reloads for that.
    """
    explicit = os.environ.get(ENV_BUILD_ID, "").strip()
    if explicit:
        return explicit[:64]
    root = Path.cwd().resolve()
    ignored = {Path(p).resolve() for p in (sys.prefix, sys.base_prefix, sys.exec_prefix)}
    digest = hashlib.sha256()
    files: set[Path] = set()
    for module in list(sys.modules.values()):
        filename = getattr(module, "__file__", None)
        if not filename or not filename.endswith(".py"):
            continue
        path = Path(filename).resolve()
        if not path.is_relative_to(root) or any(path.is_relative_to(prefix) for prefix in ignored):
            continue
        if "site-packages" in path.parts:
            continue
        files.add(path)
    for path in sorted(files):
        try:
            digest.update(str(path.relative_to(root)).encode() + b"\0" + path.read_bytes())
        except OSError:
            continue
    return digest.hexdigest()[:12]


def has_sibling_workers() -> bool:
    """Whether this app runs as several worker processes, as the server was started (to warn when they
    cannot reach each other without Redis)."""
    count = worker_processes()
    if count is None:
        # A server distreload cannot read: a worker spawned by a supervisor is the best sign of siblings.
        return multiprocessing.parent_process() is not None
    return count > 1


def worker_processes() -> int | None:
    """How many worker processes serve this app, or None under a server distreload cannot read.

    The running server's own settings where a handle on them exists (gunicorn's worker, uvicorn's
    ``Server``, hypercorn's worker arguments), else its command line and environment. A reloader
    (``uvicorn --reload``) runs one worker however many are asked for.
    """
    for owner in server_objects():
        worker = gunicorn_worker_behind(owner)
        if worker is not None:
            return _at_least_one(getattr(getattr(worker, "cfg", None), "workers", None))
        config: Any = getattr(owner, "config", None)
        if type(owner).__module__.startswith("uvicorn.") and hasattr(config, "workers"):
            return 1 if getattr(config, "should_reload", False) else _at_least_one(config.workers)
    hypercorn_config = (hypercorn_worker_arguments() or {}).get("config")
    if hypercorn_config is not None:
        return _at_least_one(getattr(hypercorn_config, "workers", None))
    return _workers_on_command_line(sys.argv)


# Each server's worker option and the environment variable it falls back to; its default is one process.
_WORKER_OPTIONS = {
    "gunicorn": (("-w", "--workers"), "WEB_CONCURRENCY"),
    "uvicorn": (("--workers",), "WEB_CONCURRENCY"),
    "hypercorn": (("-w", "--workers"), None),
    "granian": (("--workers",), "GRANIAN_WORKERS"),
    "daphne": ((), None),
}


def _workers_on_command_line(argv: list[str]) -> int | None:
    """The worker count a server's command line (``-w 4``, ``-w4``, ``--workers 4``, ``--workers=4``)
    or its environment variable asks for; None when ``argv`` runs no server distreload knows."""
    server = _server_in(argv[0] if argv else "")
    if server is None:
        return None
    options, variable = _WORKER_OPTIONS[server]
    # uvicorn's reloader runs one worker, whatever --workers says (--reload-dir alone is no reload).
    if server == "uvicorn" and "--reload" in argv:
        return 1
    if server == "gunicorn":
        # gunicorn reads GUNICORN_CMD_ARGS before its command line, which wins over it.
        with contextlib.suppress(ValueError):  # unbalanced quotes: gunicorn itself would have refused it
            argv = [argv[0], *shlex.split(os.environ.get("GUNICORN_CMD_ARGS", "")), *argv[1:]]
    asked: str | None = os.environ.get(variable) if variable else None
    for index, arg in enumerate(argv[1:], start=1):
        for option in options:
            if arg == option and index + 1 < len(argv):
                asked = argv[index + 1]
            elif option.startswith("--") and arg.startswith(option + "="):
                asked = arg[len(option) + 1 :]
            elif not option.startswith("--") and arg.startswith(option) and arg[len(option) :].isdigit():
                asked = arg[len(option) :]
    return _at_least_one(asked)


def _server_in(program: str) -> str | None:
    """The server a program path names: ``/venv/bin/gunicorn``, ``.../hypercorn/__main__.py``."""
    parts = Path(program).parts
    for server in _WORKER_OPTIONS:
        if parts and (parts[-1] == server or (parts[-1] == "__main__.py" and server in parts[-2:-1])):
            return server
    return None


def _at_least_one(workers: object) -> int:
    """A worker count as the server reads it: 0 (hypercorn serving in its own process), nothing or
    nonsense all mean the one process."""
    try:
        return max(int(str(workers).strip()), 1)
    except ValueError:
        return 1
