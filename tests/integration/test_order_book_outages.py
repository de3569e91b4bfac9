"""Redis and Kafka going away under the sweeper and the orders consumer (issue 10, hole 8), on a
redis-server and a broker of this module's own that the tests stop and start again: both
processes wait the outage out, never exit for it, and finish their work once it is over."""

from __future__ import annotations

import asyncio
import time
import uuid
from types import MappingProxyType
from typing import TYPE_CHECKING

import orjson
import pytest
from aiokafka import AIOKafkaConsumer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from redis import exceptions as redis_errors

from devtools.stack.local import LocalStack, free_port
from shared.adapters.kafka import CallbackEnvelope, start_producer
from shared.adapters.order_book import SWEEPER_LEASE_KEY, OrderBook
from shared.adapters.redis_client import connect_redis
from shared.adapters.redis_lock import Locks
from shared.adapters.topic_admin import ensure_topics
from shared.clock import SystemClock
from shared.domain.orders import OrderRecord
from shared.domain.sweep import SweepSchedule
from shared.protocol.models import OrderQueryAnswer
from shared.protocol.payment import PaymentReport, PaymentStatus, report_fields
from shared.service.sweep import SweepOrder
from shared.settings import Settings
from workers.__main__ import run_worker
from workers.orders_consumer import OrdersConsumer
from workers.sweeper import Sweeper, SweeperLimits
from workers.sweeper_main import run_sweeper

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
    from pathlib import Path

    from aiokafka import AIOKafkaProducer
    from redis.asyncio import Redis

pytestmark = pytest.mark.integration

SCHEDULE = SweepSchedule(expiry=60.0, first_check=0.2, max_gap=30.0, settle_gap=30.0)
OUTAGE = 2.0  # seconds each service stays away
MERCHANTS = frozenset({"m1"})


@pytest.fixture(scope="module")
def own_redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalStack]:
    stack = LocalStack(
        state_dir=tmp_path_factory.mktemp("book-redis-outage"), kafka_port=0, redis_port=free_port()
    )
    stack.start_redis()
    try:
        yield stack
    finally:
        stack.stop_redis()


@pytest.fixture
async def redis(own_redis: LocalStack) -> AsyncIterator[Redis]:
    if not own_redis.status()["redis"]:  # a test that failed while it was down
        own_redis.start_redis()
    client = connect_redis(own_redis.redis_url, max_connections=32)
    await client.flushdb()
    try:
        yield client
    finally:
        if not own_redis.status()["redis"]:
            own_redis.start_redis()
        await client.connection_pool.disconnect()
        await client.flushdb()
        await client.aclose()


class PaidPlatform:
    """Every order is paid; each answer takes `delay` s, so sweeps are in flight at any time."""

    def __init__(self, delay: float) -> None:
        self.delay = delay
        self.queries = 0

    async def query_order(self, mch_id: str, mch_order: str) -> OrderQueryAnswer:
        self.queries += 1
        await asyncio.sleep(self.delay)
        now = int(time.time())
        report = PaymentReport(
            mch_id=mch_id, pay_type=10, mch_order=mch_order, amt=10_000, mch_amt=10_000,
            amt_type="cny", status=PaymentStatus.PAID, created_at=now, success_at=now,
            origin_order=None, call=None, sign_type="md5",
        )  # fmt: skip
        raw = {"code": "1", "msg": "ok", **report_fields(report), "sign": "0" * 32}
        return OrderQueryAnswer(report=report, key_id="sha256:test", raw=MappingProxyType(raw))


async def _restart(stack: LocalStack, stop: str, start: str) -> None:
    """Stop a service of `stack`, keep it away for OUTAGE seconds, start it again."""
    await asyncio.to_thread(getattr(stack, stop))
    await asyncio.sleep(OUTAGE)
    await asyncio.to_thread(getattr(stack, start))


