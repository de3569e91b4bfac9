"""The orders consumer against real Kafka and Redis: valid `order.created` messages land in the
order book, invalid ones on the DLQ with their reason, and offsets are committed after that; no
single message, and no Redis or Kafka outage, ends the consumer (issue 10, holes 1, 8 and 11)."""

from __future__ import annotations

import asyncio
import uuid
from typing import TYPE_CHECKING, Any

import orjson
import pytest
from aiokafka import AIOKafkaConsumer
from redis.asyncio import Redis

from shared.adapters.kafka import start_producer
from shared.adapters.order_book import OrderBook, order_record_key
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
MERCHANTS = frozenset({"m1"})  # the merchant ids with keys


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
    """Forty valid messages (one repeated) and five refused ones: every valid order is in the
    book, each refused one is on the DLQ with its reason (an order of a merchant without a key
    is `unknown_merchant`, not recorded: the sweeper could never query it), nothing is
    dropped, and the group's committed offsets cover every message."""
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
        ("ghost", orjson.dumps(_message("g-1", mch_id="ghost")), b"ghost:g-1", "unknown_merchant"),
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
            dlq_topic=dlq_topic, merchants=MERCHANTS,
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
            b"ghost:g-1": "unknown_merchant",
        }
        assert await book.get("ghost", "g-1") is None
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
            settings, book, producer=producer, clock=SystemClock(), consumer_factory=factory,
            merchants=MERCHANTS,
        )  # fmt: skip
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


async def _consume_until(
    consumer: OrdersConsumer, done: Callable[[], bool], deadline: float = 60.0
) -> asyncio.Task[None]:
    """Run the consumer until `done()` or its task ends (it should not); return the task."""
    task = asyncio.create_task(consumer.run())
    try:
        async with asyncio.timeout(deadline):
            while not (done() or task.done()):
                await asyncio.sleep(0.05)
    except TimeoutError:
        pass
    return task


async def _stopped(consumer: OrdersConsumer, task: asyncio.Task[None]) -> None:
    await consumer.stop()
    async with asyncio.timeout(30):
        await asyncio.gather(task, return_exceptions=True)


async def test_an_unexpected_error_for_one_message_is_dead_lettered_and_the_partition_goes_on(
    kafka_bootstrap: str, redis: Redis, fresh_topic: Callable[..., Awaitable[str]]
) -> None:
    """Hole 1: a record in Redis with bytes that are not UTF-8 made recording raise
    UnicodeDecodeError, which ended the consumer (and the worker with it) at every start; a key
    of the wrong type (WRONGTYPE) was retried for ever as if Redis were away, stopping the
    partition. Each such message now goes to the DLQ as `internal_error` (type and message), and
    the messages after it on the same partition are recorded."""
    orders_topic = await fresh_topic("orders", partitions=1)
    dlq_topic = await fresh_topic("dlq", partitions=1)
    settings = Settings(kafka_bootstrap_servers=kafka_bootstrap, consumer_group=uuid.uuid4().hex)
    producer = await start_producer(settings)
    book = OrderBook(redis, SystemClock(), schedule=SweepSchedule(expiry=3600.0))
    await redis.hset(
        order_record_key("m1", "not-utf8"),
        mapping={
            "mch_id": "m1",
            "mch_order": "not-utf8",
            "amt": b"\xff",
            "pay_type": "10",
            "created_at": "1700000000",
            "state": "pending",
        },
    )
    await redis.set(order_record_key("m1", "wrong-type"), "x")
    good = [f"good-{i}" for i in range(5)]
    try:
        for name in ["not-utf8", "wrong-type", *good]:
            await producer.send_and_wait(
                orders_topic, orjson.dumps(_message(name)), key=f"m1:{name}"
            )
        consumer = OrdersConsumer(
            settings, book, producer=producer, clock=SystemClock(), dlq_topic=dlq_topic,
            consumer_factory=_factory(kafka_bootstrap, orders_topic, settings),
            merchants=MERCHANTS,
        )  # fmt: skip
        task = await _consume_until(consumer, lambda: consumer.recorded >= len(good))
        try:
            assert not task.done()
            assert consumer.recorded == len(good)
        finally:
            await _stopped(consumer, task)
        assert consumer.internal_errors == 2
        for name in good:
            assert await book.get("m1", name) is not None
        dead = await _read_all(kafka_bootstrap, dlq_topic, 2)
        letters = {r.key: orjson.loads(r.value) for r in dead}
        assert {k: v["reason"] for k, v in letters.items()} == {
            b"m1:not-utf8": "internal_error",
            b"m1:wrong-type": "internal_error",
        }
        assert letters[b"m1:not-utf8"]["detail"].startswith("UnicodeDecodeError: ")
        assert letters[b"m1:wrong-type"]["detail"].startswith("ResponseError: WRONGTYPE")
        assert letters[b"m1:not-utf8"]["payload"]["mch_order"] == "not-utf8"
        assert letters[b"m1:not-utf8"]["origin"] == f"{orders_topic}/0@0"
    finally:
        await producer.stop()


async def test_a_message_the_dlq_refuses_whole_is_dead_lettered_without_its_payload(
    kafka_bootstrap: str, redis: Redis, fresh_topic: Callable[..., Awaitable[str]]
) -> None:
    """A message near the size limit that is not JSON grows by a third as a dead letter
    (base64) and the producer refuses it (MessageSizeTooLargeError), which was retried for ever
    as if Kafka were away: the partition stopped. Now its reason goes to the DLQ without the
    payload (`payload_omitted` says how large it was), and the next message is recorded."""
    orders_topic = await fresh_topic("orders", partitions=1)
    dlq_topic = await fresh_topic("dlq", partitions=1)
    settings = Settings(kafka_bootstrap_servers=kafka_bootstrap, consumer_group=uuid.uuid4().hex)
    producer = await start_producer(settings)
    book = OrderBook(redis, SystemClock(), schedule=SweepSchedule(expiry=3600.0))
    try:
        await producer.send_and_wait(orders_topic, b"x" * 900_000, key="m1:huge")
        await producer.send_and_wait(orders_topic, orjson.dumps(_message("after")), key="m1:after")
        consumer = OrdersConsumer(
            settings, book, producer=producer, clock=SystemClock(), dlq_topic=dlq_topic,
            consumer_factory=_factory(kafka_bootstrap, orders_topic, settings),
            merchants=MERCHANTS,
        )  # fmt: skip
        task = await _consume_until(consumer, lambda: consumer.recorded >= 1, deadline=30)
        try:
            assert not task.done()
            assert consumer.recorded == 1
        finally:
            await _stopped(consumer, task)
        [letter] = await _read_all(kafka_bootstrap, dlq_topic, 1)
        document = orjson.loads(letter.value)
        assert letter.key == b"m1:huge"
        assert document["reason"] == "undecodable"
        assert document["payload_omitted"].startswith("900000 bytes, refused by the DLQ")
        assert "payload" not in document
        assert "payload_base64" not in document
    finally:
        await producer.stop()


def _factory(bootstrap: str, topic: str, settings: Settings) -> Callable[[], AIOKafkaConsumer]:
    def make() -> AIOKafkaConsumer:
        return AIOKafkaConsumer(
            topic, bootstrap_servers=bootstrap, group_id=f"{settings.consumer_group}.orders",
            enable_auto_commit=False, auto_offset_reset="earliest",
        )  # fmt: skip

    return make
