"""``distreload publish``: wall time of the whole command, as a shell or a deploy hook runs it."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from benchmarks.common import REDIS_URL, forget_namespace, log, median, unique_namespace


def _command() -> list[str]:
    script = Path(sys.executable).parent / "distreload"
    return [str(script)] if script.exists() else [sys.executable, "-m", "distreload"]


def _time(command: list[str], env: dict[str, str]) -> float:
    started = time.perf_counter()
    subprocess.run(
        command, env=env, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, timeout=30
    )
    return time.perf_counter() - started


def measure(runs: int) -> dict[str, Any]:
    namespace = unique_namespace()
    command = [*_command(), "publish", "--redis-url", REDIS_URL, "--namespace", namespace]
    log(f"cli: {' '.join(command[-5:])} x {runs}")
    env = {k: v for k, v in os.environ.items() if not k.startswith("DISTRELOAD_")}
    try:
        _time(command, env)  # warm the file cache
        publish = [_time(command, env) for _ in range(runs)]
        interpreter = [_time([sys.executable, "-c", "pass"], env) for _ in range(runs)]
        import_only = [
            _time([sys.executable, "-c", "import distreload.cli, distreload.publisher, distreload.resp"], env)
            for _ in range(runs)
        ]
    finally:
        forget_namespace(namespace)
    result = {
        "command": " ".join(["distreload", *command[1:]]),
        "runs": runs,
        "median_ms": round(median(publish) * 1000, 1),
        "max_ms": round(max(publish) * 1000, 1),
        "python_startup_median_ms": round(median(interpreter) * 1000, 1),
        "imports_median_ms": round(median(import_only) * 1000, 1),
        "samples_ms": [round(s * 1000, 1) for s in publish],
    }
    log(
        f"  publish: median {result['median_ms']} ms, max {result['max_ms']} ms "
        f"(python -c pass: {result['python_startup_median_ms']} ms)"
    )
    return result
