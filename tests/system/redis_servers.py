"""Real Redis topologies and real network hosts for the system tests.

- ``RedisCluster3``: three cluster masters (optionally with replicas) built by ``redis-cli --cluster create``.
- ``SentinelSet``: a primary, a replica and three ``redis-sentinel`` processes watching them.
- ``NetHosts``: network namespaces as hosts on one bridge, with packet loss and partitions on demand.

A plain module, not a conftest: ``tests/conftest.py`` (or a test module) imports the fixtures at the bottom
(``redis_cluster3``, ``sentinel_set``, ``net_hosts``) or uses the classes as context managers. Every class
cleans up everything it made, also when its start fails half-way. What the machine lacks (a binary, root)
is reported as ``Unavailable``; the fixtures turn that into a skip, or a failure under ``CI=true``.
"""

from __future__ import annotations

import contextlib
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, Self

import pytest
import redis
from redis.backoff import NoBackoff
from redis.crc import key_slot
from redis.retry import Retry

from ..conftest import missing
from ..waiting import wait_until

LOCALHOST = "127.0.0.1"


class Unavailable(RuntimeError):
    """This machine cannot build the topology (a missing binary, no root); the message says why."""


def require_binaries(*names: str) -> dict[str, str]:
    """Resolve each binary on PATH (and the sbin directories, which a non-login root shell may lack)."""
    found: dict[str, str] = {}
    search = os.pathsep.join([os.environ.get("PATH", ""), "/usr/sbin", "/sbin", "/usr/local/sbin"])
    for name in names:
        path = shutil.which(name, path=search)
        if path is None:
            raise Unavailable(f"the {name} binary (not on PATH)")
        found[name] = path
    return found


def free_port(host: str = LOCALHOST) -> int:
    """A port nothing listens on right now (the kernel picks it, so parallel runs rarely collide)."""
    with socket.socket() as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def wait_for_port(
    host: str, port: int, timeout: float, process: subprocess.Popen[bytes] | None = None
) -> None:
    """Wait until something accepts TCP connections on host:port; fail early if the process died."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise RuntimeError(f"process exited with {process.returncode} before {host}:{port} opened")
        with contextlib.suppress(OSError), socket.create_connection((host, port), timeout=0.2):
            return
        time.sleep(0.02)
    raise TimeoutError(f"{host}:{port} did not open within {timeout:g} s")


def _info_fields(text: str) -> dict[str, str]:
    """Parse 'key:value' lines (CLUSTER INFO) without redis-py's version-dependent callbacks."""
    fields: dict[str, str] = {}
    for line in text.splitlines():
        key, sep, value = line.partition(":")
        if sep and not key.startswith("#"):
            fields[key.strip()] = value.strip()
    return fields


@dataclass(frozen=True)
class TlsFiles:
    """A private CA and one server certificate for 127.0.0.1/localhost, made with openssl for one run."""

    ca: Path
    cert: Path
    key: Path

    @classmethod
    def create(cls, directory: Path, host: str = LOCALHOST) -> TlsFiles:
        """Make the CA and a server certificate (also used as client certificate) in ``directory``."""
        openssl = require_binaries("openssl")["openssl"]
        directory.mkdir(parents=True, exist_ok=True)
        ca, ca_key = directory / "ca.crt", directory / "ca.key"
        cert, key, request = directory / "server.crt", directory / "server.key", directory / "server.csr"
        extensions = directory / "san.cnf"
        extensions.write_text(f"subjectAltName=IP:{host},DNS:localhost\n")
        steps = [
            [
                "req",
                "-x509",
                "-newkey",
                "rsa:2048",
                "-nodes",
                "-keyout",
                ca_key,
                "-out",
                ca,
                "-days",
                "2",
                "-subj",
                "/CN=distreload test CA",
            ],
            ["req", "-newkey", "rsa:2048", "-nodes", "-keyout", key, "-out", request, "-subj", f"/CN={host}"],
            [
                "x509",
                "-req",
                "-in",
                request,
                "-CA",
                ca,
                "-CAkey",
                ca_key,
                "-CAcreateserial",
                "-out",
                cert,
                "-days",
                "2",
                "-extfile",
                extensions,
            ],
        ]
        for step in steps:
            result = subprocess.run([openssl, *map(str, step)], capture_output=True, text=True, timeout=60)
            if result.returncode != 0:
                raise RuntimeError(f"openssl {step[0]} failed: {result.stderr.strip()}")
        return cls(ca, cert, key)

    def server_args(self) -> list[str]:
        """redis-server/redis-sentinel options: TLS for clients, replication and Sentinel's own links."""
        return [
            "--tls-cert-file",
            str(self.cert),
            "--tls-key-file",
            str(self.key),
            "--tls-ca-cert-file",
            str(self.ca),
            "--tls-auth-clients",
            "no",
            "--tls-replication",
            "yes",
        ]

    def client_options(self) -> dict[str, Any]:
        """redis-py keyword arguments for a client that checks the server against this CA."""
        return {"ssl": True, "ssl_ca_certs": str(self.ca)}


