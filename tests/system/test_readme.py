"""Every command in README.md is run here (or, where it needs what this machine lacks, proven).

Each shell command of the README is a key of ``RUNS``, naming the test that runs it; the first test
fails when the README gains a command no test runs. Substitutions are the ones a test needs on a shared
machine: free ports instead of fixed ones, a unique namespace, this machine's Redis.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from distreload.protocol import channel_name, parse_message

from ..conftest import ROOT, free_port, wait_for_port
from ..sse import SSEReader
from .test_cluster import wait_for_workers as wait_for_subscribers

README = (ROOT / "README.md").read_text()

INSTALL = "pip install distreload"
INSTALL_EXAMPLES = "pip install 'distreload[fastapi,demo]'"
INSTALL_GUNICORN = "pip install gunicorn uvicorn-worker"
INSTALL_WATCH = "pip install 'distreload[watch]'"
DEMO = "bash scripts/demo.sh"
TESTS = "bash scripts/test.sh"
EXAMPLE_SERVER = (
    "DISTRELOAD_ENABLED=1 DISTRELOAD_REDIS_URL=redis://127.0.0.1:6379/0 uvicorn examples.app:app --workers 2"
)
EXAMPLE_PUBLISH = "distreload publish --redis-url redis://127.0.0.1:6379/0"
HELP = "python -m distreload --help"
PUBLISH_CSS = "distreload publish --css /static/site.css"
PUBLISH_JSON = "distreload publish --json"
PUBLISH_MORPH = "distreload publish --morph"
PUBLISH_FLEET = "distreload publish --spread 30 --match '/screens/lobby/*'"
LISTEN = "distreload listen --count 1 --timeout 60"
STATUS = "distreload status"
PUBLISH_WAIT = "distreload publish --wait 30"
STATUS_PAGES = "distreload status --pages"
WATCH = "distreload watch templates static --static-dir static --static-url /static"
DEMO_OPTIONS = "distreload demo --hosts 3 --workers 2 --port 9000"
UVICORN_RELOAD = "DISTRELOAD_ENABLED=1 uvicorn examples.app:app --reload"
GUNICORN_RELOAD = (
    "DISTRELOAD_ENABLED=1 DISTRELOAD_REDIS_URL=redis://127.0.0.1:6379/0 "
    "gunicorn examples.app:app -k uvicorn_worker.UvicornWorker -w 2 --reload"
)
COMPOSE_UP = "docker compose up --build"
COMPOSE_PUBLISH = "distreload publish --redis-url redis://127.0.0.1:6380/0 --namespace compose"
CI_PUBLISH = 'distreload publish --url "$STAGING_URL"'
KIOSK_PUBLISH = "distreload publish --spread 60 --match '/screens/lobby/*' --url \"$STAGING_URL\""
DEPLOY_HOOK = (
    'distreload publish --redis-url "$DISTRELOAD_REDIS_URL" --namespace "$DISTRELOAD_NAMESPACE" '
    '|| echo "no reload sent"'
)

RUNS = {
    INSTALL: "test_install_lines_bring_what_each_example_and_recipe_needs",
    INSTALL_EXAMPLES: "test_install_lines_bring_what_each_example_and_recipe_needs",
    INSTALL_GUNICORN: "test_install_lines_bring_what_each_example_and_recipe_needs",
    INSTALL_WATCH: "test_install_lines_bring_what_each_example_and_recipe_needs",
    DEMO: "test_quick_start_demo",
    TESTS: "test_quick_start_tests",
    EXAMPLE_SERVER: "test_ten_line_example_on_two_workers",
    EXAMPLE_PUBLISH: "test_ten_line_example_on_two_workers",
    HELP: "test_cli_reference_help",
    PUBLISH_CSS: "test_cli_reference_publish",
    PUBLISH_JSON: "test_cli_reference_publish",
    PUBLISH_MORPH: "test_cli_reference_publish",
    PUBLISH_FLEET: "test_cli_reference_publish",
    KIOSK_PUBLISH: "test_recipe_ci_job",
    LISTEN: "test_cli_reference_listen",
    STATUS: "test_ten_line_example_on_two_workers",
    PUBLISH_WAIT: "test_cli_reference_publish_wait",
    STATUS_PAGES: "test_cli_reference_publish_wait",
    WATCH: "test_cli_reference_watch",
    DEMO_OPTIONS: "test_cli_reference_demo",
    UVICORN_RELOAD: "test_recipe_uvicorn_reload",
    GUNICORN_RELOAD: "test_recipe_gunicorn_reload",
    COMPOSE_UP: "test_recipe_several_hosts",
    COMPOSE_PUBLISH: "test_recipe_several_hosts",
    CI_PUBLISH: "test_recipe_ci_job",
    DEPLOY_HOOK: "test_recipe_deploy_hook",
}


def code_blocks(language: str) -> list[str]:
    return re.findall(rf"^```{language}\n(.*?)^```", README, re.S | re.M)


def readme_commands() -> list[str]:
    return [
        line.strip()
        for block in code_blocks("bash")
        for line in block.splitlines()
        if line.strip() and not line.lstrip().startswith("#")
    ]


def test_every_readme_command_is_run_by_a_test() -> None:
    commands = readme_commands()
    assert sorted(set(commands)) == sorted(RUNS)
    assert all(callable(globals().get(name)) for name in RUNS.values())
    assert set(re.findall(r"^```(\w*)$", README, re.M)) <= {"bash", "python", "nginx", "yaml", ""}


# --- install and platforms -------------------------------------------------------------------------------


def modules_of_requirements(requirements: list[str]) -> set[str]:
    """The top-level modules that installing ``requirements`` (and what they require) makes importable,
    read from the metadata of the distributions installed here."""
    from importlib import metadata

    from packaging.requirements import Requirement

    provided = metadata.packages_distributions()
    by_distribution: dict[str, set[str]] = {}
    for module, distributions in provided.items():
        for distribution in distributions:
            by_distribution.setdefault(canonical(distribution), set()).add(module)
    modules: set[str] = set()
    pending, seen = [Requirement(r) for r in requirements], set()
    while pending:
        requirement = pending.pop()
        name = canonical(requirement.name)
        if (name, tuple(sorted(requirement.extras))) in seen:
            continue
        seen.add((name, tuple(sorted(requirement.extras))))
        modules |= by_distribution.get(name, set())
        if name == "distreload":  # this checkout, whatever the venv holds
            modules.add("distreload")
            pending += [Requirement(r) for r in project_requirements(requirement.extras)]
            continue
        for text in metadata.requires(requirement.name) or []:
            nested = Requirement(text)
            if nested.marker is None or any(
                nested.marker.evaluate({"extra": extra}) for extra in ("", *requirement.extras)
            ):
                pending.append(nested)
    return modules


def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def project_requirements(extras: set[str]) -> list[str]:
    import tomllib

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    optional = project["optional-dependencies"]
    assert extras <= set(optional), f"the README names an extra pyproject lacks: {extras - set(optional)}"
    return [*project["dependencies"], *(r for extra in extras for r in optional[extra])]


def installed_by(*commands: str) -> set[str]:
    requirements = [word.strip("'") for command in commands for word in command.split()[2:]]
    return modules_of_requirements(requirements)


def test_install_lines_bring_what_each_example_and_recipe_needs() -> None:
    """No network here to install from PyPI: what each README install line brings is read from
    pyproject.toml and the installed distributions' metadata, and must cover every module the example
    imports and every program its commands run."""
    import ast

    assert readme_commands()[:4] == [INSTALL, INSTALL_EXAMPLES, INSTALL_GUNICORN, INSTALL_WATCH]
    base = installed_by(INSTALL)
    assert {"distreload", "starlette", "redis"} <= base and "fastapi" not in base
    example_imports = {
        alias.name.split(".")[0]
        for node in ast.walk(ast.parse(code_blocks("python")[0]))
        if isinstance(node, ast.Import | ast.ImportFrom)
        for alias in (node.names if isinstance(node, ast.Import) else [ast.alias(node.module or "")])
    }
    examples = installed_by(INSTALL_EXAMPLES)
    assert example_imports == {"fastapi", "distreload"} and example_imports <= examples
    assert {"uvicorn", "fakeredis", "lupa"} <= examples  # `uvicorn ...` and `distreload demo`
    assert EXAMPLE_SERVER.split()[2] == "uvicorn" and UVICORN_RELOAD.split()[1] == "uvicorn"
    gunicorn = installed_by(INSTALL_EXAMPLES, INSTALL_GUNICORN)
    assert {"gunicorn", "uvicorn_worker"} <= gunicorn and "gunicorn" not in examples
    assert "gunicorn " in GUNICORN_RELOAD and "uvicorn_worker.UvicornWorker" in GUNICORN_RELOAD
    assert "watchfiles" in installed_by(INSTALL_WATCH) and "watchfiles" not in base


# Calls and names that exist on POSIX only, and how a module may use them: inside an `if` that asks
# about the platform (sys.platform, hasattr), or for what only exists on POSIX anyway (unix:// URLs).
POSIX_ONLY = {
    "os.killpg",
    "os.getpgid",
    "os.setsid",
    "os.fork",
    "signal.SIGKILL",
    "signal.SIGHUP",
    "signal.SIGQUIT",
    "signal.SIGUSR1",
    "signal.SIGUSR2",
    "socket.AF_UNIX",
    "os.getuid",
    "os.geteuid",
}
POSIX_ONLY_MODULES = {"fcntl", "termios", "pwd", "grp", "resource", "posix"}
# `socket_path` is set only by a unix:// URL (config.parse_redis_url).
GUARDS = ("sys.platform", "hasattr(", 'scheme == "unix"', "socket_path is not None")


def test_no_posix_only_call_on_a_path_that_runs_on_windows() -> None:
    import ast

    unguarded = []
    for path in sorted((ROOT / "distreload").rglob("*.py")):
        source = path.read_text()
        tree = ast.parse(source)

        def visit(node: ast.AST, guarded: bool, file: Path = path, text: str = source) -> None:
            if isinstance(node, ast.If):
                condition = ast.get_source_segment(text, node.test) or ""
                guard = guarded or any(g in condition for g in GUARDS)
                for child in [*node.body, *node.orelse]:
                    visit(child, guard)
                return
            name = None
            if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name):
                name = f"{node.value.id}.{node.attr}"
            if (name in POSIX_ONLY and not guarded) or (
                isinstance(node, ast.Import | ast.ImportFrom)
                and ({a.name.split(".")[0] for a in node.names} | {getattr(node, "module", None)})
                & POSIX_ONLY_MODULES
            ):
                unguarded.append(f"{file.relative_to(ROOT)}:{node.lineno} {name or 'import'}")
            for child in ast.iter_child_nodes(node):
                visit(child, guarded)

        visit(tree, False)
    assert unguarded == []


def test_the_platforms_section_names_what_was_checked() -> None:
    section = README.split("## Platforms", 1)[1].split("\n## ", 1)[0]
    assert "Windows" in section and "macOS" in section and "pip install 'distreload[demo]'" in section


# --- helpers ---------------------------------------------------------------------------------------------


def shell_env(**extra: str) -> dict[str, str]:
    """The test's environment with this virtualenv's scripts first on PATH and no distreload settings."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("DISTRELOAD_")}
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    return {**env, **extra}


