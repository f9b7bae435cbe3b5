"""``distreload publish``: wall time of the whole command, as a shell or a deploy hook runs it, on every
Redis topology: one server (the shared one), a 3-master Redis Cluster (given the node that owns the
namespace's slot: answered at once; given another node: redirected, so redis-py's cluster client takes
over) and a primary watched by three Sentinels. The cluster and the Sentinels are started for the run
(tests/system/redis_servers.py); the budget is 350 ms on each.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from benchmarks.common import IN_CI, REDIS_URL, ROOT, forget_namespace, log, median, unique_namespace

BUDGET_MS = 350


def _command() -> list[str]:
    script = Path(sys.executable).parent / "distreload"
    return [str(script)] if script.exists() else [sys.executable, "-m", "distreload"]


def _time(command: list[str], env: dict[str, str]) -> float:
    started = time.perf_counter()
    subprocess.run(
        command, env=env, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, timeout=30
    )
    return time.perf_counter() - started


def _clean_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith("DISTRELOAD_")}


def _publish_times(url: str, namespace: str, runs: int) -> list[float]:
    command = [*_command(), "publish", "--redis-url", url, "--namespace", namespace]
    env = _clean_env()
    _time(command, env)  # warm the file cache
    return [_time(command, env) for _ in range(runs)]


def _summary(samples: list[float]) -> dict[str, Any]:
    return {
        "median_ms": round(median(samples) * 1000, 1),
        "max_ms": round(max(samples) * 1000, 1),
        "samples_ms": [round(s * 1000, 1) for s in samples],
    }


def measure(runs: int) -> dict[str, Any]:
    namespace = unique_namespace()
    log(f"cli: distreload publish --redis-url {REDIS_URL} --namespace {namespace} x {runs}")
    env = _clean_env()
    try:
        publish = _publish_times(REDIS_URL, namespace, runs)
        interpreter = [_time([sys.executable, "-c", "pass"], env) for _ in range(runs)]
        import_only = [
            _time([sys.executable, "-c", "import distreload.cli, distreload.publisher, distreload.resp"], env)
            for _ in range(runs)
        ]
    finally:
        forget_namespace(namespace)
    result: dict[str, Any] = {
        "command": f"distreload publish --redis-url {REDIS_URL} --namespace {namespace}",
        "runs": runs,
        **_summary(publish),
        "python_startup_median_ms": round(median(interpreter) * 1000, 1),
        "imports_median_ms": round(median(import_only) * 1000, 1),
        "load_average": [round(value, 2) for value in os.getloadavg()],
        "budget_ms": BUDGET_MS,
    }
    log(
        f"  one server: median {result['median_ms']} ms, max {result['max_ms']} ms "
        f"(python -c pass: {result['python_startup_median_ms']} ms)"
    )
    result["topologies"] = _measure_topologies(runs)
    result["load_average_after"] = [round(value, 2) for value in os.getloadavg()]
    return result


def _measure_topologies(runs: int) -> dict[str, Any]:
    """Start a cluster and a Sentinel set and time the command on each; what cannot run here is skipped
    (a failure under CI=true)."""
    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))
    from distreload.protocol import state_key
    from tests.system.redis_servers import RedisCluster3, SentinelSet, Unavailable

    measured: dict[str, Any] = {}
    namespace = unique_namespace()
    try:
        with RedisCluster3() as cluster, SentinelSet() as sentinels:
            owner = cluster.owner(cluster.slot_of(state_key(namespace)))
            other = next(node for node in cluster.masters if node is not owner)
            cases = {
                "cluster, the slot owner's URL": owner.url,
                "cluster, another node's URL (redirected)": other.url,
                "sentinel": sentinels.url(),
            }
            for name, url in cases.items():
                measured[name] = {"url": url, **_summary(_publish_times(url, namespace, runs))}
                log(f"  {name}: median {measured[name]['median_ms']} ms, max {measured[name]['max_ms']} ms")
    except Unavailable as exc:
        if IN_CI:
            raise RuntimeError(f"cli: the cluster and Sentinel cases need {exc} (CI=true)") from exc
        log(f"  skipped the cluster and Sentinel cases: {exc}")
        return {"skipped": str(exc)}
    return measured