@dataclass
class RedisNode:
    """One redis-server (or redis-sentinel) process that a test owns: it may be killed, restarted, frozen."""

    name: str
    port: int
    directory: Path
    host: str = LOCALHOST
    args: list[str] = field(default_factory=list)
    config_file: Path | None = None  # redis-sentinel needs a writable config file; redis-server takes args
    binary: str = "redis-server"
    launcher: list[str] = field(default_factory=list)  # e.g. ["ip", "netns", "exec", ns] to run in a host
    password: str | None = None
    tls: TlsFiles | None = None  # set: the port speaks TLS only (rediss://)
    process: subprocess.Popen[bytes] | None = None
    _log: IO[bytes] | None = None

    @property
    def address(self) -> str:
        """host:port, as redis-cli and CLUSTER NODES write it."""
        return f"{self.host}:{self.port}"

    @property
    def url(self) -> str:
        """A redis:// URL for this one process (password included)."""
        auth = f":{self.password}@" if self.password else ""
        if self.tls is not None:
            return f"rediss://{auth}{self.host}:{self.port}/0?ssl_ca_certs={self.tls.ca}"
        return f"redis://{auth}{self.host}:{self.port}/0"

    @property
    def alive(self) -> bool:
        """Whether the process is running (a killed or crashed one is not)."""
        return self.process is not None and self.process.poll() is None

    @property
    def log_path(self) -> Path:
        """Where the process writes its log (stdout and stderr)."""
        return self.directory / f"{self.name}.log"

    def log(self) -> str:
        """The process's own output: the first place to look when a topology does not come up."""
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def start(self, timeout: float = 10.0) -> None:
        """Start the process (again, after kill) and wait for its port."""
        if self.alive:
            return
        self.directory.mkdir(parents=True, exist_ok=True)
        command = [*self.launcher, self.binary]
        if self.config_file is not None:
            command.append(str(self.config_file))
        if self.tls is None:
            command += ["--port", str(self.port)]
        else:
            command += ["--port", "0", "--tls-port", str(self.port), *self.tls.server_args()]
        command += ["--bind", self.host, *self.args]
        self._close_log()
        self._log = open(self.log_path, "ab")  # noqa: SIM115 - kept open for the process's lifetime
        self.process = subprocess.Popen(
            command, stdout=self._log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, cwd=self.directory
        )
        try:
            wait_for_port(self.host, self.port, timeout, self.process)
        except Exception as exc:
            self.kill()
            raise RuntimeError(f"{self.name} did not start: {exc}\n{self.log()[-2000:]}") from exc

    def kill(self) -> None:
        """SIGKILL, as a crash or a power cut would: no shutdown save, no goodbye to peers."""
        process, self.process = self.process, None
        if process is not None:
            if process.poll() is None:
                process.send_signal(signal.SIGCONT)  # a frozen process must be able to die
                process.kill()
            process.wait(10)
        self._close_log()

    def freeze(self) -> None:
        """SIGSTOP: the process keeps its sockets open and answers nothing (a hung server)."""
        assert self.process is not None
        self.process.send_signal(signal.SIGSTOP)

    def thaw(self) -> None:
        """SIGCONT: a frozen process resumes where it stopped."""
        assert self.process is not None
        self.process.send_signal(signal.SIGCONT)

    def client(self, **kwargs: Any) -> redis.Redis:
        """A plain (non-cluster) client to this one process, for administration; close it after use."""
        options: dict[str, Any] = {
            "decode_responses": True,
            "socket_timeout": 5,
            "socket_connect_timeout": 2,
            "password": self.password,
            # No hidden retries (redis-py 8 retries 10 times): a down node fails at once, callers poll.
            "retry": Retry(NoBackoff(), 0),
            **(self.tls.client_options() if self.tls is not None else {}),
        }
        options.update(kwargs)
        return redis.Redis(host=self.host, port=self.port, **options)

    def command(self, *args: Any) -> Any:
        """Run one command on a fresh connection (redis-py parses the reply by its first word only)."""
        with self.client() as connection:
            return connection.execute_command(*args)

    def info(self, section: str) -> dict[str, Any]:
        """One INFO section as a dict (redis-py parses it)."""
        with self.client() as connection:
            return dict(connection.info(section))

    def _close_log(self) -> None:
        """Close our handle on the log file (the process keeps its own)."""
        log, self._log = self._log, None
        if log is not None:
            log.close()


class _Topology:
    """What every topology shares: a working directory it may own, context management, and stop()."""

    def __init__(self, directory: Path | None, prefix: str) -> None:
        """Work in ``directory``, or in a temporary one that stop() removes."""
        self._owns_directory = directory is None
        self.directory = Path(tempfile.mkdtemp(prefix=prefix)) if directory is None else directory
        self.nodes: list[RedisNode] = []

    def start(self) -> Self:
        """Start every process and wait until the topology is usable; returns self."""
        raise NotImplementedError

    def __enter__(self) -> Self:
        """Start; on leaving the block, stop and remove everything."""
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        """Stop and remove everything, whatever happened in the block."""
        self.stop()

    def _start_or_clean(self, build: Callable[[], None]) -> Self:
        """Run ``build``; if it fails half-way, kill whatever it started before passing the error on."""
        try:
            build()
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        """Kill every process and remove the files (the directory too, if this object created it)."""
        for node in self.nodes:
            with contextlib.suppress(Exception):
                node.kill()
        if self._owns_directory:
            shutil.rmtree(self.directory, ignore_errors=True)
        else:
            for node in self.nodes:
                shutil.rmtree(node.directory, ignore_errors=True)


# --- Redis Cluster ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ClusterNodeView:
    """One line of CLUSTER NODES as one node sees it."""

    node_id: str
    address: str  # host:port (without the bus port)
    flags: frozenset[str]
    master_id: str | None
    slots: frozenset[int]

    @property
    def is_master(self) -> bool:
        """Whether the node is a master (failed or not)."""
        return "master" in self.flags

    @property
    def failed(self) -> bool:
        """Whether this view flags the node as failing or failed."""
        return "fail" in self.flags or "fail?" in self.flags