def run(command: str, timeout: float = 60, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["bash", "-c", command],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=shell_env(**env),
        cwd=ROOT,
    )


class Background:
    """A README command that runs until stopped (servers, listen, watch, demo)."""

    def __init__(self, command: str, cwd: Path = ROOT, **env: str) -> None:
        self.command = command
        self.process = subprocess.Popen(
            ["bash", "-c", command],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env=shell_env(**env),
            cwd=cwd,
            start_new_session=True,
        )

    def read_until(self, marker: str, timeout: float = 60) -> str:
        assert self.process.stdout is not None
        seen: list[str] = []
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            line = self.process.stdout.readline()
            if not line:
                break
            seen.append(line)
            if marker in line:
                return "".join(seen)
        raise AssertionError(f"{marker!r} not printed by {self.command!r}:\n{''.join(seen)}")

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 20) -> tuple[float, str]:
        started = time.monotonic()
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, sig)
        try:
            out, _ = self.process.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGKILL)
            out, _ = self.process.communicate(timeout=5)
        return time.monotonic() - started, out


@pytest.fixture
def background() -> Iterator[Callable[..., Background]]:
    started: list[Background] = []

    def start(command: str, cwd: Path = ROOT, **env: str) -> Background:
        process = Background(command, cwd, **env)
        started.append(process)
        return process

    yield start
    for process in started:
        if process.process.poll() is None:
            process.stop(signal.SIGKILL, 5)
        elif process.process.stdout is not None:
            process.process.stdout.close()


