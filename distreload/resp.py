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

from .config import RedisAddress, Target, parse_redis_url
from .protocol import (
    PublishError,
    PublishResult,
    ReloadRequest,
    describe_publish_failure,
    publish_call,
    publish_result,
)


class ReplyError(Exception):
    """Redis answered with an error (``-ERR ...``)."""


class ClusterRedirect(Exception):
    """The server is a Redis Cluster node (it answered MOVED, ASK or CROSSSLOT): publish with redis-py."""


class _Connection:
    def __init__(self, url: str, timeout: float) -> None:
        address = parse_redis_url(url)
        self.username = address.username
        self.password = address.password
        self.database = address.db
        if address.socket_path is not None:
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            sock.settimeout(timeout)
            sock.connect(address.socket_path)
        else:
            sock = socket.create_connection((address.host or "localhost", address.port), timeout)
            if address.tls:
                sock = _wrap_tls(sock, address)
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


def _wrap_tls(sock: socket.socket, address: RedisAddress) -> socket.socket:
    import ssl

    # The same TLS options redis-py reads from the URL, so one URL serves workers and CLI.
    context = ssl.create_default_context(cafile=address.option("ssl_ca_certs"))
    certfile = address.option("ssl_certfile")
    if certfile:
        context.load_cert_chain(certfile, address.option("ssl_keyfile"))
    if address.option("ssl_check_hostname") in ("false", "False", "0"):
        context.check_hostname = False
    requirement = address.option("ssl_cert_reqs")
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
        wrapped = context.wrap_socket(sock, server_hostname=address.host)
    except (OSError, ssl.SSLError) as exc:
        sock.close()
        raise TLSHandshakeFailed(
            f"TLS handshake with {address.host} failed ({exc.__class__.__name__}: {exc}); nothing was sent "
            f"(a Redis without TLS takes redis://, not rediss://)"
        ) from None
    wrapped.settimeout(timeout)
    return wrapped


TLS_HANDSHAKE_TIMEOUT = 2.0


class TLSHandshakeFailed(ConnectionError):
    """The TLS handshake did not complete, so no command reached the server."""


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
            commands.append(("EVAL", *map(str, publish_call(target.namespace, request))))
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