def parse_cluster_nodes(text: str) -> list[ClusterNodeView]:
    """Parse CLUSTER NODES; migration markers such as '[42->-id]' are not ownership and are skipped."""
    views = []
    for line in text.strip().splitlines():
        parts = line.split()
        if len(parts) < 8:
            continue
        slots: set[int] = set()
        for item in parts[8:]:
            if item.startswith("["):
                continue
            first, _, last = item.partition("-")
            slots.update(range(int(first), int(last or first) + 1))
        address = parts[1].split("@", 1)[0]
        views.append(
            ClusterNodeView(
                parts[0],
                address,
                frozenset(parts[2].split(",")),
                None if parts[3] == "-" else parts[3],
                frozenset(slots),
            )
        )
    return views


class RedisCluster3(_Topology):
    """Three cluster masters on free ports (``replicas`` each), created by ``redis-cli --cluster create``.

    ``node_timeout_ms`` is small so that a killed node is noticed (and a replica promoted) in ~2 s.
    """

    def __init__(
        self,
        directory: Path | None = None,
        *,
        replicas: int = 0,
        node_timeout_ms: int = 1000,
        password: str | None = None,
        require_full_coverage: bool = True,
        extra_args: Sequence[str] = (),
        host: str = LOCALHOST,
    ) -> None:
        """Describe the cluster; nothing starts before start()."""
        super().__init__(directory, "distreload-cluster-")
        self.replicas = replicas
        self.node_timeout_ms = node_timeout_ms
        self.password = password
        self.require_full_coverage = require_full_coverage
        self.extra_args = list(extra_args)
        self.host = host
        self.ids: dict[str, str] = {}  # node name -> cluster node id
        self.startup_seconds = 0.0

    def start(self) -> Self:
        """Start the nodes, create the cluster, wait for cluster_state:ok everywhere; returns self."""
        return self._start_or_clean(self._build)

    def _build(self) -> None:
        """Everything start() does; _start_or_clean kills what it started if this fails."""
        started = time.monotonic()
        binaries = require_binaries("redis-server", "redis-cli")
        auth = ["--requirepass", self.password, "--masterauth", self.password] if self.password else []
        for index in range(3 * (1 + self.replicas)):
            port, bus = free_port(self.host), free_port(self.host)
            while bus == port:
                bus = free_port(self.host)
            name = f"node{index}"
            self.nodes.append(
                RedisNode(
                    name=name,
                    port=port,
                    directory=self.directory / name,
                    host=self.host,
                    binary=binaries["redis-server"],
                    password=self.password,
                    args=[
                        "--cluster-enabled",
                        "yes",
                        "--cluster-config-file",
                        "nodes.conf",
                        # An explicit bus port: port + 10000 may be taken (or above 65535).
                        "--cluster-port",
                        str(bus),
                        "--cluster-node-timeout",
                        str(self.node_timeout_ms),
                        "--cluster-require-full-coverage",
                        "yes" if self.require_full_coverage else "no",
                        # A diskless full sync waits 5 s for more replicas by default; a replica that has
                        # not synced yet refuses to fail over.
                        "--repl-diskless-sync-delay",
                        "0",
                        "--save",
                        "",
                        "--appendonly",
                        "no",
                        *auth,
                        *self.extra_args,
                    ],
                )
            )
        # Start all first, then wait: the processes come up in parallel.
        for node in self.nodes:
            node.start()
        create = [
            binaries["redis-cli"],
            "--cluster",
            "create",
            *(n.address for n in self.nodes),
            "--cluster-replicas",
            str(self.replicas),
            "--cluster-yes",
        ]
        if self.password:
            create += ["-a", self.password, "--no-auth-warning"]
        result = subprocess.run(create, capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL)
        if result.returncode != 0:
            raise RuntimeError(f"redis-cli --cluster create failed:\n{result.stdout}\n{result.stderr}")
        for node in self.nodes:
            self.ids[node.name] = node.command("CLUSTER", "MYID")
        self.wait_ok()
        if self.replicas:
            self.wait_replicas_synced()
        self.startup_seconds = time.monotonic() - started

    # -- views -------------------------------------------------------------------------------------

    @property
    def urls(self) -> list[str]:
        """Every node's URL, in start order."""
        return [node.url for node in self.nodes]

    @property
    def url(self) -> str:
        """Any one node's URL: clients must discover the rest themselves."""
        return self.nodes[0].url

    def node_by_id(self, node_id: str) -> RedisNode:
        """The node with this cluster node id."""
        return next(node for node in self.nodes if self.ids[node.name] == node_id)

    def view(self, node: RedisNode | None = None) -> list[ClusterNodeView]:
        """CLUSTER NODES as ``node`` (default: the first live node) sees the cluster."""
        source = node or next(n for n in self.nodes if n.alive)
        return parse_cluster_nodes(source.command("CLUSTER", "NODES"))

    @property
    def masters(self) -> list[RedisNode]:
        """The masters that serve slots now (a failover changes this). Owning slots is part of it: right
        after ``--cluster create`` a node can still gossip a replica as a master of nothing."""
        return [self.node_by_id(v.node_id) for v in self.view() if v.is_master and v.slots and not v.failed]

    @staticmethod
    def slot_of(key: str | bytes) -> int:
        """The hash slot of a key or shard channel (``{tag}`` rules included), as every node computes it."""
        return int(key_slot(key.encode() if isinstance(key, str) else key))

    def owner(self, slot: int, seen_by: RedisNode | None = None) -> RedisNode:
        """The master that owns ``slot`` as ``seen_by`` (default: the first live node) believes."""
        for view in self.view(seen_by):
            if slot in view.slots and view.is_master:
                return self.node_by_id(view.node_id)
        raise LookupError(f"no node owns slot {slot}")

    def wait_ok(self, timeout: float = 20.0) -> None:
        """Wait until every live node says cluster_state:ok and all of them agree on who owns which slot."""

        def settled() -> bool:
            """All live nodes report ok and the same slot map."""
            live = [n for n in self.nodes if n.alive]
            maps = []
            for node in live:
                if _info_fields(node.command("CLUSTER", "INFO")).get("cluster_state") != "ok":
                    return False
                maps.append({v.node_id: v.slots for v in self.view(node) if v.is_master and v.slots})
            return all(m == maps[0] for m in maps)

        wait_until(settled, timeout, "cluster_state:ok on every node, with one slot map")

    def wait_replicas_synced(self, timeout: float = 20.0) -> None:
        """Wait until every live replica's link to its master is up (only a synced replica can take over) and
        every live node knows which nodes are replicas."""

        def synced() -> bool:
            """Every live replica reports its master link up, and every live node's view already knows
            which nodes are replicas (until gossip tells it, a node lists a replica as a master)."""
            live = [n for n in self.nodes if n.alive]
            replication = {n.name: n.info("replication") for n in live}  # one INFO per node per look
            replicas = [n for n in live if replication[n.name].get("role") == "slave"]
            if any(replication[n.name].get("master_link_status") != "up" for n in replicas):
                return False
            expected = {self.ids[n.name] for n in replicas}
            return all({v.node_id for v in self.view(n) if not v.is_master} == expected for n in live)

        wait_until(synced, timeout, "every replica synced with its master and known as one everywhere")

    # -- changes -------------------------------------------------------------------------------------

    def begin_slot_migration(self, slot: int, to_node: RedisNode) -> RedisNode:
        """Mark ``slot`` IMPORTING on the target and MIGRATING on its owner (clients now meet ASK)."""
        source = self.owner(slot)
        if source is to_node:
            return source
        to_node.command("CLUSTER", "SETSLOT", slot, "IMPORTING", self.ids[source.name])
        source.command("CLUSTER", "SETSLOT", slot, "MIGRATING", self.ids[to_node.name])
        return source

    def move_slot_keys(self, slot: int, source: RedisNode, to_node: RedisNode) -> int:
        """MIGRATE every key of ``slot`` from ``source`` to ``to_node``; returns how many moved."""
        moved = 0
        auth = ["AUTH", self.password] if self.password else []
        while keys := source.command("CLUSTER", "GETKEYSINSLOT", slot, 100):
            source.command(
                "MIGRATE", to_node.host, to_node.port, "", 0, 5000, "REPLACE", *auth, "KEYS", *keys
            )
            moved += len(keys)
        return moved

    def finish_slot_migration(self, slot: int, to_node: RedisNode) -> None:
        """SETSLOT NODE on the target, the old owner and every other master (the order redis-cli uses)."""
        target_id = self.ids[to_node.name]
        to_node.command("CLUSTER", "SETSLOT", slot, "NODE", target_id)
        for node in self.masters:
            if node is not to_node and node.alive:
                node.command("CLUSTER", "SETSLOT", slot, "NODE", target_id)
        wait_until(
            lambda: all(self.owner(slot, n) is to_node for n in self.nodes if n.alive),
            10,
            f"every node seeing slot {slot} on {to_node.name}",
        )

    def migrate_slot(self, slot: int, to_node: RedisNode) -> int:
        """Move one slot with its keys to ``to_node``, as resharding does; returns how many keys moved."""
        source = self.begin_slot_migration(slot, to_node)
        if source is to_node:
            return 0
        moved = self.move_slot_keys(slot, source, to_node)
        self.finish_slot_migration(slot, to_node)
        return moved

    def kill(self, node: RedisNode) -> None:
        """SIGKILL one node; with replicas, wait for one of them to take over its slots."""
        had_slots = any(v.slots for v in self.view() if v.node_id == self.ids[node.name])
        node.kill()
        if self.replicas and had_slots:
            dead_id = self.ids[node.name]
            wait_until(
                lambda: all(
                    dead_id not in {v.node_id for v in self.view(n) if v.slots} for n in self.nodes if n.alive
                ),
                20,
                f"a replica taking over {node.name}",
            )
            self.wait_ok()

    def restart(self, node: RedisNode) -> None:
        """Start a killed node again; nodes.conf brings it back into the cluster (a replica, if replaced)."""
        node.start()
        self.wait_ok()