def page(port: int, timeout: float = 30) -> str:
    deadline = time.monotonic() + timeout
    while True:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=5) as response:
                return str(response.read().decode())
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)


@pytest.fixture
def channel(shared_redis_url: str, namespace: str) -> Iterator[Callable[[], bytes]]:
    import redis

    client = redis.Redis.from_url(shared_redis_url)
    pubsub = client.pubsub(ignore_subscribe_messages=True)
    pubsub.subscribe(channel_name(namespace))
    pubsub.get_message(timeout=2)

    def next_message(timeout: float = 10) -> bytes:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            message = pubsub.get_message(timeout=0.5)
            if message is not None and message["type"] == "message":
                return bytes(message["data"])
        raise AssertionError("nothing published")

    yield next_message
    pubsub.close()
    client.close()


# --- quick start -----------------------------------------------------------------------------------------


def test_quick_start_demo(background: Callable[..., Background]) -> None:
    # The README's command as is; --port 0 only keeps it off ports other programs here may hold.
    demo = background(f"{DEMO} --port 0", DISTRELOAD_VENV=sys.prefix)
    text = demo.read_until("Ctrl-C stops the demo", timeout=120)
    urls = re.findall(r"http://127\.0\.0\.1:\d+/", text)
    assert len(set(urls)) == 2
    assert '<b id="host">host-1</b>' in page(int(urls[0].rsplit(":", 1)[1].strip("/")))
    publish = re.search(r"reload\s+(.+ publish --redis-url \S+ --namespace demo)", text)
    assert publish is not None
    done = run(publish.group(1))
    assert done.returncode == 0 and "received by 4 worker processes" in done.stdout, done.stderr
    took, _ = demo.stop()
    assert demo.process.returncode == 0 and took < 20


