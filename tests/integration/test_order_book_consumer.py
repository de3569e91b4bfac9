"""The orders consumer against real Kafka and Redis: valid `order.created` messages land in the
order book, invalid ones on the DLQ with their reason, and offsets are committed after that."""

from __future__ import annotations

import asyncio
import uuid
from typing import TYPE_CHECKING, Any

import orjson
import pytest
from aiokafka import AIOKafkaConsumer
from redis.asyncio import Redis

from shared.adapters.kafka import start_producer
from shared.adapters.order_book import OrderBook
from shared.clock import SystemClock
from shared.domain.orders import OrderRecord
from shared.domain.sweep import SweepSchedule
from shared.settings import Settings
from tests.support.redis_db import clean_db
from workers.orders_consumer import OrdersConsumer

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Awaitable, Callable

pytestmark = pytest.mark.integration

BOOK_DB = 12


@pytest.fixture
async def redis(redis_url: str) -> AsyncIterator[Redis]:
    async with clean_db(redis_url, BOOK_DB) as client:
        yield client


def _message(mch_order: str, **change: Any) -> dict[str, Any]:
    return {
        "type": "order.created", "mch_id": "m1", "mch_order": mch_order, "amt": 10_000,
        "pay_type": 10, "created_at": 1_700_000_000,
    } | change  # fmt: skip


async def _read_all(bootstrap: str, topic: str, count: int) -> list[Any]:
    consumer = AIOKafkaConsumer(
        topic, bootstrap_servers=bootstrap, group_id=f"t-{uuid.uuid4().hex}",
        auto_offset_reset="earliest", enable_auto_commit=False,
    )  # fmt: skip
    await consumer.start()
    found: list[Any] = []
    try:
        async with asyncio.timeout(30):
            while len(found) < count:
                batch = await consumer.getmany(timeout_ms=500)
                found.extend(r for records in batch.values() for r in records)
    finally:
        await consumer.stop()
    return found


async def test_valid_orders_are_recorded_and_invalid_ones_dead_lettered(
    kafka_bootstrap: str,
    redis: Redis,
    fresh_topic: Callable[..., Awaitable[str]],
) -> None:
    """Forty valid messages (one repeated) and four broken ones: every valid order is in the
    book, each broken one is on the DLQ with its reason, nothing is dropped, and the group's
    committed offsets cover every message."""
    orders_topic = await fresh_topic("orders", partitions=3)
    dlq_topic = await fresh_topic("dlq", partitions=1)
    settings = Settings(kafka_bootstrap_servers=kafka_bootstrap, consumer_group=uuid.uuid4().hex)
    group = f"{settings.consumer_group}.orders"
    producer = await start_producer(settings)
    book = OrderBook(redis, SystemClock(), schedule=SweepSchedule(expiry=3600.0))
    valid = [f"o-{i}" for i in range(40)]
    broken = [
        ("bad-amt", orjson.dumps(_message("bad-amt", amt=-5)), b"m1:bad-amt", "invalid_fields"),
        ("no-json", b"{not json", b"m1:no-json", "undecodable"),
        ("wrong-key", orjson.dumps(_message("wrong-key")), b"m1:other", "key_mismatch"),
        ("conflict", orjson.dumps(_message("o-0", amt=1)), b"m1:o-0", "order_conflict"),
    ]
    try:
        for mch_order in [*valid, valid[3]]:
            await producer.send_and_wait(
                orders_topic, orjson.dumps(_message(mch_order)), key=f"m1:{mch_order}"
            )
        for _, value, key, _ in broken:
            await producer.send_and_wait(orders_topic, value, key=key)

        def factory() -> AIOKafkaConsumer:
            return AIOKafkaConsumer(
                orders_topic, bootstrap_servers=kafka_bootstrap, group_id=group,
                enable_auto_commit=False, auto_offset_reset="earliest",
            )  # fmt: skip

        consumer = OrdersConsumer(
            settings, book, producer=producer, clock=SystemClock(), consumer_factory=factory,
            dlq_topic=dlq_topic,
        )  # fmt: skip
        task = asyncio.create_task(consumer.run())
        try:
            async with asyncio.timeout(60):
                while consumer.recorded < len(valid) or consumer.dead_lettered < len(broken):
                    await asyncio.sleep(0.05)
        finally:
            await consumer.stop()
            async with asyncio.timeout(30):
                await task

        for mch_order in valid:
            assert await book.get("m1", mch_order) == OrderRecord(
                "m1", mch_order, 10_000, 10, 1_700_000_000
            )
        assert await book.get("m1", "bad-amt") is None
        assert (await book.get("m1", "o-0")).amt == 10_000  # type: ignore[union-attr]
        assert consumer.recorded == len(valid)

        dead = await _read_all(kafka_bootstrap, dlq_topic, len(broken))
        reasons = {r.key: orjson.loads(r.value)["reason"] for r in dead}
        assert reasons == {
            b"m1:bad-amt": "invalid_fields",
            b"m1:no-json": "undecodable",
            b"m1:other": "key_mismatch",
            b"m1:o-0": "order_conflict",
        }
        for record in dead:
            assert "10000" not in orjson.loads(record.value)["detail"]

        # Every message is covered by the group's committed offsets: a restart redoes nothing.
        check = AIOKafkaConsumer(bootstrap_servers=kafka_bootstrap, group_id=group)
        await check.start()
        try:
            partitions = check.partitions_for_topic(orders_topic) or set()
            from aiokafka import TopicPartition  # noqa: PLC0415

            tps = [TopicPartition(orders_topic, p) for p in partitions]
            ends = await check.end_offsets(tps)
            for tp in tps:
                assert await check.committed(tp) == ends[tp]
        finally:
            await check.stop()
    finally:
        await producer.stop()