async def _until(predicate: Callable[[], Awaitable[bool]], deadline: float) -> None:
    async with asyncio.timeout(deadline):
        while not await predicate():
            await asyncio.sleep(0.05)


async def test_the_sweeper_waits_out_a_redis_restart_and_finishes_its_work(
    own_redis: LocalStack,
    redis: Redis,
    kafka_bootstrap: str,
    fresh_topic: Callable[..., Awaitable[str]],
) -> None:
    """redis-server is stopped while sweeps are in flight and started again after two
    seconds. The sweeper keeps running, and every order's sweep is complete (queried, forwarded,
    rescheduled) soon after Redis is back. Before, a sweep that failed against the absent Redis
    was dropped and its order waited out the claim's hold (here 60 s) before anyone looked
    again."""
    names = [f"o-{i}" for i in range(24)]
    book = OrderBook(redis, SystemClock(), schedule=SCHEDULE)
    for name in names:
        await book.record_pending(OrderRecord("m1", name, 10_000, 10, int(time.time()) - 1))
    producer = await start_producer(Settings(kafka_bootstrap_servers=kafka_bootstrap))
    platform = PaidPlatform(delay=0.25)
    orders = SweepOrder(
        book, platform, producer, clock=SystemClock(), schedule=SCHEDULE, rate=40.0,
        callbacks_topic=await fresh_topic("callbacks"), events_topic=await fresh_topic("events"),
        dlq_topic=await fresh_topic("dlq"), merchants=MERCHANTS,
    )  # fmt: skip
    sweeper = Sweeper(
        orders, Locks(redis),
        limits=SweeperLimits(concurrency=4, lease_ttl=1.0, claim_hold=60.0, poll=0.02),
    )  # fmt: skip
    task = asyncio.create_task(sweeper.run())

    async def swept() -> bool:
        try:
            entries = [await book.entry("m1", name) for name in names]
        except redis_errors.ConnectionError:  # the test's own pooled connection, after the restart
            return False
        return all(e is not None and e.sweep_attempts >= 1 for e in entries)

    try:
        await _until(lambda: _true(sweeper.stats["forwarded"] >= 4), deadline=30)
        await _restart(own_redis, "stop_redis", "start_redis")
        back = time.monotonic()
        await _until(swept, deadline=30)
        assert time.monotonic() - back < 20  # well inside the claim's hold
        assert not task.done()
        assert sweeper.stats["outage_waits"] > 0
        assert sweeper.stats["internal_error"] == 0
    finally:
        await sweeper.stop()
        async with asyncio.timeout(30):
            await asyncio.gather(task, return_exceptions=True)
        await producer.stop()
    assert task.exception() is None


async def test_the_orders_consumer_waits_out_a_redis_restart_and_records_everything(
    own_redis: LocalStack,
    redis: Redis,
    kafka_bootstrap: str,
    fresh_topic: Callable[..., Awaitable[str]],
) -> None:
    """Messages keep arriving while redis-server is stopped: the consumer retries them with
    backoff, never exits, and records every one once Redis is back."""
    topic = await fresh_topic("orders", partitions=2)
    settings = Settings(kafka_bootstrap_servers=kafka_bootstrap, consumer_group=uuid.uuid4().hex)
    producer = await start_producer(settings)
    consumer = OrdersConsumer(
        settings, OrderBook(redis, SystemClock(), schedule=SCHEDULE), producer=producer,
        clock=SystemClock(), consumer_factory=_factory(kafka_bootstrap, topic, settings),
        dlq_topic=await fresh_topic("dlq"), merchants=MERCHANTS,
    )  # fmt: skip
    task = asyncio.create_task(consumer.run())
    try:
        await _send(producer, topic, [f"before-{i}" for i in range(10)])
        await _until(lambda: _true(consumer.recorded >= 10 or task.done()), deadline=30)
        await asyncio.to_thread(own_redis.stop_redis)
        await _send(producer, topic, [f"during-{i}" for i in range(10)])
        await _until(lambda: _true(consumer.retries >= 2 or task.done()), deadline=30)
        await asyncio.sleep(OUTAGE)
        await asyncio.to_thread(own_redis.start_redis)
        await _until(lambda: _true(consumer.recorded >= 20 or task.done()), deadline=30)
        assert not task.done()
        assert consumer.recorded == 20
        assert consumer.dead_lettered == 0
    finally:
        await consumer.stop()
        async with asyncio.timeout(30):
            await asyncio.gather(task, return_exceptions=True)
        await producer.stop()
    assert task.exception() is None