def test_quick_start_tests() -> None:
    # Running the whole suite from inside itself would recurse; check it is what CI runs, and complete.
    ci = (ROOT / ".ci" / "run").read_text()
    assert re.search(r"^exec bash scripts/test\.sh$", ci, re.M)
    script = (ROOT / "scripts" / "test.sh").read_text()
    for step in ("bash scripts/bootstrap.sh", "ruff check", "mypy", "python -m pytest"):
        assert step in script
    assert subprocess.run(["bash", "-n", str(ROOT / "scripts" / "test.sh")]).returncode == 0


# --- the ten-line example --------------------------------------------------------------------------------


def test_the_ten_line_example_is_examples_app_py() -> None:
    example = code_blocks("python")[0]
    assert example == (ROOT / "examples" / "app.py").read_text()
    assert len([line for line in example.splitlines() if line.strip()]) <= 10


@pytest.mark.redis
def test_ten_line_example_on_two_workers(
    background: Callable[..., Background],
    shared_redis_url: str,
    namespace: str,
    open_sse: Callable[..., SSEReader],
) -> None:
    assert shared_redis_url == "redis://127.0.0.1:6379/0"  # the URL the README's commands name
    port = free_port()
    server = background(f"{EXAMPLE_SERVER} --port {port}", DISTRELOAD_NAMESPACE=namespace)
    html = page(port)
    assert "Hello from every worker" in html and "data-distreload=" in html
    wait_for_subscribers(shared_redis_url, namespace, 2)
    reader = open_sse(port)
    reader.wait_for("hello")

    done = run(EXAMPLE_PUBLISH, DISTRELOAD_NAMESPACE=namespace)
    assert done.returncode == 0, done.stderr
    assert "received by 2 worker processes" in done.stdout
    assert reader.wait_for("reload")[0].id in done.stdout

    deadline = time.monotonic() + 20
    while True:
        status = run(STATUS, DISTRELOAD_REDIS_URL=shared_redis_url, DISTRELOAD_NAMESPACE=namespace)
        assert status.returncode == 0, status.stderr
        if ", 2 workers, 1 browser stream;" in status.stdout or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    assert status.stdout.startswith("HOST") and ", 2 workers, 1 browser stream;" in status.stdout
    server.stop()


