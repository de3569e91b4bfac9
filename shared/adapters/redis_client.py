"""The one way processes open Redis: a pool sized to the work, where a caller waits for a free
connection instead of failing (redis-py's default pool raises once 100 are busy, which a worker
with 256 messages in flight reaches at once)."""

from __future__ import annotations

from redis.asyncio import BlockingConnectionPool, Redis

# Seconds a caller may wait for a connection before that counts as Redis being unavailable.
POOL_TIMEOUT = 30.0
# Every command has a deadline: a Redis that stops answering (SIGSTOP, a dead host) raises
# redis.exceptions.TimeoutError, which callers wait out like any outage, instead of a hang.
SOCKET_TIMEOUT = 5.0


def connect_redis(url: str, *, max_connections: int) -> Redis:
    pool = BlockingConnectionPool.from_url(
        url,
        max_connections=max_connections,
        timeout=POOL_TIMEOUT,
        socket_timeout=SOCKET_TIMEOUT,
        socket_connect_timeout=SOCKET_TIMEOUT,
    )
    # from_pool: closing the client closes this pool too.
    return Redis.from_pool(pool)
