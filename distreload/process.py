"""Facts about this worker process: who it is, which code it runs, and whether it has siblings."""

from __future__ import annotations

import hashlib
import multiprocessing
import os
import socket
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from .config import ENV_BUILD_ID

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
    """A best guess that this app runs as several worker processes (to warn when they cannot reach each
    other without Redis): a worker spawned by a supervisor, or gunicorn asked for more than one."""
    if multiprocessing.parent_process() is not None:  # uvicorn --workers and granian spawn their workers
        return True
    if "gunicorn" in sys.modules or "gunicorn" in " ".join(sys.argv):
        for flag in ("-w", "--workers"):
            if flag in sys.argv:
                index = sys.argv.index(flag)
                if index + 1 < len(sys.argv) and sys.argv[index + 1] != "1":
                    return True
        return os.environ.get("WEB_CONCURRENCY", "1") not in ("", "1")
    return False
