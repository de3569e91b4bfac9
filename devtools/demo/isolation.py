"""Keep one demo run's data apart from every other run's, on a stack that may be reused.

- **Redis**: the run claims an empty database of its own (the order book, outcomes, retries, the
  sweeper's lease and index all live there), and empties it when it ends. A database left by a
  run that died is reclaimed once its process is gone. A Redis Cluster has only database 0: the
  run claims the whole cluster the same way (empty, or left by a dead run).
- **Kafka**: the run has topics of its own (`PAYNOTIFY_TOPIC_PREFIX=demo-<run id>.`): two runs
  on one callbacks topic but different Redis databases would decide the same payments twice.
  Its consumer groups are its own too, started at the topics' end, and so is its billing
  consumer's position on the events topic.
"""

from __future__ import annotations

import asyncio
import os
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.structs import OffsetAndMetadata

from shared.adapters.redis_client import connect_redis, is_cluster, is_cluster_url

if TYPE_CHECKING:
    from collections.abc import Iterable

    from redis.asyncio import Redis

CLAIM_KEY = "pn:demo:claim"  # value: "<run id> <pid>"
DATABASES = range(1, 16)  # Redis' default 16 databases; 0 is left to the user's own runs


class NoFreeDatabaseError(RuntimeError):
    """Every candidate Redis database holds data that is not a dead demo run's."""


def with_database(url: str, db: int) -> str:
    """The Redis URL with its database replaced (a `db=` argument would lose to the URL's); a
    cluster's URL as it is (database 0 only)."""
    if is_cluster_url(url):
        return url
    return urlsplit(url)._replace(path=f"/{db}").geturl()


def database_of(url: str) -> int:
    if is_cluster_url(url):
        return 0
    path = urlsplit(url).path.strip("/")
    return int(path) if path.isdigit() else 0


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # somebody else's process: alive
        return True
    return True


async def claim_database(url: str, run_id: str, candidates: Iterable[int] = DATABASES) -> str:
    """Claim a database of `url`'s Redis for this run; return the URL naming it."""
    claim = f"{run_id} {os.getpid()}"
    if is_cluster_url(url):
        candidates = [0]
    for db in candidates:
        candidate = with_database(url, db)
        redis = connect_redis(candidate, max_connections=4)
        try:
            if await _size(redis) != 0:
                if not await _abandoned(redis):
                    continue
                await redis.flushdb()
            # NX and a second look close the race with another run choosing the same database.
            if await redis.set(CLAIM_KEY, claim, nx=True) and await _size(redis) == 1:
                return candidate
        finally:
            await redis.aclose()
    raise NoFreeDatabaseError(
        "no empty Redis database among 1-15 (on a cluster: the cluster is not empty) for the "
        "demo; free one (FLUSHDB) and run again"
    )


async def _size(redis: Redis) -> int:
    """Keys in the database: on a cluster, on every primary (DBSIZE alone asks one node)."""
    if is_cluster(redis):
        return int(await redis.dbsize(target_nodes="primaries"))
    return int(await redis.dbsize())


async def _abandoned(redis: Redis) -> bool:
    """A database claimed by a demo run whose process is gone."""
    value = await redis.get(CLAIM_KEY)
    if value is None:
        return False
    _, _, pid = _text(value).partition(" ")
    return pid.isdigit() and not _pid_alive(int(pid))


async def release_database(url: str, run_id: str) -> None:
    """Empty the run's database, if it is still this run's."""
    redis = connect_redis(url, max_connections=4)
    try:
        value = await redis.get(CLAIM_KEY)
        if value is not None and _text(value).startswith(f"{run_id} "):
            await redis.flushdb()
    finally:
        await redis.aclose()


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


async def end_offsets(bootstrap: str, topic: str) -> dict[int, int]:
    """Each partition's end offset (the offset the next record will get)."""
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
    await consumer.start()
    try:
        partitions = await topic_partitions(bootstrap, topic)
        ends = await consumer.end_offsets([TopicPartition(topic, p) for p in partitions])
        return {tp.partition: offset for tp, offset in ends.items()}
    finally:
        await consumer.stop()


async def start_group_at_end(bootstrap: str, group: str, topic: str) -> None:
    """Commit `group`'s offsets at `topic`'s current end, so its members start from there."""
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap, group_id=group, enable_auto_commit=False
    )
    await consumer.start()
    try:
        partitions = await topic_partitions(bootstrap, topic)
        tps = [TopicPartition(topic, p) for p in partitions]
        ends = await consumer.end_offsets(tps)
        consumer.assign(tps)
        await consumer.commit({tp: OffsetAndMetadata(ends[tp], "") for tp in tps})
    finally:
        await consumer.stop()


async def topic_partitions(bootstrap: str, topic: str, deadline: float = 30.0) -> list[int]:
    """The topic's partitions, from the broker's metadata (a consumer's own metadata holds only
    the topics it subscribed to); a topic created a moment ago may take a few rounds."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        async with asyncio.timeout(deadline):
            while True:
                (described,) = await admin.describe_topics([topic])
                found = [p["partition"] for p in described.get("partitions") or ()]
                if described.get("error_code") == 0 and found:
                    return sorted(found)
                await asyncio.sleep(0.2)
    except TimeoutError:
        raise RuntimeError(
            f"topic {topic} has no partitions; run `paynotify topics ensure`"
        ) from None
    finally:
        await admin.close()
