"""distreload installs beside what teams already run: pip's resolver (``--dry-run``, against the package
index pip is configured with) must find versions of distreload's dependencies that fit each of these
packages' current release, and a redis-py for it within distreload's bounds.

Resolved from distreload's own ``[project].dependencies`` as pyproject declares them (what an install of
the package asks for), without building it. Needs the package index: skipped without it locally, failed
under CI.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tomllib
from typing import Any

import pytest
from packaging.requirements import Requirement

from ..conftest import ROOT, missing

pytestmark = pytest.mark.slow

# The current releases teams run beside distreload (what each asks of redis-py, as of writing: arq 0.28
# redis<6, celery through kombu[redis] redis>=6.4, rq redis>=5.0.1, django-redis redis>=4.0.2).
NEIGHBOURS = ["arq", "celery[redis]", "rq", "django-redis", "fastapi-reloader==1.3.4"]


def distreload_requirements() -> list[str]:
    with open(ROOT / "pyproject.toml", "rb") as file:
        return list(tomllib.load(file)["project"]["dependencies"])


def resolve(*requirements: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "--dry-run",
            "--ignore-installed",
            "--quiet",
            "--disable-pip-version-check",
            "--report",
            "-",
            *requirements,
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )


def resolved_versions(done: subprocess.CompletedProcess[str]) -> dict[str, str]:
    report: dict[str, Any] = json.loads(done.stdout)
    return {item["metadata"]["name"].lower(): item["metadata"]["version"] for item in report["install"]}


@pytest.mark.parametrize("neighbour", NEIGHBOURS)
def test_distreload_installs_beside(neighbour: str) -> None:
    requirement = Requirement(neighbour)
    name = requirement.name.lower()
    alone = resolve(neighbour)
    if alone.returncode != 0:
        missing(f"pip resolving {neighbour} from the package index ({alone.stderr.strip()[-300:]})")
    # Its current release, pinned: left free, pip would go back to an older one that fits (an arq from
    # before redis<6), which is not what a team on the current release installs.
    current = resolved_versions(alone)[name]
    extras = f"[{','.join(sorted(requirement.extras))}]" if requirement.extras else ""
    together = resolve(*distreload_requirements(), f"{name}{extras}=={current}")
    assert together.returncode == 0, together.stderr
    versions = resolved_versions(together)
    redis_bound = next(Requirement(r) for r in distreload_requirements() if Requirement(r).name == "redis")
    assert redis_bound.specifier.contains(versions["redis"]), versions
    assert versions[name] == current, versions