async def test_the_orders_consumer_started_while_kafka_is_away_waits_for_it(
    kafka_stack: LocalStack, redis: Redis
) -> None:
    """The worker starts the orders consumer; with the broker away, `consumer.start()` raised
    and took the worker down. Now the consumer waits (counted as retries), and once the broker
    is back it records what is published."""
    bootstrap = kafka_stack.bootstrap_servers
    settings = Settings(kafka_bootstrap_servers=bootstrap, consumer_group=uuid.uuid4().hex)
    topic = f"orders.{uuid.uuid4().hex[:8]}"
    await asyncio.to_thread(kafka_stack.stop_kafka)
    restarted = False
    try:
        consumer = OrdersConsumer(
            settings, OrderBook(redis, SystemClock(), schedule=SCHEDULE),
            producer=None,  # type: ignore[arg-type] - nothing is dead-lettered here
            clock=SystemClock(), consumer_factory=_factory(bootstrap, topic, settings),
            merchants=MERCHANTS,
        )  # fmt: skip
        task = asyncio.create_task(consumer.run())
        await _until(lambda: _true(consumer.retries >= 1 or task.done()), deadline=60)
        assert not task.done()
        await asyncio.to_thread(kafka_stack.start_kafka)
        restarted = True
        admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
        await admin.start()
        try:
            await admin.create_topics([NewTopic(topic, 1, 1)])
        finally:
            await admin.close()
        producer = await start_producer(settings)
        try:
            await _send(producer, topic, ["late-0", "late-1"])
            await _until(lambda: _true(consumer.recorded >= 2 or task.done()), deadline=60)
            assert consumer.recorded == 2
        finally:
            await consumer.stop()
            async with asyncio.timeout(30):
                await asyncio.gather(task, return_exceptions=True)
            await producer.stop()
        assert task.exception() is None
    finally:
        if not restarted:
            await asyncio.to_thread(kafka_stack.start_kafka)


def _factory(bootstrap: str, topic: str, settings: Settings) -> Callable[[], AIOKafkaConsumer]:
    def make() -> AIOKafkaConsumer:
        return AIOKafkaConsumer(
            topic, bootstrap_servers=bootstrap, group_id=f"{settings.consumer_group}.orders",
            enable_auto_commit=False, auto_offset_reset="earliest",
        )  # fmt: skip

    return make


async def _send(producer: AIOKafkaProducer, topic: str, names: list[str]) -> None:
    for name in names:
        message = {"type": "order.created", "mch_id": "m1", "mch_order": name, "amt": 10_000,
                   "pay_type": 10, "created_at": 1_700_000_000}  # fmt: skip
        await producer.send_and_wait(topic, orjson.dumps(message), key=f"m1:{name}")


async def _true(value: bool) -> bool:
    return value