# --- Sentinel ---------------------------------------------------------------------------------------


class SentinelSet(_Topology):
    """A primary, a replica and three Sentinels (quorum 2), with timeouts short enough for tests."""

    def __init__(
        self,
        directory: Path | None = None,
        *,
        master_name: str = "mymaster",
        down_after_ms: int = 1000,
        failover_timeout_ms: int = 3000,
        password: str | None = None,
        sentinel_password: str | None = None,
        tls: bool = False,
        host: str = LOCALHOST,
    ) -> None:
        """Describe the set (``tls``: every port speaks TLS only); nothing starts before start()."""
        super().__init__(directory, "distreload-sentinel-")
        self.master_name = master_name
        self.down_after_ms = down_after_ms
        self.failover_timeout_ms = failover_timeout_ms
        self.password = password
        self.sentinel_password = sentinel_password
        self.tls_wanted = tls
        self.tls: TlsFiles | None = None
        self.host = host
        self.servers: list[RedisNode] = []
        self.sentinels: list[RedisNode] = []
        self.startup_seconds = 0.0

    def start(self) -> Self:
        """Start both data nodes and the Sentinels, wait until the Sentinels agree; returns self."""
        return self._start_or_clean(self._build)

    def _build(self) -> None:
        """Everything start() does; _start_or_clean kills what it started if this fails."""
        started = time.monotonic()
        binaries = require_binaries("redis-server", "redis-sentinel")
        if self.tls_wanted:
            self.tls = TlsFiles.create(self.directory / "tls", self.host)
        auth = ["--requirepass", self.password, "--masterauth", self.password] if self.password else []
        # A diskless full sync waits 5 s by default for more replicas to join: none will.
        common = ["--save", "", "--appendonly", "no", "--repl-diskless-sync-delay", "0", *auth]
        primary = RedisNode(
            "primary",
            free_port(self.host),
            self.directory / "primary",
            self.host,
            args=common,
            binary=binaries["redis-server"],
            password=self.password,
            tls=self.tls,
        )
        replica = RedisNode(
            "replica",
            free_port(self.host),
            self.directory / "replica",
            self.host,
            args=[*common, "--replicaof", self.host, str(primary.port)],
            binary=binaries["redis-server"],
            password=self.password,
            tls=self.tls,
        )
        self.servers = [primary, replica]
        self.nodes += self.servers
        primary.start()
        replica.start()
        wait_until(
            lambda: replica.info("replication").get("master_link_status") == "up",
            10,
            "the replica's link to the primary",
        )
        # Each Sentinel is told its own id and the others' addresses and ids, and the replica, as Sentinel
        # writes them into its own configuration once it has found them: left to find each other through
        # hello messages (every 2 s) and the primary's INFO (every 10 s), they sometimes took over 20 s.
        ports: list[int] = []
        while len(ports) < 3:
            port = free_port(self.host)
            if port not in ports and port not in (primary.port, replica.port):
                ports.append(port)
        ids = [secrets.token_hex(20) for _ in ports]
        for index in range(3):
            directory = self.directory / f"sentinel{index}"
            directory.mkdir(parents=True, exist_ok=True)
            config = directory / "sentinel.conf"
            lines = [
                f"dir {directory}",
                f"sentinel myid {ids[index]}",
                f"sentinel monitor {self.master_name} {self.host} {primary.port} 2",
                f"sentinel known-replica {self.master_name} {self.host} {replica.port}",
                *(
                    f"sentinel known-sentinel {self.master_name} {self.host} {ports[other]} {ids[other]}"
                    for other in range(3)
                    if other != index
                ),
                f"sentinel down-after-milliseconds {self.master_name} {self.down_after_ms}",
                f"sentinel failover-timeout {self.master_name} {self.failover_timeout_ms}",
                f"sentinel parallel-syncs {self.master_name} 1",
            ]
            if self.password:
                lines.append(f"sentinel auth-pass {self.master_name} {self.password}")
            if self.sentinel_password:
                # Sentinels use their own requirepass when they talk to each other.
                lines.append(f"requirepass {self.sentinel_password}")
            config.write_text("\n".join(lines) + "\n")  # Sentinel rewrites this file: one per process
            sentinel = RedisNode(
                f"sentinel{index}",
                ports[index],
                directory,
                self.host,
                config_file=config,
                binary=binaries["redis-sentinel"],
                password=self.sentinel_password,
                tls=self.tls,
            )
            self.sentinels.append(sentinel)
            self.nodes.append(sentinel)
        for sentinel in self.sentinels:
            sentinel.start()
        # A kill_primary() before every Sentinel knows the others would find no majority for the failover.
        wait_until(self._agreed, 40, "three Sentinels that know each other and the replica", interval=0.1)
        self.startup_seconds = time.monotonic() - started

    def stop(self) -> None:
        """Kill every process and remove the files, the certificates included."""
        super().stop()
        if self.tls is not None:
            shutil.rmtree(self.tls.ca.parent, ignore_errors=True)

    def _master_state(self, sentinel: RedisNode) -> dict[str, str]:
        """SENTINEL MASTER as a dict, whichever RESP version redis-py speaks."""
        reply = sentinel.command("SENTINEL", "MASTER", self.master_name)
        return dict(zip(reply[::2], reply[1::2], strict=True)) if isinstance(reply, list) else dict(reply)

    def _agreed(self, port: int | None = None) -> bool:
        """Whether every Sentinel names ``port`` as primary, sees the replica and the two other Sentinels."""
        expected = port if port is not None else self.servers[0].port
        for sentinel in self.sentinels:
            state = self._master_state(sentinel)
            if (
                int(state["port"]) != expected
                or int(state["num-other-sentinels"]) < 2
                or int(state["num-slaves"]) < 1
                or "s_down" in state["flags"]
            ):
                return False
        return True

    @property
    def sentinel_addresses(self) -> list[tuple[str, int]]:
        """(host, port) of each Sentinel, as redis-py's Sentinel() takes them."""
        return [(s.host, s.port) for s in self.sentinels]

    def url(self, db: int = 0, scheme: str | None = None) -> str:
        """``redis+sentinel://[:pw@]h:p1,h:p2,h:p3/<master-name>/<db>`` (``rediss+sentinel`` with TLS).

        The data nodes' password goes in the userinfo (as python-socketio does); the Sentinels' own password,
        if any, and the CA file go in the query (``sentinel_password``, ``ssl_ca_certs``): a proposal, since
        redis-py parses no Sentinel URL.
        """
        scheme = scheme or ("rediss+sentinel" if self.tls is not None else "redis+sentinel")
        hosts = ",".join(f"{h}:{p}" for h, p in self.sentinel_addresses)
        auth = f":{self.password}@" if self.password else ""
        query = []
        if self.sentinel_password:
            query.append(f"sentinel_password={self.sentinel_password}")
        if self.tls is not None:
            query.append(f"ssl_ca_certs={self.tls.ca}")
        return f"{scheme}://{auth}{hosts}/{self.master_name}/{db}" + ("?" + "&".join(query) if query else "")

    def master_address(self) -> tuple[str, int]:
        """The primary's address as the first live Sentinel reports it."""
        sentinel = next(s for s in self.sentinels if s.alive)
        host, port = sentinel.command("SENTINEL", "GET-MASTER-ADDR-BY-NAME", self.master_name)
        return str(host), int(port)

    @property
    def primary(self) -> RedisNode:
        """The data node the Sentinels name as primary now."""
        _, port = self.master_address()
        return next(node for node in self.servers if node.port == port)

    @property
    def replica(self) -> RedisNode:
        """The data node that is not the primary now."""
        return next(node for node in self.servers if node is not self.primary)

    def failover(self, timeout: float = 30.0, *, wait_demoted: bool = True) -> RedisNode:
        """SENTINEL FAILOVER; wait until every Sentinel names the new primary and it says role:master, then
        (``wait_demoted``) until the old primary is its replica: Sentinel demotes it only ~10 s later
        (measured), and until then the old primary is a second, writable master.

        A planned switchover: it starts once the replica holds every write the primary has (replication is
        asynchronous, and Sentinel promotes the replica as it is)."""
        old = self.primary
        new = next(node for node in self.servers if node is not old)
        written = int(old.info("replication")["master_repl_offset"])
        wait_until(
            lambda: int(new.info("replication").get("slave_repl_offset", -1)) >= written,
            10,
            "the replica holding every write before the switchover",
        )
        next(s for s in self.sentinels if s.alive).command("SENTINEL", "FAILOVER", self.master_name)
        self._wait_promoted(new, timeout)
        if not wait_demoted:
            return new

        def demoted() -> bool:
            """The old primary replicates from the new one."""
            info = old.info("replication")
            return info.get("role") == "slave" and int(info.get("master_port", 0)) == new.port

        wait_until(demoted, timeout, f"{old.name} becoming a replica of {new.name}", interval=0.1)
        return new

    def kill_primary(self, timeout: float = 30.0) -> RedisNode:
        """SIGKILL the primary; wait until the Sentinels have promoted the replica. The old one stays down
        (``restart(node)`` brings it back, and the Sentinels then make it a replica)."""
        old = self.primary
        new = next(node for node in self.servers if node is not old)
        old.kill()
        self._wait_promoted(new, timeout)
        return new

    def restart(self, node: RedisNode) -> None:
        """Start a killed data node again; the Sentinels make it a replica of the current primary."""
        node.start()

    def _wait_promoted(self, new: RedisNode, timeout: float) -> None:
        """Wait until ``new`` says role:master and every live Sentinel names it."""

        def promoted() -> bool:
            """The new primary is master and named by every live Sentinel."""
            if new.info("replication").get("role") != "master":
                return False
            live = [s for s in self.sentinels if s.alive]
            return all(
                int(s.command("SENTINEL", "GET-MASTER-ADDR-BY-NAME", self.master_name)[1]) == new.port
                for s in live
            )

        wait_until(promoted, timeout, f"the Sentinels promoting {new.name}", interval=0.1)


