"""Hole 11 on real Redis and Kafka: a flood of orders that can never be settled does not starve the
few paid orders whose notifications were lost.

Before, the orders consumer recorded orders of merchants missing from the merchants file, and the
sweeper queried every due order in turn, failing ones at the failure schedule for ever: with a
few thousand hopeless orders ahead of them, paid orders waited behind thousands of failing
queries at the sweep rate (here 80 s at 50 queries a second), and in the issue's run were never
settled at all."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections import Counter
from types import MappingProxyType
from typing import TYPE_CHECKING, Any

import orjson
import pytest
from aiokafka import AIOKafkaConsumer

from shared.adapters.kafka import CallbackEnvelope, start_producer
from shared.adapters.order_book import OrderBook, order_record_key
from shared.adapters.redis_lock import Locks
from shared.clock import SystemClock
from shared.domain.orders import OrderRecord
from shared.domain.sweep import SweepSchedule
from shared.protocol.errors import ParameterCheckFailed, UnknownMerchant
from shared.protocol.models import OrderQueryAnswer
from shared.protocol.payment import PaymentReport, PaymentStatus, report_fields
from shared.service.sweep import SweepOrder
from shared.settings import Settings
from tests.support.redis_db import clean_db, pending_index
from workers.orders_consumer import OrdersConsumer
from workers.sweeper import Sweeper, SweeperLimits

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Awaitable, Callable

    from aiokafka import AIOKafkaProducer
    from redis.asyncio import Redis

pytestmark = pytest.mark.integration

FAIR_DB = 15
RATE = 50.0  # queries a second
GHOSTS = 3000  # orders of a merchant without a key, written to Redis directly
REFUSED = 1000  # orders of a merchant whose key the platform refuses (101)
PUBLISHED = 500  # order.created messages of another merchant without a key
GOOD = 10  # paid orders whose notifications were all lost
BOUND = 15.0  # seconds within which every good order must be forwarded
SCHEDULE = SweepSchedule(
    expiry=3600.0, first_check=0.2, max_gap=60.0, settle_gap=30.0, retry_gap=1.0, hopeless_gap=60.0
)


class Platform:
    """Like the real client: no key, `UnknownMerchant`; merchant `refused` gets 101 (its key is
    wrong at the platform); every other order is paid. Counts queries per merchant."""

    def __init__(self, keys: frozenset[str]) -> None:
        self.keys = keys
        self.queries: Counter[str] = Counter()

    async def query_order(self, mch_id: str, mch_order: str) -> OrderQueryAnswer:
        self.queries[mch_id] += 1
        if mch_id not in self.keys:
            raise UnknownMerchant(mch_id)
        if mch_id == "refused":
            raise ParameterCheckFailed(101, "sign error")
        now = int(time.time())
        report = PaymentReport(
            mch_id=mch_id, pay_type=10, mch_order=mch_order, amt=10_000, mch_amt=10_000,
            amt_type="cny", status=PaymentStatus.PAID, created_at=now, success_at=now,
            origin_order=None, call=None, sign_type="md5",
        )  # fmt: skip
        raw = {"code": "1", "msg": "ok", **report_fields(report), "sign": "0" * 32}
        return OrderQueryAnswer(report=report, key_id="sha256:test", raw=MappingProxyType(raw))


@pytest.fixture
async def redis(redis_url: str) -> AsyncIterator[Redis]:
    async with clean_db(redis_url, FAIR_DB) as client:
        yield client


async def _flood(redis: Redis, mch_id: str, count: int, due: float) -> None:
    """`count` pending orders written straight into the book, all due at `due` (before the good
    ones), as a long-running deployment would hold them."""
    async with redis.pipeline(transaction=False) as pipe:
        for i in range(count):
            name = f"{mch_id}-{i}"
            pipe.hset(
                order_record_key(mch_id, name),
                mapping={"mch_id": mch_id, "mch_order": name, "amt": "10000", "pay_type": "10",
                         "created_at": str(int(due) - 3600), "state": "pending",
                         "sweep_attempts": "5"},
            )  # fmt: skip
            member = f"{mch_id}:{name}".encode()
            pipe.zadd(pending_index(redis).key_of(member), {member: due})
        await pipe.execute()


async def _forwarded(bootstrap: str, topic: str, keys: set[str], deadline: float) -> set[str]:
    """Keys of the paid orders that reached the callbacks topic within `deadline` seconds."""
    consumer = AIOKafkaConsumer(
        topic, bootstrap_servers=bootstrap, group_id=f"t-{uuid.uuid4().hex}",
        auto_offset_reset="earliest", enable_auto_commit=False,
    )  # fmt: skip
    await consumer.start()
    found: set[str] = set()
    try:
        async with asyncio.timeout(deadline):
            while not keys <= found:
                batch = await consumer.getmany(timeout_ms=200)
                for records in batch.values():
                    for record in records:
                        assert CallbackEnvelope.decode(record.value).source == "query"
                        found.add(record.key.decode())
    except TimeoutError:
        pass
    finally:
        await consumer.stop()
    return found


async def _publish(producer: AIOKafkaProducer, topic: str, count: int) -> None:
    for i in range(count):
        message: dict[str, Any] = {
            "type": "order.created", "mch_id": "stranger", "mch_order": f"s-{i}", "amt": 10_000,
            "pay_type": 10, "created_at": int(time.time()),
        }  # fmt: skip
        await producer.send(topic, orjson.dumps(message), key=f"stranger:s-{i}")
    await producer.flush()


async def test_a_flood_of_hopeless_orders_does_not_delay_the_paid_ones(
    redis: Redis, kafka_bootstrap: str, fresh_topic: Callable[..., Awaitable[str]]
) -> None:
    """3000 orders of a merchant without a key and 1000 of a merchant the platform refuses (101)
    are due before ten paid orders whose notifications were lost, and 500 more orders of a
    merchant without a key arrive on the orders topic. The orders consumer dead-letters the 500
    (`unknown_merchant`) instead of recording them; the sweeper queries none of the 3000 (no
    key: no budget spent), rests the refused merchant after a few failures, and forwards all ten
    paid orders within a bound far below the 80 s the flood cost before."""
    keys = frozenset({"m1", "refused"})
    made = [await fresh_topic(name) for name in ("callbacks", "events", "dlq", "orders")]
    callbacks, events, dlq, orders = made
    settings = Settings(kafka_bootstrap_servers=kafka_bootstrap, consumer_group=uuid.uuid4().hex)
    producer = await start_producer(settings)
    clock = SystemClock()
    book = OrderBook(redis, clock, schedule=SCHEDULE)
    now = time.time()
    await _flood(redis, "ghost", GHOSTS, due=now - 100)
    await _flood(redis, "refused", REFUSED, due=now - 50)
    await _publish(producer, orders, PUBLISHED)
    good = [f"paid-{i}" for i in range(GOOD)]
    for name in good:
        await book.record_pending(OrderRecord("m1", name, 10_000, 10, int(now) - 1))

    def orders_consumer() -> AIOKafkaConsumer:
        return AIOKafkaConsumer(
            orders, bootstrap_servers=kafka_bootstrap, group_id=f"{settings.consumer_group}.o",
            enable_auto_commit=False, auto_offset_reset="earliest",
        )  # fmt: skip

    recorder = OrdersConsumer(
        settings, book, producer=producer, clock=clock, consumer_factory=orders_consumer,
        dlq_topic=dlq, merchants=keys,
    )  # fmt: skip
    platform = Platform(keys)
    sweep = SweepOrder(
        book, platform, producer, clock=clock, schedule=SCHEDULE, rate=RATE,
        callbacks_topic=callbacks, events_topic=events, dlq_topic=dlq, merchants=keys,
    )  # fmt: skip
    sweeper = Sweeper(
        sweep, Locks(redis),
        limits=SweeperLimits(concurrency=8, lease_ttl=2.0, claim_hold=30.0, poll=0.02),
    )  # fmt: skip
    tasks = [asyncio.create_task(recorder.run()), asyncio.create_task(sweeper.run())]
    started = time.monotonic()
    try:
        found = await _forwarded(kafka_bootstrap, callbacks, {f"m1:{n}" for n in good}, BOUND)
        elapsed = time.monotonic() - started
        assert found == {f"m1:{n}" for n in good}, f"{len(found)} of {GOOD} within {BOUND} s"
        async with asyncio.timeout(30):
            while recorder.dead_lettered < PUBLISHED:
                await asyncio.sleep(0.05)
        assert not any(task.done() for task in tasks)
    finally:
        await sweeper.stop()
        await recorder.stop()
        async with asyncio.timeout(30):
            await asyncio.gather(*tasks, return_exceptions=True)
        await producer.stop()
    assert elapsed < BOUND
    # No budget on the orders without a key; a handful of queries for the refused merchant.
    assert platform.queries["ghost"] == 0
    assert platform.queries["stranger"] == 0
    assert platform.queries["refused"] <= 3 + 8  # the trip, plus what was in flight meanwhile
    assert platform.queries["m1"] == GOOD
    assert recorder.recorded == 0
    assert await book.get("stranger", "s-0") is None
    assert sweeper.stats["rested"] > 0