async def test_the_sweeper_started_while_kafka_is_away_waits_for_it(
    kafka_stack: LocalStack, own_redis: LocalStack, redis: Redis, merchants_file: Path
) -> None:
    """`paynotify sweeper` started its producer first thing, and with the broker away that
    raised and the process exited. Now it waits for the broker (a stop meanwhile ends it
    cleanly) and, once the broker is there, takes the lease and sweeps."""
    settings = Settings(
        kafka_bootstrap_servers=kafka_stack.bootstrap_servers, redis_url=own_redis.redis_url,
        merchants_file=merchants_file, platform_url="http://127.0.0.1:9/",
    )  # fmt: skip
    await ensure_topics(settings)  # kept by the broker across its restart
    await asyncio.to_thread(kafka_stack.stop_kafka)
    try:
        stop = asyncio.Event()
        task = asyncio.create_task(run_sweeper(settings, stop))
        await asyncio.sleep(3)
        assert not task.done()
        stop.set()  # stopped while still waiting: returns, no error
        async with asyncio.timeout(15):
            await task

        stop = asyncio.Event()
        task = asyncio.create_task(run_sweeper(settings, stop))
        await asyncio.sleep(1)
        await asyncio.to_thread(kafka_stack.start_kafka)
        await _until(lambda: _leading(redis), deadline=60)
        assert not task.done()
        stop.set()
        async with asyncio.timeout(30):
            await task
    finally:
        if not kafka_stack.status()["kafka"]:
            await asyncio.to_thread(kafka_stack.start_kafka)


async def _leading(redis: Redis) -> bool:
    return bool(await redis.exists(SWEEPER_LEASE_KEY))


async def test_the_worker_started_while_kafka_is_away_waits_for_it(
    kafka_stack: LocalStack, own_redis: LocalStack, redis: Redis, merchants_file: Path
) -> None:
    """`paynotify worker` started its producer and consumer first thing, and with the broker
    away that raised and the process exited. Now it waits for the broker (a stop meanwhile ends
    it cleanly) and, once the broker is there, consumes: a forged envelope published then is
    dead-lettered as `bad_signature`."""
    settings = Settings(
        kafka_bootstrap_servers=kafka_stack.bootstrap_servers, redis_url=own_redis.redis_url,
        merchants_file=merchants_file, platform_url="http://127.0.0.1:9/",
        consumer_group=f"late-{uuid.uuid4().hex[:8]}", topic_prefix=f"late{uuid.uuid4().hex[:6]}.",
        topic_partitions=1,
    )  # fmt: skip
    await ensure_topics(settings)  # kept by the broker across its restart
    await asyncio.to_thread(kafka_stack.stop_kafka)
    try:
        stop = asyncio.Event()
        task = asyncio.create_task(run_worker(settings, stop))
        await asyncio.sleep(3)
        assert not task.done()
        stop.set()  # stopped while still waiting: returns, no error
        async with asyncio.timeout(15):
            await task

        stop = asyncio.Event()
        task = asyncio.create_task(run_worker(settings, stop))
        await asyncio.sleep(1)
        await asyncio.to_thread(kafka_stack.start_kafka)
        producer = await start_producer(settings)
        try:
            forged = CallbackEnvelope(
                fields={"mch_id": "t9awtvk6dn", "mch_order": "late-1", "sign": "0" * 32},
                key_id="sha256:forged", received_at=time.time(), peer=None,
                delivery_id=uuid.uuid4().hex, source="notification",
            )  # fmt: skip
            await producer.send_and_wait(
                settings.topics.callbacks, forged.encode(), key="t9awtvk6dn:late-1"
            )
            dead = await _first(settings, settings.topics.dlq)
            assert dead["reason"] == "bad_signature"
            assert not task.done()
        finally:
            await producer.stop()
        stop.set()
        async with asyncio.timeout(60):
            await task
    finally:
        if not kafka_stack.status()["kafka"]:
            await asyncio.to_thread(kafka_stack.start_kafka)


async def _first(settings: Settings, topic: str) -> dict[str, object]:
    consumer = AIOKafkaConsumer(
        topic, bootstrap_servers=settings.kafka_bootstrap_servers, group_id=None,
        auto_offset_reset="earliest",
    )  # fmt: skip
    await consumer.start()
    try:
        async with asyncio.timeout(60):
            while True:
                batches = await consumer.getmany(timeout_ms=500)
                for records in batches.values():
                    for record in records:
                        found: dict[str, object] = orjson.loads(record.value)
                        return found
    finally:
        await consumer.stop()
