"""``distreload publish`` to a plain one-node Redis, spoken directly in Redis's protocol (RESP).

The command line runs from shells, editors' save hooks and CI jobs, where start-up is the whole cost:
importing redis-py (and asyncio with it) takes longer than the publish itself. For a ``redis://``,
``rediss://`` or ``unix://`` URL this module connects, authenticates, selects the database and runs the
publish script over one socket. A Redis Cluster node that does not hold the namespace's slot answers with a
redirection, which this module does not follow (:class:`ClusterRedirect`): the caller takes redis-py's
cluster client then. Sentinel URLs never come here.
"""

from __future__ import annotations

import socket
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

from .config import Target
from .protocol import (
    _PUBLISH_SCRIPT,
    PUBLISH_KEYS,
    PublishError,
    PublishResult,
    ReloadRequest,
    describe_publish_failure,
    publish_arguments,
    publish_result,
)


class ReplyError(Exception):
    """Redis answered with an error (``-ERR ...``)."""


class ClusterRedirect(Exception):
    """The server is a Redis Cluster node (it answered MOVED, ASK or CROSSSLOT): publish with redis-py."""


class _Connection:
    def __init__(self, url: str, timeout: float) -> None:
        parts = urlsplit(url)
        query = parse_qs(parts.query)
        self.username: str | None = unquote(parts.username) if parts.username else _first(query, "username")
        self.password: str | None = unquote(parts.password) if parts.password else _first(query, "password")
        if parts.scheme == "unix":
            self.database = int((query.get("db") or ["0"])[0])
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            sock.settimeout(timeout)
            sock.connect(parts.path)
        else:
            path = parts.path.strip("/")
            self.database = int(path or (query.get("db") or ["0"])[0])
            sock = socket.create_connection((parts.hostname or "localhost", parts.port or 6379), timeout)
            if parts.scheme == "rediss":
                sock = _wrap_tls(sock, parts.hostname, query)
        self.socket = sock
        self.reader = sock.makefile("rb")

    def command(self, *arguments: str | bytes) -> Any:
        return self.pipeline([arguments])[0]

    def pipeline(self, commands: list[tuple[str | bytes, ...]]) -> list[Any]:
        """Send several commands in one write and read every reply: one round trip, not one each. A
        reply that is an error is returned as a ReplyError object, not raised."""
        request = b"".join(_encode(command) for command in commands)
        self.socket.sendall(request)
        replies = []
        for _ in commands:
            try:
                replies.append(self._reply())
            except ReplyError as exc:
                replies.append(exc)
        return replies

    def _reply(self) -> Any:
        line = self.reader.readline()
        if not line.endswith(b"\r\n"):
            raise ConnectionError("Redis closed the connection")
        kind, rest = line[:1], line[1:-2]
        if kind == b"+":
            return rest
        if kind == b"-":
            raise ReplyError(rest.decode(errors="replace"))
        if kind == b":":
            return int(rest)
        if kind == b"$":
            size = int(rest)
            return None if size < 0 else self.reader.read(size + 2)[:-2]
        if kind == b"*":
            count = int(rest)
            return None if count < 0 else [self._reply() for _ in range(count)]
        raise ConnectionError(f"unexpected reply from Redis: {line[:40]!r}")

    def close(self) -> None:
        self.reader.close()
        self.socket.close()


def _encode(arguments: tuple[str | bytes, ...]) -> bytes:
    encoded = [a.encode() if isinstance(a, str) else a for a in arguments]
    return b"*%d\r\n" % len(encoded) + b"".join(b"$%d\r\n%s\r\n" % (len(a), a) for a in encoded)


def _wrap_tls(sock: socket.socket, hostname: str | None, query: dict[str, list[str]]) -> socket.socket:
    import ssl

    # The same TLS options redis-py reads from the URL, so one URL serves workers and CLI.
    context = ssl.create_default_context(cafile=_first(query, "ssl_ca_certs"))
    certfile = _first(query, "ssl_certfile")
    if certfile:
        context.load_cert_chain(certfile, _first(query, "ssl_keyfile"))
    if _first(query, "ssl_check_hostname") in ("false", "False", "0"):
        context.check_hostname = False
    requirement = _first(query, "ssl_cert_reqs")
    if requirement in ("none", "CERT_NONE"):
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    elif requirement in ("optional", "CERT_OPTIONAL"):
        context.verify_mode = ssl.CERT_OPTIONAL
    # A TLS handshake answers within a round trip or two; a server that does not speak TLS (a plain Redis
    # reads the ClientHello as the start of a command) never answers, so it gets the connect timeout, not
    # the command timeout, and the error says that nothing was sent.
    timeout = sock.gettimeout()
    sock.settimeout(min(timeout or TLS_HANDSHAKE_TIMEOUT, TLS_HANDSHAKE_TIMEOUT))
    try:
        wrapped = context.wrap_socket(sock, server_hostname=hostname)
    except (OSError, ssl.SSLError) as exc:
        sock.close()
        raise TLSHandshakeFailed(
            f"TLS handshake with {hostname} failed ({exc.__class__.__name__}: {exc}); nothing was sent "
            f"(a Redis without TLS takes redis://, not rediss://)"
        ) from None
    wrapped.settimeout(timeout)
    return wrapped


TLS_HANDSHAKE_TIMEOUT = 2.0


class TLSHandshakeFailed(ConnectionError):
    """The TLS handshake did not complete, so no command reached the server."""


def _first(query: dict[str, list[str]], name: str) -> str | None:
    values = query.get(name)
    return values[0] if values else None


_CLUSTER_ERRORS = ("MOVED ", "ASK ", "CROSSSLOT ", "CLUSTERDOWN ")


def publish_over_resp(target: Target, request: ReloadRequest, *, timeout: float = 5.0) -> PublishResult:
    """Publish one reload to every worker sharing ``target`` (a plain one-node Redis); raise
    PublishError when it did not go out, ClusterRedirect when the server is a cluster node."""
    try:
        connection = _Connection(target.redis_url, timeout)
        try:
            # One round trip: log in, select and publish in one write.
            commands: list[tuple[str | bytes, ...]] = []
            if connection.password is not None:
                commands.append(
                    ("AUTH", connection.username, connection.password)
                    if connection.username
                    else ("AUTH", connection.password)
                )
            if connection.database:
                commands.append(("SELECT", str(connection.database)))
            commands.append(
                ("EVAL", _PUBLISH_SCRIPT, str(PUBLISH_KEYS), *publish_arguments(target.namespace, request))
            )
            *_, reply = answers = connection.pipeline(commands)
            for answer in answers:
                if isinstance(answer, ReplyError):
                    raise answer
        finally:
            connection.close()
    except ReplyError as exc:
        text = str(exc)
        if text.startswith(_CLUSTER_ERRORS):
            raise ClusterRedirect(text) from None
        if text.startswith("ERR unknown command") and "'eval'" in text.lower():
            # A Sentinel runs no scripts: the URL names a Sentinel where a data node belongs.
            exc = ReplyError(
                f"{text.split(',')[0]} (a Redis Sentinel? name it "
                "redis+sentinel://host:26379,host2:26379/<master-name>/<db>)"
            )
        raise PublishError(describe_publish_failure(target.display_url(), exc)) from exc
    except (OSError, ValueError) as exc:
        raise PublishError(describe_publish_failure(target.display_url(), exc)) from exc
    return publish_result(reply)