# --- configuration and migration -------------------------------------------------------------------------


def test_configuration_example_runs() -> None:
    # In a process of its own: the example sets the process-wide default Redis for send_reload_signal().
    block = code_blocks("python")[1]
    check = (
        "\nfrom distreload import DistReload\n"
        "assert isinstance(app, DistReload) and app.enabled and app.prefix == '/---distreload---'\n"
        "print(app.broker.target.namespace, app.endpoint.token, app.tag.client_options)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", block + check],
        capture_output=True,
        text=True,
        timeout=30,
        env=shell_env(),
        cwd=ROOT,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout == "shop a-long-random-string {'silent': True}\n"


def test_migration_import_works() -> None:
    block = code_blocks("python")[2]
    assert block.strip() == "from distreload import patch_for_auto_reloading, send_reload_signal"
    exec(compile(block, "README.md", "exec"), {})  # noqa: S102
    import distreload

    for name in (
        "patch_for_auto_reloading",
        "send_reload_signal",
        "auto_refresh_middleware",
        "html_injection_middleware",
        "reloader_route_middleware",
        "UniversalMiddleware",
    ):
        assert f"`{name}`" in README
        assert hasattr(distreload, name)


def test_nginx_snippet_is_the_one_in_deploy() -> None:
    snippet = code_blocks("nginx")[0]
    config = (ROOT / "deploy" / "nginx.conf").read_text()
    location = re.search(r"location /---distreload---/events \{(.*?)\}", config, re.S)
    assert location is not None
    for line in snippet.splitlines()[1:-1]:
        assert line.strip() in location.group(1)


# --- CLI reference ---------------------------------------------------------------------------------------


def test_cli_reference_help() -> None:
    done = run(HELP)
    assert done.returncode == 0 and done.stdout.startswith("usage: distreload")
    for command in ("publish", "listen", "status", "watch", "demo"):
        assert f"`{command}" in README  # every command is in the README's table


@pytest.mark.redis
def test_cli_reference_publish(shared_redis_url: str, namespace: str, channel: Callable[[], bytes]) -> None:
    env = {"DISTRELOAD_REDIS_URL": shared_redis_url, "DISTRELOAD_NAMESPACE": namespace}
    css = run(PUBLISH_CSS, **env)
    assert css.returncode == 0, css.stderr
    sent = parse_message(channel())
    assert (sent.kind, sent.paths) == ("css", ("/static/site.css",))
    assert css.stdout.startswith(f"published stylesheet swap {sent.version} ")
    morph = run(PUBLISH_MORPH, **env)
    assert morph.returncode == 0 and morph.stdout.startswith("published morph "), morph.stderr
    assert parse_message(channel()).kind == "morph"
    fleet = run(PUBLISH_FLEET, **env)
    assert fleet.returncode == 0, fleet.stderr
    sent = parse_message(channel())
    assert (sent.kind, sent.spread, sent.match) == ("reload", 30.0, "/screens/lobby/*")
    as_json = run(PUBLISH_JSON, **env)
    assert json.loads(as_json.stdout)["version"] == str(parse_message(channel()).version)


@pytest.mark.redis
def test_cli_reference_publish_wait(shared_redis_url: str, namespace: str) -> None:
    """With no page open there is nothing to wait for: applied 0 of 0 at once. (Pages in Chromium over two
    hosts: tests/system/test_pages.py.)"""
    env = {"DISTRELOAD_REDIS_URL": shared_redis_url, "DISTRELOAD_NAMESPACE": namespace}
    waited = run(PUBLISH_WAIT, **env)
    assert waited.returncode == 0, waited.stderr
    assert "applied 0 of 0 pages" in waited.stdout
    pages = run(STATUS_PAGES, **env)
    assert pages.returncode == 0 and pages.stdout.startswith("no open pages in namespace"), pages.stderr


