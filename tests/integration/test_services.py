"""The foundation's promise: real Kafka and real Redis answer the project's clients."""

from __future__ import annotations

import asyncio
import uuid

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

from shared.adapters.redis_client import connect_redis
from shared.adapters.redis_lock import Locks
from tests.support.redis_db import open_redis

pytestmark = pytest.mark.integration


async def test_produce_and_consume_on_a_fresh_topic(kafka_bootstrap: str, fresh_topic) -> None:
    """An idempotent acks=all producer's records come back, in order, from the real broker."""
    topic = await fresh_topic("foundation", partitions=1)
    producer = AIOKafkaProducer(
        bootstrap_servers=kafka_bootstrap, acks="all", enable_idempotence=True
    )
    await producer.start()
    try:
        sent = [f"record-{i}".encode() for i in range(5)]
        for value in sent:
            metadata = await producer.send_and_wait(topic, value, key=b"order-1")
            assert metadata.topic == topic
    finally:
        await producer.stop()

    consumer = AIOKafkaConsumer(
        topic,
        bootstrap_servers=kafka_bootstrap,
        group_id=f"g-{uuid.uuid4().hex}",
        auto_offset_reset="earliest",
        enable_auto_commit=False,
    )
    await consumer.start()
    try:
        received: list[bytes] = []
        async with asyncio.timeout(30):
            while len(received) < len(sent):
                batch = await consumer.getmany(timeout_ms=1000)
                received.extend(r.value for records in batch.values() for r in records)
        assert received == sent
    finally:
        await consumer.stop()


async def test_lock_is_exclusive_and_released_only_by_its_owner(redis_url: str) -> None:
    """A second taker is refused; a wrong token frees nothing; the owner's release frees it."""
    redis = open_redis(redis_url)
    locks = Locks(redis)
    key = f"test:lock:{uuid.uuid4().hex}"
    try:
        token = await locks.acquire(key, ttl_ms=10_000)
        assert token is not None
        assert await locks.acquire(key, ttl_ms=10_000) is None
        assert not await locks.release(key, "not-the-token")
        assert await locks.renew(key, token, ttl_ms=20_000)
        assert await redis.pttl(key) > 10_000
        assert await locks.release(key, token)
        assert await redis.exists(key) == 0
        assert await locks.acquire(key, ttl_ms=10_000) is not None
    finally:
        await redis.delete(key)
        await redis.aclose()


async def test_lock_expires_by_itself(redis_url: str) -> None:
    """A holder that dies leaves a lock that frees itself after its TTL."""
    redis = open_redis(redis_url)
    locks = Locks(redis)
    key = f"test:lock:{uuid.uuid4().hex}"
    try:
        assert await locks.acquire(key, ttl_ms=50) is not None
        async with asyncio.timeout(5):
            while await redis.exists(key):
                await asyncio.sleep(0.02)
        assert await locks.acquire(key, ttl_ms=10_000) is not None
    finally:
        await redis.delete(key)
        await redis.aclose()


async def test_busy_pool_makes_callers_wait_instead_of_failing(redis_url: str) -> None:
    """With more commands in flight than connections, every command still succeeds: the pool
    queues callers (redis-py's default pool would raise MaxConnectionsError)."""
    redis = connect_redis(redis_url, max_connections=4)
    key = f"test:pool:{uuid.uuid4().hex}"
    try:
        results = await asyncio.gather(*(redis.incr(key) for _ in range(300)))
        assert sorted(results) == list(range(1, 301))
    finally:
        await redis.delete(key)
        await redis.aclose()