async def test_stop_while_redis_is_away_commits_nothing(
    kafka_bootstrap: str, fresh_topic: Callable[..., Awaitable[str]]
) -> None:
    """With Redis unreachable the message is retried, not dropped; stopping then commits no
    offset, so the message is redelivered once Redis is back."""
    orders_topic = await fresh_topic("orders", partitions=1)
    settings = Settings(kafka_bootstrap_servers=kafka_bootstrap, consumer_group=uuid.uuid4().hex)
    group = f"{settings.consumer_group}.orders"
    producer = await start_producer(settings)
    dead_redis = Redis(host="127.0.0.1", port=1, socket_connect_timeout=0.2)
    book = OrderBook(dead_redis, SystemClock())
    try:
        await producer.send_and_wait(
            orders_topic, orjson.dumps(_message("o-away")), key="m1:o-away"
        )

        def factory() -> AIOKafkaConsumer:
            return AIOKafkaConsumer(
                orders_topic, bootstrap_servers=kafka_bootstrap, group_id=group,
                enable_auto_commit=False, auto_offset_reset="earliest",
            )  # fmt: skip

        consumer = OrdersConsumer(
            settings, book, producer=producer, clock=SystemClock(), consumer_factory=factory
        )
        task = asyncio.create_task(consumer.run())
        async with asyncio.timeout(30):
            while consumer.retries < 3:  # fetched, and failed against the closed port
                await asyncio.sleep(0.05)
        await consumer.stop()
        async with asyncio.timeout(30):
            await task
        assert consumer.recorded == 0
        assert consumer.dead_lettered == 0
        check = AIOKafkaConsumer(bootstrap_servers=kafka_bootstrap, group_id=group)
        await check.start()
        try:
            from aiokafka import TopicPartition  # noqa: PLC0415

            assert await check.committed(TopicPartition(orders_topic, 0)) is None
        finally:
            await check.stop()
    finally:
        await producer.stop()
        await dead_redis.aclose()
