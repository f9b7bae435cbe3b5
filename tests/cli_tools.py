"""What the tests of the ``distreload`` command share: running it, and watching its channel."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from typing import Any

import pytest

from distreload.protocol import channel_name

from .conftest import ROOT, ServerFactory, ServerProcess

TOKEN = "cli-test-token"
ENV_NAMES = ("DISTRELOAD_REDIS_URL", "DISTRELOAD_NAMESPACE", "DISTRELOAD_TOKEN")


@pytest.fixture(name="clean_cli_environment")
def clean_cli_environment_fixture(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ENV_NAMES:
        monkeypatch.delenv(name, raising=False)


def run_cli(
    *args: str, env: dict[str, str] | None = None, timeout: float = 30, stdin: str | None = None
) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if k not in ENV_NAMES}
    return subprocess.run(
        [sys.executable, "-m", "distreload", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        input=stdin,
        env={**clean, **(env or {})},
        cwd=ROOT,
    )


def spawn_cli(*args: str) -> subprocess.Popen[str]:
    """A long-running command (listen, watch) whose output the test reads as it comes."""
    return subprocess.Popen(
        [sys.executable, "-m", "distreload", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=ROOT,
    )


class ChannelSpy:
    """A plain redis-py subscriber on a namespace's channel: what a worker would receive."""

    def __init__(self, redis_url: str, namespace: str) -> None:
        import redis

        self.client = redis.Redis.from_url(redis_url)
        self.pubsub = self.client.pubsub(ignore_subscribe_messages=True)
        self.pubsub.subscribe(channel_name(namespace))
        self.pubsub.get_message(timeout=2)

    def next(self, timeout: float = 10.0) -> Any:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            message = self.pubsub.get_message(timeout=0.5)
            if message is not None and message["type"] == "message":
                return message["data"]
        raise AssertionError("nothing published on the channel")

    def close(self) -> None:
        self.pubsub.close()
        self.client.close()


@pytest.fixture(name="spy")
def spy_fixture(shared_redis_url: str, namespace: str) -> Iterator[ChannelSpy]:
    watcher = ChannelSpy(shared_redis_url, namespace)
    yield watcher
    watcher.close()


@pytest.fixture(name="app_with_token")
def app_with_token_fixture(start_server: ServerFactory) -> ServerProcess:
    """One uvicorn worker, no Redis (the in-memory broker), publish endpoint on."""
    return start_server("tests.apps.cluster_app:app", env={"DISTRELOAD_TOKEN": TOKEN})