@pytest.mark.redis
def test_cli_reference_listen(
    background: Callable[..., Background], shared_redis_url: str, namespace: str
) -> None:
    env = {"DISTRELOAD_REDIS_URL": shared_redis_url, "DISTRELOAD_NAMESPACE": namespace}
    listener = background(LISTEN, **env)
    listener.read_until("listening on")
    published = run(PUBLISH_JSON, **env)
    version = json.loads(published.stdout)["version"]
    assert listener.process.wait(20) == 0
    _, out = listener.stop()
    assert f" reload {version}  (" in out


@pytest.mark.redis
def test_cli_reference_watch(
    background: Callable[..., Background],
    shared_redis_url: str,
    namespace: str,
    channel: Callable[..., bytes],
    tmp_path: Path,
) -> None:
    (tmp_path / "templates").mkdir()
    (tmp_path / "static").mkdir()
    stylesheet = tmp_path / "static" / "site.css"
    stylesheet.write_text("body { color: red }")
    watcher = background(
        WATCH, cwd=tmp_path, DISTRELOAD_REDIS_URL=shared_redis_url, DISTRELOAD_NAMESPACE=namespace
    )
    watcher.read_until("watching templates, static")
    for attempt in range(5):
        stylesheet.write_text(f"body {{ color: blue }} /* {attempt} */")
        with contextlib.suppress(AssertionError):
            sent = parse_message(channel(timeout=3))
            break
    else:
        raise AssertionError("watch published nothing")
    assert (sent.kind, sent.paths) == ("css", ("/static/site.css",))
    printed = watcher.read_until("changed; published", timeout=10)
    assert f"static/site.css changed; published stylesheet swap {sent.version} " in printed
    watcher.stop(signal.SIGINT)
    assert watcher.process.returncode == 0


def test_cli_reference_demo(background: Callable[..., Background]) -> None:
    # Port 9000 may be taken on a shared machine: the same command on free ports.
    demo = background(DEMO_OPTIONS.replace("--port 9000", "--port 0"))
    text = demo.read_until("Ctrl-C stops the demo", timeout=120)
    assert "3 hosts x 2 workers" in text
    assert len(set(re.findall(r"http://127\.0\.0\.1:\d+/", text))) == 3
    took, _ = demo.stop()
    assert demo.process.returncode == 0 and took < 20


# --- recipes ---------------------------------------------------------------------------------------------


def test_recipe_uvicorn_reload(
    background: Callable[..., Background], open_sse: Callable[..., SSEReader]
) -> None:
    port = free_port()
    server = background(f"{UVICORN_RELOAD} --port {port}")
    assert "data-distreload=" in page(port)
    reader = open_sse(port)
    reader.wait_for("hello")
    took, out = server.stop(signal.SIGINT)
    assert took < 10, out  # an open stream does not hold the server
    assert reader.closed.wait(5)


@pytest.mark.redis
def test_recipe_gunicorn_reload(
    background: Callable[..., Background], shared_redis_url: str, namespace: str
) -> None:
    port = free_port()
    background(f"{GUNICORN_RELOAD} -b 127.0.0.1:{port}", DISTRELOAD_NAMESPACE=namespace)
    wait_for_port(port, 30)
    assert "data-distreload=" in page(port)
    wait_for_subscribers(shared_redis_url, namespace, 2)
    done = run(EXAMPLE_PUBLISH, DISTRELOAD_NAMESPACE=namespace)
    assert "received by 2 worker processes" in done.stdout, done.stderr


@pytest.mark.redis
def test_recipe_several_hosts(shared_redis_url: str, namespace: str) -> None:
    """No Docker engine here: compose.yaml is checked by tests/test_compose.py (its services' commands
    are run there); here, the publish command names the Redis port and namespace compose.yaml sets."""
    import yaml

    compose = yaml.safe_load((ROOT / "compose.yaml").read_text())
    assert (ROOT / "tests" / "system" / "test_compose.py").is_file()
    assert compose["services"]["redis"]["ports"] == ["127.0.0.1:6380:6379"]
    assert compose["services"]["host-a"]["environment"]["DISTRELOAD_NAMESPACE"] == "compose"
    assert COMPOSE_PUBLISH.startswith("distreload publish --redis-url redis://127.0.0.1:6380/0 ")
    same_on_this_machine = COMPOSE_PUBLISH.replace("redis://127.0.0.1:6380/0", shared_redis_url).replace(
        "--namespace compose", f"--namespace {namespace}"
    )
    done = run(same_on_this_machine)
    assert done.returncode == 0 and done.stdout.startswith("published reload "), done.stderr


