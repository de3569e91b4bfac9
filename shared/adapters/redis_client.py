"""The one way processes open Redis: a pool sized to the work, where a caller waits for a free
connection instead of failing (redis-py's default pool raises once 100 are busy, which a worker
with 256 messages in flight reaches at once). The wait is a semaphore in front of redis-py's
plain pool (`GatedConnectionPool`): a free connection costs no timer, only a wait does.

`REDIS_URL` names one Redis (`redis://`, `rediss://`, `unix://`) or a Redis Cluster:
`redis+cluster://[user:password@]host:port[,host:port...]` (`rediss+cluster://` with TLS). The
hosts are seeds: the client learns the other nodes from them, so one reachable seed is enough.
A cluster has only database 0, so a cluster URL has no database path. Every key paynotify
writes is laid out for a cluster (shared.adapters.redis_keys), so the same code runs on both.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, cast
from urllib.parse import unquote, urlsplit

from redis import exceptions
from redis.asyncio import ConnectionPool, Redis
from redis.asyncio.cluster import ClusterNode, RedisCluster
from redis.asyncio.connection import Connection

if TYPE_CHECKING:
    from collections.abc import Iterable, Sequence

    from redis.asyncio.client import Pipeline
    from redis.asyncio.connection import AbstractConnection

# Seconds a caller may wait for a connection before that counts as Redis being unavailable.
POOL_TIMEOUT = 30.0
# Every command has a deadline: a Redis that stops answering (SIGSTOP, a dead host) raises
# redis.exceptions.TimeoutError, which callers wait out like any outage, instead of a hang.
SOCKET_TIMEOUT = 5.0
CLUSTER_SCHEMES = ("redis+cluster", "rediss+cluster")
_PIPELINE_HEADROOM = 8


@dataclass(frozen=True, slots=True)
class ClusterAddress:
    """A cluster URL taken apart: its seed nodes and credentials."""

    nodes: tuple[tuple[str, int], ...]
    username: str | None
    password: str | None
    tls: bool


def is_cluster_url(url: str) -> bool:
    return urlsplit(url).scheme in CLUSTER_SCHEMES


def parse_cluster_url(url: str) -> ClusterAddress:
    """`redis+cluster://[user:password@]host:port[,host:port...]`; raises ValueError (naming
    what is wrong, never the password) for anything else."""
    parts = urlsplit(url)
    if parts.scheme not in CLUSTER_SCHEMES:
        raise ValueError(f"not a cluster URL (scheme {parts.scheme!r})")
    if parts.path.strip("/") not in {"", "0"}:
        raise ValueError("a Redis Cluster has only database 0: leave the path out")
    credentials, _, hosts = parts.netloc.rpartition("@")
    username, _, password = credentials.partition(":")
    nodes = []
    for seed in hosts.split(","):
        host, _, port = seed.strip().rpartition(":")
        if not host or not port.isdigit():
            raise ValueError(f"cluster seed {seed!r} is not host:port")
        nodes.append((host.strip("[]"), int(port)))
    return ClusterAddress(
        nodes=tuple(nodes),
        username=unquote(username) or None,
        password=unquote(password) or None if password else None,
        tls=parts.scheme == "rediss+cluster",
    )


def connect_redis(url: str, *, max_connections: int) -> Redis:
    """A client for `url`. For a cluster, a `RedisCluster`: typed as `Redis` because the
    processes use only commands both clients offer with the same signatures (keyed commands,
    scripts on one slot, non-transactional pipelines; `is_cluster` tells them apart where the
    batching differs)."""
    if is_cluster_url(url):
        return cast("Redis", _connect_cluster(parse_cluster_url(url), max_connections))
    pool = GatedConnectionPool.from_url(
        url,
        max_connections=max_connections,
        timeout=POOL_TIMEOUT,
        socket_timeout=SOCKET_TIMEOUT,
        socket_connect_timeout=SOCKET_TIMEOUT,
    )
    # from_pool: closing the client closes this pool too.
    return Redis.from_pool(pool)


class GatedConnectionPool(ConnectionPool):
    """redis-py's plain pool behind a gate of `max_connections` turns. A caller takes a turn
    before a connection and gives it back with the connection, so the plain pool never has more
    than `max_connections` in use and never raises MaxConnectionsError; with every turn taken, a
    caller waits (first come, first served) up to `timeout` seconds, then gets a ConnectionError
    (an outage, as from redis-py's BlockingConnectionPool, which this replaces: that one runs a
    timer and a condition for every checkout, this one only when a caller has to wait). Every
    connection keeps the pool's `socket_timeout`. redis-py's own connection-count metrics
    (its observability module, which paynotify does not configure) are not recorded."""

    def __init__(
        self, *, max_connections: int = 50, timeout: float = POOL_TIMEOUT, **kwargs: Any
    ) -> None:
        if kwargs.get("connection_class", Connection) is Connection:
            kwargs["connection_class"] = TimedWriteConnection
        super().__init__(max_connections=max_connections, **kwargs)
        self.timeout = timeout
        self._gate = asyncio.Semaphore(max_connections)

    async def get_connection(self, *_args: Any, **_options: Any) -> AbstractConnection:
        gate = self._gate
        if gate.locked():
            try:
                async with asyncio.timeout(self.timeout):
                    await gate.acquire()
            except TimeoutError:
                raise exceptions.ConnectionError("No connection available.") from None
        else:
            await gate.acquire()  # a free turn: returns at once
        try:
            async with self._lock:
                connection: AbstractConnection = self.get_available_connection()  # type: ignore[no-untyped-call]
        except BaseException:
            gate.release()
            raise
        try:
            await self.ensure_connection(connection)
        except BaseException:
            await self.release(connection)  # gives the turn back
            raise
        return connection

    async def release(self, connection: AbstractConnection) -> None:
        try:
            await super().release(connection)
        finally:
            self._gate.release()


class TimedWriteConnection(Connection):
    """redis-py's TCP connection, with the deadline on a command's write (`socket_timeout`)
    kept by `asyncio.timeout` rather than `asyncio.wait_for`, which on Python 3.11 runs every
    write as a task of its own, and armed only when the write left bytes buffered. The same
    outcomes: a write that does not finish in time disconnects and raises
    redis.exceptions.TimeoutError, a socket error disconnects and raises ConnectionError,
    anything else (a cancellation) disconnects and propagates."""

    async def send_packed_command(
        self, command: bytes | str | Iterable[bytes], check_health: bool = True
    ) -> None:
        if not self.is_connected:
            await self.connect_check_health(check_health=False)
        if check_health:
            await self.check_health()  # type: ignore[no-untyped-call]
        if isinstance(command, str):
            command = command.encode()
        chunks = [command] if isinstance(command, bytes) else command
        writer = self._writer
        if writer is None:  # closed under the caller (redis-py's own write fails here too)
            raise exceptions.ConnectionError("Error while writing to socket: connection closed")
        try:
            writer.writelines(chunks)
            # A write the socket took whole leaves nothing buffered, and then drain cannot wait:
            # the timer is armed only when it could (most commands are a few hundred bytes).
            if self.socket_timeout and writer.transport.get_write_buffer_size():
                async with asyncio.timeout(self.socket_timeout):
                    await writer.drain()
            else:
                await writer.drain()
        except TimeoutError:
            await self.disconnect(nowait=True)
            raise exceptions.TimeoutError("Timeout writing to socket") from None
        except OSError as exc:
            await self.disconnect(nowait=True)
            raise exceptions.ConnectionError(f"Error while writing to socket: {exc}") from exc
        except BaseException:
            await self.disconnect(nowait=True)
            raise


class GatedRedisCluster(RedisCluster):
    """redis-py's cluster client raises MaxConnectionsError once a node's pool is busy, where
    the single-server pool above makes a caller wait. This one waits too: at most
    `max_connections` commands are in flight (so never more on one node), a caller waits up to
    `POOL_TIMEOUT` for a turn, then gets a ConnectionError (an outage, as with the pool)."""

    def __init__(self, *, max_connections: int, **kwargs: Any) -> None:
        # Pipelines bypass the gate and hold one connection per node they touch: headroom.
        super().__init__(max_connections=max_connections + _PIPELINE_HEADROOM, **kwargs)
        self._gate = asyncio.Semaphore(max_connections)

    async def execute_command(self, *args: Any, **kwargs: Any) -> Any:
        try:
            async with asyncio.timeout(POOL_TIMEOUT):
                await self._gate.acquire()
        except TimeoutError:
            raise exceptions.ConnectionError("no Redis Cluster connection free in time") from None
        try:
            return await super().execute_command(*args, **kwargs)
        except AttributeError as exc:
            # redis-py's asyncio cluster client can close a connection under a command in flight
            # while it relearns the cluster after losing a node ("'NoneType' object has no
            # attribute 'writelines'", seen in tests/chaos/failover.py; redis/redis-py#3815 and
            # #3835 are others of the kind). That is the node going away: an outage, retried.
            raise exceptions.ConnectionError(
                f"cluster connection lost in a failover: {exc}"
            ) from exc
        finally:
            self._gate.release()


def _connect_cluster(address: ClusterAddress, max_connections: int) -> RedisCluster:
    extra: dict[str, Any] = {"ssl": True} if address.tls else {}
    return GatedRedisCluster(
        startup_nodes=[ClusterNode(host, port) for host, port in address.nodes],
        username=address.username,
        password=address.password,
        max_connections=max_connections,
        socket_timeout=SOCKET_TIMEOUT,
        socket_connect_timeout=SOCKET_TIMEOUT,
        **extra,
    )


def is_cluster(client: object) -> bool:
    return isinstance(client, RedisCluster)


class Script:
    """A Lua script called by EVALSHA straight through the client's `execute_command`, the
    keys and arguments passed as they are. redis-py's `AsyncScript` (kept inside, for its SHA
    and for pipelines, where it also loads the script) copies both into tuples and imports its
    pipeline class on every call. A server that lacks the script (NOSCRIPT: a restart, another
    server) gets it loaded once, and the call is made again, as with `AsyncScript`."""

    __slots__ = ("_client", "_registered")

    def __init__(self, client: Redis, text: str) -> None:
        self._client = client
        self._registered = client.register_script(text)

    @property
    def sha(self) -> str:
        return str(self._registered.sha)

    async def __call__(
        self, keys: Sequence[Any], args: Sequence[Any], client: Redis | Pipeline | None = None
    ) -> Any:
        if client is not None and client is not self._client:
            # A pipeline (which must load the script itself) or another server: redis-py's way.
            return await self._registered(keys=keys, args=args, client=client)
        try:
            return await self._client.execute_command(  # type: ignore[no-untyped-call]
                "EVALSHA", self._registered.sha, len(keys), *keys, *args
            )
        except exceptions.NoScriptError:
            return await self._registered(keys=keys, args=args)
