"""compose.yaml: no Docker engine runs here, so check that what each service runs exists and works.

The app hosts' gunicorn command is run for real (with the bind address and Redis URL pointed at this
machine), and the nginx configuration is checked for what event streams need behind a proxy.
"""

from __future__ import annotations

import importlib
import os
import re
import shlex
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from ..conftest import ROOT, free_port
from ..sse import SSEReader
from .test_cluster import wait_for_workers

COMPOSE = ROOT / "compose.yaml"


def load() -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load(COMPOSE.read_text())
    return data


def app_services() -> dict[str, dict[str, Any]]:
    return {name: s for name, s in load()["services"].items() if "build" in s}


def test_services_are_redis_two_app_hosts_and_a_proxy() -> None:
    services = load()["services"]
    assert set(services) == {"redis", "host-a", "host-b", "proxy"}
    assert services["redis"]["image"].startswith("redis:")
    assert services["proxy"]["image"].startswith("nginx:")
    assert set(app_services()) == {"host-a", "host-b"}


@pytest.mark.parametrize("name", ["host-a", "host-b"])
def test_app_hosts_run_gunicorn_with_two_uvicorn_workers(name: str) -> None:
    service = app_services()[name]
    command = service["command"]
    assert command[0] == "gunicorn"
    assert command[command.index("-k") + 1] == "uvicorn_worker.UvicornWorker"
    assert command[command.index("-w") + 1] == "2"
    # Everything the command names exists: the worker class and the app.
    module_name, class_name = command[command.index("-k") + 1].rsplit(".", 1)
    assert callable(getattr(importlib.import_module(module_name), class_name))
    app_module, app_name = command[1].split(":")
    assert callable(getattr(importlib.import_module(app_module), app_name))
    environment = service["environment"]
    assert environment["DISTRELOAD_ENABLED"] == "1"
    assert environment["DISTRELOAD_REDIS_URL"] == "redis://redis:6379/0"
    assert environment["DISTRELOAD_HOST_NAME"] == name  # the name on its pages and in status
    assert environment["DISTRELOAD_TOKEN"]
    assert service["depends_on"]["redis"]["condition"] == "service_healthy"


def test_the_image_builds_from_files_that_exist() -> None:
    for service in app_services().values():
        context = ROOT / service["build"]["context"]
        dockerfile = context / service["build"]["dockerfile"]
        assert dockerfile.is_file()
        for line in dockerfile.read_text().splitlines():
            if line.startswith("COPY "):
                sources = shlex.split(line)[1:-1]
                assert sources and all((context / source).exists() for source in sources), line
            if line.startswith("RUN pip install"):
                extras = re.findall(r"\.\[(\w+)\]", line)
                pyproject = (ROOT / "pyproject.toml").read_text()
                assert all(f"\n{extra} = [" in pyproject for extra in extras), line


def test_proxy_configuration_fits_event_streams() -> None:
    proxy = load()["services"]["proxy"]
    host_path, container_path = proxy["volumes"][0].split(":")[:2]
    config = (ROOT / host_path).read_text()
    assert container_path == "/etc/nginx/conf.d/default.conf"
    upstream = re.search(r"upstream app \{(.*?)\}", config, re.S)
    assert upstream is not None
    servers = re.findall(r"server ([\w-]+):(\d+);", upstream.group(1))
    app_ports = {
        name: s["command"][s["command"].index("-b") + 1].rsplit(":", 1)[1]
        for name, s in app_services().items()
    }
    assert dict(servers) == app_ports
    events = re.search(r"location /---distreload---/events \{(.*?)\}", config, re.S)
    assert events is not None
    for directive in (
        "proxy_buffering off;",
        "proxy_http_version 1.1;",
        'proxy_set_header Connection "";',
        "proxy_read_timeout 1h;",
    ):
        assert directive in events.group(1)
    assert config.count("{") == config.count("}")


@pytest.mark.redis
def test_the_app_host_command_serves_the_cluster(
    shared_redis_url: str, namespace: str, open_sse: Callable[..., SSEReader]
) -> None:
    """Run host-a's command as compose would, with the address and Redis of this machine."""
    service = app_services()["host-a"]
    command = list(service["command"])
    port = free_port()
    command[command.index("-b") + 1] = f"127.0.0.1:{port}"
    environment = {
        **service["environment"],
        "DISTRELOAD_REDIS_URL": shared_redis_url,
        "DISTRELOAD_NAMESPACE": namespace,
    }
    gunicorn = [sys.executable, "-m", "gunicorn", *command[1:]]
    log = ROOT / ".pytest_cache" / f"compose-host-{port}.log"
    log.parent.mkdir(exist_ok=True)
    with log.open("wb") as output:
        process = subprocess.Popen(
            gunicorn,
            env={**_base_env(), **environment},
            stdout=output,
            stderr=subprocess.STDOUT,
            cwd=ROOT,
            start_new_session=True,
        )
    try:
        page = _wait_for_page(f"http://127.0.0.1:{port}/", process)
        assert '<b id="host">host-a</b>' in page and "data-distreload=" in page
        reader = open_sse(port)
        reader.wait_for("hello")
        wait_for_workers(shared_redis_url, namespace, 2)
        publish = subprocess.run(
            [
                sys.executable,
                "-m",
                "distreload",
                "publish",
                "--url",
                f"http://127.0.0.1:{port}",
                "--token",
                environment["DISTRELOAD_TOKEN"],
            ],
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert publish.returncode == 0, publish.stderr
        assert "received by 2 worker processes" in publish.stdout
        assert reader.wait_for("reload")
    finally:
        process.terminate()
        process.wait(20)
        log.unlink(missing_ok=True)


def _base_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith("DISTRELOAD_")}


def _wait_for_page(url: str, process: subprocess.Popen[bytes], timeout: float = 30) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert process.poll() is None, "gunicorn exited"
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                return str(response.read().decode())
        except OSError:
            time.sleep(0.2)
    raise AssertionError(f"{url} did not answer within {timeout} s")


def test_compose_header_commands_match_the_services() -> None:
    """The usage comment at the top of compose.yaml names ports and a token the file really sets."""
    text = COMPOSE.read_text()
    services = load()["services"]
    published = {p.split(":")[1] for s in services.values() for p in s.get("ports", [])}
    for port in re.findall(r"127\.0\.0\.1:(\d+)", text.split("x-app")[0]):
        assert port in published
    token = services["host-a"]["environment"]["DISTRELOAD_TOKEN"]
    assert token.endswith(":-compose-demo-token}") and "--token compose-demo-token" in text
    assert Path(ROOT / "deploy" / "nginx.conf").is_file()