def test_recipe_ci_job(background: Callable[..., Background], open_sse: Callable[..., SSEReader]) -> None:
    port = free_port()
    background(
        f"uvicorn examples.app:app --port {port}", DISTRELOAD_ENABLED="1", DISTRELOAD_TOKEN="ci-secret"
    )
    page(port)
    reader = open_sse(port)
    reader.wait_for("hello")
    done = run(CI_PUBLISH, STAGING_URL=f"http://127.0.0.1:{port}", DISTRELOAD_TOKEN="ci-secret")
    assert done.returncode == 0, done.stderr
    assert reader.wait_for("reload")[0].id in done.stdout
    wrong = run(CI_PUBLISH, STAGING_URL=f"http://127.0.0.1:{port}", DISTRELOAD_TOKEN="not-it")
    assert wrong.returncode == 1 and "refused the token (401)" in wrong.stderr
    kiosk = run(KIOSK_PUBLISH, STAGING_URL=f"http://127.0.0.1:{port}", DISTRELOAD_TOKEN="ci-secret")
    assert kiosk.returncode == 0, kiosk.stderr
    event = reader.wait_for("reload", 2)[1].json()
    assert (event["spread"], event["match"]) == (60.0, "/screens/lobby/*") and event[
        "version"
    ] in kiosk.stdout


@pytest.mark.redis
def test_recipe_deploy_hook(shared_redis_url: str, namespace: str, channel: Callable[..., bytes]) -> None:
    done = run(DEPLOY_HOOK, DISTRELOAD_REDIS_URL=shared_redis_url, DISTRELOAD_NAMESPACE=namespace)
    assert done.returncode == 0 and done.stdout.startswith("published reload "), done.stderr
    assert parse_message(channel()).kind == "reload"
    down = run(
        DEPLOY_HOOK, DISTRELOAD_REDIS_URL=f"redis://127.0.0.1:{free_port()}/0", DISTRELOAD_NAMESPACE=namespace
    )
    assert down.returncode == 0 and down.stdout == "no reload sent\n"
    assert down.stderr.startswith("distreload publish: could not publish to Redis")


def test_the_acl_rules_are_the_ones_the_suite_runs_under() -> None:
    """The worker and command-line rules the README gives are the ones tests/system/test_redis_acl.py,
    test_redis_cluster.py and test_redis_sentinel.py create their users with, and so are the page
    reports' parts."""
    from .redis_apps import cli_rule, pages_reader_rule, pages_worker_rule, worker_rule

    for user, rule in (("dr-worker", worker_rule("shop")), ("dr-cli", cli_rule("shop"))):
        given = re.findall(rf"^    ACL SETUSER {user} on >PASSWORD (.+)$", README, re.M)
        assert len(given) == 1 and sorted(given[0].split()) == sorted(rule), (user, given)
    # The page reports' parts, added to those users.
    for user, rule in (("dr-worker", pages_worker_rule("shop")), ("dr-cli", pages_reader_rule("shop"))):
        given = re.findall(rf"^ +ACL SETUSER {user} (\+hset|\+hgetall)(.+)$", README, re.M)
        assert len(given) == 1 and sorted("".join(given[0]).split()) == sorted(rule), (user, given)


def test_benchmarks_section_has_its_markers() -> None:
    section = README.split("## Benchmarks", 1)[1]
    assert "<!-- benchmarks -->" in section and "<!-- /benchmarks -->" in section


def test_the_test_command_fails_when_it_tests_nothing() -> None:
    """pytest's exit 5 (no tests collected) is no success: a suite that ran nothing proves nothing."""
    done = subprocess.run(
        ["bash", "scripts/test.sh", "-k", "no_test_is_named_like_this"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 5, done.stdout[-2000:] + done.stderr[-2000:]
    assert "no tests ran" in done.stdout or "deselected" in done.stdout
