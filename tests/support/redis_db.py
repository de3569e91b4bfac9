"""A Redis database of a test module's own on the session's Redis, emptied before and after.

On a Redis Cluster (`PAYNOTIFY_TEST_REDIS_CLUSTER=1`) there is only database 0: a module's
"database" is then the whole cluster, emptied when the module takes it. Test modules run one
after another, so that keeps them apart as well; what a module must not do on either is use two
databases at once and expect them apart.
"""

from __future__ import annotations

import contextlib
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

from shared.adapters.redis_client import connect_redis, is_cluster_url
from shared.adapters.redis_keys import pending_keys, retry_keys
from shared.adapters.schedules import ShardedSchedule

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

    from redis.asyncio import Redis


def in_db(url: str, db: int) -> str:
    """The Redis URL with its database replaced (a `db=` argument would lose to the URL's); a
    cluster URL as it is."""
    if is_cluster_url(url):
        return url
    return urlsplit(url)._replace(path=f"/{db}").geturl()


def open_redis(url: str, max_connections: int = 32) -> Redis:
    """A client for a test's own checks: a cluster client for a cluster URL."""
    return connect_redis(url, max_connections=max_connections)


async def flush(client: Redis) -> None:
    """Empty the database (every primary's, on a cluster: the cluster client sends FLUSHDB to
    all of them)."""
    await client.flushdb()


async def empty_db(url: str) -> None:
    client = open_redis(url, 4)
    try:
        await flush(client)
    finally:
        await client.aclose()


@contextlib.asynccontextmanager
async def clean_db(redis_url: str, db: int) -> AsyncIterator[Redis]:
    client = open_redis(in_db(redis_url, db))
    await flush(client)
    try:
        yield client
    finally:
        await flush(client)
        await client.aclose()


def pending_index(redis: Redis) -> ShardedSchedule:
    """The sweeper's pending index (its shards) on `redis`, for a test's own looks."""
    return ShardedSchedule(redis, pending_keys())


def retry_set(redis: Redis) -> ShardedSchedule:
    """The workers' retry set (its shards) on `redis`."""
    return ShardedSchedule(redis, retry_keys())