# --- Network namespaces as hosts -----------------------------------------------------------------------


@dataclass
class NetHost:
    """One namespace: its own loopback, one interface (eth0) on the shared bridge, its own address."""

    name: str
    namespace: str
    address: str
    bridge_port: str  # the veth end in the root namespace, enslaved to the bridge: down = partitioned
    # (namespace's host or None for the root namespace, rule) for each rule drop() added
    drop_rules: list[tuple[NetHost | None, list[str]]] = field(default_factory=list)


class NetHosts:
    """N hosts (network namespaces) on one bridge in the root namespace, where the test driver lives.

    Names carry a random suffix and the subnet is a random free 10.213.X.0/24, so parallel or aborted runs do
    not collide. The namespaces have no route but the bridge: nothing they send can leave the machine. Talk
    to the hosts' addresses only between start() and stop(): without the bridge, the root namespace would
    route 10.213.X.Y to its default gateway, off this machine.
    """

    def __init__(self, count: int = 3, *, names: Sequence[str] | None = None) -> None:
        """Describe ``count`` hosts (or the named ones); nothing is created before start()."""
        self.names = list(names) if names is not None else [f"h{i + 1}" for i in range(count)]
        self.suffix = secrets.token_hex(3)
        self.bridge = f"drb{self.suffix}"
        self.hosts: dict[str, NetHost] = {}
        self.driver_address = ""
        self.subnet = ""
        self._created_namespaces: list[str] = []
        self._created_links: list[str] = []
        self._root_rules: list[list[str]] = []
        self._processes: list[subprocess.Popen[bytes]] = []
        self._redis: list[RedisNode] = []
        self._directory: Path | None = None
        self._tools: dict[str, str] = {}
        self.startup_seconds = 0.0

    def __enter__(self) -> Self:
        """Create the hosts; on leaving the block, remove everything."""
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        """Remove everything, whatever happened in the block."""
        self.stop()

    def __getitem__(self, name: str) -> NetHost:
        """The host called ``name`` (h1, h2, ...)."""
        return self.hosts[name]

    # -- building ---------------------------------------------------------------------------------------

    def _ip(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        """Run ``ip`` with these arguments; raise with its stderr when ``check`` and it fails."""
        result = subprocess.run(
            [self._tools["ip"], *args], capture_output=True, text=True, timeout=30, stdin=subprocess.DEVNULL
        )
        if check and result.returncode != 0:
            raise RuntimeError(f"ip {' '.join(args)}: {result.stderr.strip() or result.returncode}")
        return result

    def _pick_subnet(self) -> str:
        """A 10.213.X.0/24 that no interface or route on this machine uses yet."""
        taken = self._ip("-4", "route", "show").stdout + self._ip("-4", "-o", "addr", "show").stdout
        for third in secrets.SystemRandom().sample(range(256), 256):
            prefix = f"10.213.{third}."
            if prefix not in taken:
                return prefix
        raise RuntimeError("no free 10.213.X.0/24 subnet")

    def start(self) -> Self:
        """Create the bridge and the hosts; raise Unavailable (with the reason) when this machine cannot."""
        started = time.monotonic()
        if not hasattr(os, "geteuid") or os.geteuid() != 0:
            raise Unavailable("network namespaces need root (ip netns add); this process is not root")
        self._tools = require_binaries("ip", "iptables")
        try:
            self._build()
        except BaseException as exc:
            self.stop()
            denied = ("netns", "Operation not permitted", "Permission denied")
            if isinstance(exc, RuntimeError) and any(word in str(exc) for word in denied):
                raise Unavailable(f"cannot create network namespaces here: {exc}") from exc
            raise
        self.startup_seconds = time.monotonic() - started
        return self

    def _build(self) -> None:
        """Create everything, recording each object so that stop() can remove it."""
        prefix = self._pick_subnet()
        self.subnet = f"{prefix}0/24"
        self.driver_address = f"{prefix}1"
        self._ip("link", "add", self.bridge, "type", "bridge")
        self._created_links.append(self.bridge)
        self._ip("addr", "add", f"{self.driver_address}/24", "dev", self.bridge)
        self._ip("link", "set", self.bridge, "up")
        for index, name in enumerate(self.names):
            namespace = f"drl-{self.suffix}-{name}"
            outer, inner = f"drv{self.suffix}{index}", f"dri{self.suffix}{index}"
            self._ip("netns", "add", namespace)
            self._created_namespaces.append(namespace)
            self._ip("link", "add", outer, "type", "veth", "peer", "name", inner)
            self._created_links.append(outer)  # deleting one end deletes the pair
            self._ip("link", "set", inner, "netns", namespace)
            self._ip("-n", namespace, "link", "set", inner, "name", "eth0")
            address = f"{prefix}{index + 2}"
            self._ip("-n", namespace, "addr", "add", f"{address}/24", "dev", "eth0")
            self._ip("-n", namespace, "link", "set", "eth0", "up")
            self._ip("-n", namespace, "link", "set", "lo", "up")
            self._ip("link", "set", outer, "master", self.bridge)
            self._ip("link", "set", outer, "up")
            self.hosts[name] = NetHost(name, namespace, address, outer)
        # With br_netfilter loaded, bridged frames pass the root FORWARD chain: make sure a DROP policy there
        # (Docker sets one) does not eat our traffic.
        if Path("/proc/sys/net/bridge/bridge-nf-call-iptables").exists():
            rule = ["FORWARD", "-i", self.bridge, "-o", self.bridge, "-j", "ACCEPT"]
            self._iptables(None, "-I", *rule)
            self._root_rules.append(rule)

    def _iptables(self, host: NetHost | None, *args: str) -> str:
        """Run iptables in ``host``'s namespace (None: the root namespace); return its output."""
        prefix = self.exec_prefix(host.name) if host is not None else []
        command = [*prefix, self._tools["iptables"], "-w", "5", *args]
        result = subprocess.run(command, capture_output=True, text=True, timeout=30, stdin=subprocess.DEVNULL)
        if result.returncode != 0:
            raise RuntimeError(f"{' '.join(command)}: {result.stderr.strip()}")
        return result.stdout

    def iptables_rules(self, host: str) -> str:
        """``iptables -S`` inside ``host``: what drop() put there."""
        return self._iptables(self.hosts[host], "-S")

    # -- using -----------------------------------------------------------------------------------------

    def exec_prefix(self, host: str) -> list[str]:
        """The command prefix that runs a program inside ``host``."""
        return [self._tools.get("ip", "ip"), "netns", "exec", self.hosts[host].namespace]

    def run(
        self, host: str, *command: str, timeout: float = 30.0, check: bool = False
    ) -> subprocess.CompletedProcess[str]:
        """Run a command to completion inside ``host`` and capture its output."""
        return subprocess.run(
            [*self.exec_prefix(host), *command],
            capture_output=True,
            text=True,
            timeout=timeout,
            check=check,
            stdin=subprocess.DEVNULL,
        )

    def popen(self, host: str, *command: str, **kwargs: Any) -> subprocess.Popen[bytes]:
        """Start a long-running command inside ``host``; stop() kills it if the test did not."""
        process: subprocess.Popen[bytes] = subprocess.Popen([*self.exec_prefix(host), *command], **kwargs)
        self._processes.append(process)
        return process

    def start_redis(self, host: str, port: int = 6379, *args: str) -> RedisNode:
        """A redis-server inside ``host``, bound to that host's address only (reachable over the bridge)."""
        binary = require_binaries("redis-server")["redis-server"]
        if self._directory is None:
            self._directory = Path(tempfile.mkdtemp(prefix="distreload-nethosts-"))
        node = RedisNode(
            f"redis-{host}-{port}",
            port,
            self._directory / f"{host}-{port}",
            self.hosts[host].address,
            args=["--save", "", "--appendonly", "no", "--protected-mode", "no", *args],
            binary=binary,
            launcher=self.exec_prefix(host),
        )
        self._redis.append(node)
        node.start()
        return node

    def drop(self, host: str, percent: float, *, egress_at_receivers: bool = False) -> None:
        """Drop ``percent`` % of the packets ``host`` receives and, independently, of those it sends, with
        iptables statistic-match rules (this kernel has no netem). 0 removes the rules.

        By default both rules sit in ``host``'s namespace (INPUT and OUTPUT). A DROP in the sender's own
        OUTPUT chain is seen by the sender: UDP sendto() fails with EPERM (TCP just retransmits). With
        ``egress_at_receivers`` the egress loss is applied where the packets arrive instead (INPUT of the
        driver and of every other host, matching ``host``'s address), as loss on a wire would be.
        """
        target = self.hosts[host]
        self.undrop(host)
        if percent <= 0:
            return
        chance = ["-m", "statistic", "--mode", "random", "--probability", f"{min(percent, 100.0) / 100:.4f}"]
        rules: list[tuple[NetHost | None, list[str]]] = [
            (target, ["INPUT", "-i", "eth0", *chance, "-j", "DROP"])
        ]
        if not egress_at_receivers:
            rules.append((target, ["OUTPUT", "-o", "eth0", *chance, "-j", "DROP"]))
        else:
            source = ["-s", target.address, *chance, "-j", "DROP"]
            rules.append((None, ["INPUT", "-i", self.bridge, *source]))
            rules += [
                (other, ["INPUT", "-i", "eth0", *source])
                for other in self.hosts.values()
                if other is not target
            ]
        for where, rule in rules:
            self._iptables(where, "-A", *rule)
            target.drop_rules.append((where, rule))

    def undrop(self, host: str) -> None:
        """Remove the rules drop() added for ``host`` (wherever they sit)."""
        target = self.hosts[host]
        while target.drop_rules:
            where, rule = target.drop_rules.pop()
            self._iptables(where, "-D", *rule)

    def partition(self, host: str) -> None:
        """Cut ``host`` off: its bridge port goes down, so everything it sends or is sent is lost silently
        (no reset, no error), as when a cable is pulled or a switch port dies."""
        self._ip("link", "set", self.hosts[host].bridge_port, "down")

    def heal(self, host: str) -> None:
        """Bring ``host``'s bridge port up again: the partition ends."""
        self._ip("link", "set", self.hosts[host].bridge_port, "up")

    # -- cleaning up ------------------------------------------------------------------------------------

    def stop(self) -> None:
        """Remove every process, namespace, link and rule this object made; never stops half-way."""
        errors: list[str] = []
        for node in self._redis:
            with contextlib.suppress(Exception):
                node.kill()
        for process in self._processes:
            with contextlib.suppress(Exception):
                if process.poll() is None:
                    process.kill()
                process.wait(10)
        for namespace in self._created_namespaces:
            # Anything still running in our namespace was started through it by this test.
            pids = self._ip("netns", "pids", namespace, check=False).stdout
            for pid in pids.split():
                with contextlib.suppress(ProcessLookupError, ValueError):
                    os.kill(int(pid), signal.SIGKILL)
            result = self._ip("netns", "del", namespace, check=False)
            if result.returncode != 0:
                errors.append(result.stderr.strip())
        self._created_namespaces.clear()
        for link in reversed(self._created_links):
            # A namespace's veth pair vanishes with it, asynchronously: "Cannot find device" means done.
            result = self._ip("link", "del", link, check=False)
            if result.returncode != 0 and "Cannot find device" not in result.stderr:
                errors.append(result.stderr.strip())
        self._created_links.clear()
        for host in self.hosts.values():
            for where, rule in host.drop_rules:
                if where is None:
                    try:
                        self._iptables(None, "-D", *rule)
                    except Exception as exc:
                        errors.append(str(exc))
            host.drop_rules.clear()
        for rule in self._root_rules:
            try:
                self._iptables(None, "-D", *rule)
            except Exception as exc:
                errors.append(str(exc))
        self._root_rules.clear()
        if self._directory is not None:
            shutil.rmtree(self._directory, ignore_errors=True)
        self.hosts.clear()
        if errors:
            raise RuntimeError("NetHosts cleanup left something behind: " + "; ".join(errors))


def leftover_net_objects() -> list[str]:
    """Namespaces and links that a NetHosts run left behind (names start with drl-/drb/drv)."""
    found = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout.split()
    found = [name for name in found if name.startswith("drl-")]
    links = subprocess.run(["ip", "-o", "link", "show"], capture_output=True, text=True).stdout
    found += re.findall(r"^\d+: (dr[bv][0-9a-f]{6}\d*)[@:]", links, re.MULTILINE)
    return found


# --- Fixtures --------------------------------------------------------------------------------------------


@contextlib.contextmanager
def running(topology: Any) -> Iterator[Any]:
    """Start a topology for one test, turning 'this machine cannot' into a skip (a failure under CI)."""
    try:
        topology.start()
    except Unavailable as exc:
        missing(str(exc))
    try:
        yield topology
    finally:
        topology.stop()


@pytest.fixture
def redis_cluster3(tmp_path: Path) -> Iterator[RedisCluster3]:
    """A fresh 3-master Redis Cluster for one test."""
    with running(RedisCluster3(tmp_path / "cluster")) as cluster:
        yield cluster


@pytest.fixture
def sentinel_set(tmp_path: Path) -> Iterator[SentinelSet]:
    """A fresh primary + replica + three Sentinels for one test."""
    with running(SentinelSet(tmp_path / "sentinel")) as sentinels:
        yield sentinels


@pytest.fixture
def net_hosts() -> Iterator[NetHosts]:
    """Three hosts (h1, h2, h3) in network namespaces on one bridge; the test runs in the root namespace."""
    with running(NetHosts(3)) as hosts:
        yield hosts
