"""The sweeper against the real sandbox platform, real Kafka and real Redis, in compressed time.

- Every notification of a set of paid orders is dropped by the sandbox; the sweeper's queries
  bring each of them to `paynotify.payment.succeeded` through the real workers.
- A late notification for an order the sweeper already settled adds no second outcome.
- Unpaid orders past expiry get one `order.expired` each with two sweepers running at once, and
  no order is queried more often than its schedule says (counted by the sandbox).
- Orders known only from `order.created` messages are used for the amount check.
"""

from __future__ import annotations

import asyncio
import random
import time
import uuid
from collections import Counter
from dataclasses import replace
from typing import TYPE_CHECKING, Any

import aiohttp
import orjson
import pytest
from aiohttp import web
from aiokafka import AIOKafkaConsumer, TopicPartition

from devtools.sandbox.model import SandboxConfig
from devtools.sandbox.server import build_app
from shared import bootstrap, topics
from shared.adapters.kafka import CallbackEnvelope, start_producer
from shared.adapters.order_book import OrderBook, order_record_key
from shared.adapters.topic_admin import ensure_topics
from shared.clock import SystemClock
from shared.domain.orders import OrderRecord, OrderState
from shared.domain.sweep import SweepSchedule
from shared.merchants import Merchant, load_merchants
from shared.platform.client import PlatformClient
from shared.platform.retry import RetryPolicy
from shared.protocol.signing import signed
from shared.settings import Settings
from tests.support.redis_db import clean_db, in_db, pending_index
from workers.__main__ import run_worker
from workers.orders_consumer import OrdersConsumer
from workers.sweeper_main import build_sweeper

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
    from pathlib import Path

    from redis.asyncio import Redis

pytestmark = pytest.mark.e2e

TIME_SCALE = 0.01  # first query 0.9 s after creation; the platform's 49 minutes in 29 s
E2E_DB = 14


NOWHERE = "http://127.0.0.1:9/notify"  # never reached: the sandbox drops every try


class Sandbox:
    def __init__(self, base_url: str, session: aiohttp.ClientSession) -> None:
        self.base_url = base_url
        self._session = session

    async def call(self, method: str, path: str, **kwargs: Any) -> Any:
        url = f"{self.base_url}/_sandbox/{path}"
        async with self._session.request(method, url, **kwargs) as response:
            body = await response.json()
            assert response.status < 300, body
            return body

    async def create(self, mch_id: str, names: list[str], scenario: dict[str, Any]) -> None:
        orders = [
            {"mch_id": mch_id, "mch_order": n, "amt": 10_000, "pay_type": 10,
             "notify_url": NOWHERE, "scenario": scenario}
            for n in names
        ]  # fmt: skip
        await self.call("POST", "orders", json={"orders": orders})

    async def queries(self) -> Counter[str]:
        """Order queries the sandbox answered, per order number."""
        counted: Counter[str] = Counter()
        since = 0
        while True:
            page = await self.call("GET", "calls", params={"since": since, "limit": 1000})
            for call in page["calls"]:
                if call["endpoint"] == "query":
                    counted[call["mch_order"]] += 1
            if not page["calls"]:
                return counted
            since = page["next"]


@pytest.fixture(scope="module")
def merchants(merchants_file: Path) -> Mapping[str, Merchant]:
    return load_merchants(merchants_file)


@pytest.fixture(scope="module")
def mch_id(merchants: Mapping[str, Merchant]) -> str:
    return next(m.mch_id for m in merchants.values() if not m.allow_from)


@pytest.fixture
async def sandbox(merchants: Mapping[str, Merchant]) -> AsyncIterator[Sandbox]:
    config = SandboxConfig(time_scale=TIME_SCALE, delivery_timeout=2.0)
    app = build_app(config, merchants, clock=SystemClock(), rng=random.Random(11))
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    host, port = runner.addresses[0][:2]
    async with aiohttp.ClientSession() as session:
        yield Sandbox(f"http://{host}:{port}", session)
    await runner.cleanup()


@pytest.fixture
async def redis(redis_url: str) -> AsyncIterator[Redis]:
    async with clean_db(redis_url, E2E_DB) as client:
        yield client


@pytest.fixture
def settings(
    kafka_bootstrap: str, redis_url: str, merchants_file: Path, sandbox: Sandbox
) -> Settings:
    return Settings(
        kafka_bootstrap_servers=kafka_bootstrap,
        redis_url=in_db(redis_url, E2E_DB),
        merchants_file=merchants_file,
        platform_url=sandbox.base_url + "/",
        time_scale=TIME_SCALE,
        consumer_group=f"e2e-sweeper-{uuid.uuid4().hex[:8]}",
        topic_partitions=3,
        worker_concurrency=32,
        sweep_rate=200.0,
        sweep_concurrency=8,
        order_expiry=86_400.0,
        platform_timeout=2.0,
    )


def _names(prefix: str, count: int) -> list[str]:
    run = uuid.uuid4().hex[:8]
    return [f"{prefix}-{run}-{i}" for i in range(count)]


async def _record(settings: Settings, redis: Redis, mch_id: str, names: list[str]) -> None:
    book = bootstrap.order_book(settings, redis, SystemClock())
    now = int(time.time())
    for name in names:
        await book.record_pending(OrderRecord(mch_id, name, 10_000, 10, now))


async def _events(
    bootstrap: str, topic: str, subjects: set[str], done: Callable[[list[Any]], bool]
) -> list[dict[str, Any]]:
    """Events on `topic` about `subjects`, from the start until `done(events)` holds and at
    least everything that was on the topic when `done` first held has been read."""
    consumer = AIOKafkaConsumer(
        topic, bootstrap_servers=bootstrap, group_id=f"t-{uuid.uuid4().hex}",
        auto_offset_reset="earliest", enable_auto_commit=False,
    )  # fmt: skip
    await consumer.start()
    found: list[dict[str, Any]] = []
    try:
        ends: dict[TopicPartition, int] | None = None
        async with asyncio.timeout(90):
            while True:
                assigned = consumer.assignment()
                if ends is None and assigned and done(found):
                    ends = await consumer.end_offsets(list(assigned))
                if ends is not None:
                    positions = {tp: await consumer.position(tp) for tp in ends}
                    if all(positions[tp] >= end for tp, end in ends.items()):
                        return found
                batch = await consumer.getmany(timeout_ms=300)
                for records in batch.values():
                    for record in records:
                        event = orjson.loads(record.value)
                        if event.get("subject") in subjects:
                            found.append(event)
    finally:
        await consumer.stop()


def _client(settings: Settings, merchants: Mapping[str, Merchant]) -> PlatformClient:
    return PlatformClient.open(
        bootstrap.platform_config(settings, retry=RetryPolicy(retries=0)),
        merchants,
        clock=SystemClock(),
        random=random.Random(5).random,
    )


async def test_paid_orders_with_every_notification_lost_settle_through_the_sweeper(
    settings: Settings,
    sandbox: Sandbox,
    redis: Redis,
    merchants: Mapping[str, Merchant],
    mch_id: str,
) -> None:
    """Twenty paid orders whose nine notification tries are all dropped: each one reaches
    payment.succeeded (source "query") via the sweeper and the real workers, exactly once,
    and leaves the pending index settled. Then a late notification for one of them, through
    the normal path, adds no second outcome."""
    await ensure_topics(settings)
    names = _names("lost", 20)
    await sandbox.create(mch_id, names, {"pay_after": 0, "drop_attempts": 9})
    await _record(settings, redis, mch_id, names)
    subjects = {f"{mch_id}:{n}" for n in names}

    stop = asyncio.Event()
    worker = asyncio.create_task(run_worker(settings, stop))
    producer = await start_producer(settings)
    platform = _client(settings, merchants)
    sweeper = build_sweeper(
        settings,
        redis,
        bootstrap.sweep_order(settings, redis, platform, producer, clock=SystemClock()),
    )
    sweeping = asyncio.create_task(sweeper.run())
    started = time.monotonic()
    try:
        events = await _events(
            settings.kafka_bootstrap_servers,
            topics.EVENTS,
            subjects,
            lambda found: {e["subject"] for e in found} >= subjects,
        )
        elapsed = time.monotonic() - started
        # All within the first few scheduled queries (0.9 s, 2.7 s, ...), far inside expiry.
        assert elapsed < SweepSchedule.scaled(time_scale=TIME_SCALE, order_expiry=86_400).expiry
        assert {e["type"] for e in events} == {"paynotify.payment.succeeded"}
        assert all(e["data"]["source"] == "query" for e in events)
        assert len({e["id"] for e in events}) == len(names)

        async def settled() -> bool:
            return await pending_index(redis).count() == 0

        async with asyncio.timeout(30):
            while not await settled():
                await asyncio.sleep(0.05)
        book = OrderBook(redis, SystemClock())
        for name in names:
            record = await book.get(mch_id, name)
            assert record is not None
            assert record.state is OrderState.SETTLED

        # The sandbox really dropped every try: no delivery reached anybody.
        view = await sandbox.call("GET", "order", params={"mch_id": mch_id, "mch_order": names[0]})
        assert all(n["state"] != "delivered" for n in view["notifications"])

        # A late notification for the first order, as the ingress would publish it.
        late = await _late_notification(platform, merchants[mch_id], names[0])
        await producer.send_and_wait(topics.CALLBACKS, late, key=f"{mch_id}:{names[0]}")
        marker = _names("marker", 1)[0]
        await sandbox.create(mch_id, [marker], {"pay_after": 0, "drop_attempts": 9})
        await _record(settings, redis, mch_id, [marker])
        # Once a later order settled too, the late notification was certainly handled.
        after = await _events(
            settings.kafka_bootstrap_servers,
            topics.EVENTS,
            {*subjects, f"{mch_id}:{marker}"},
            lambda found: any(e["subject"] == f"{mch_id}:{marker}" for e in found),
        )
        first = [e for e in after if e["subject"] == f"{mch_id}:{names[0]}"]
        # One outcome: any repeat is the same event (same id), never a second decision.
        assert {(e["id"], e["type"]) for e in first} == {
            (e["id"], e["type"]) for e in events if e["subject"] == f"{mch_id}:{names[0]}"
        }
    finally:
        await sweeper.stop()
        stop.set()
        async with asyncio.timeout(60):
            await asyncio.gather(sweeping, worker)
        await platform.close()
        await producer.stop()


async def _late_notification(platform: PlatformClient, merchant: Merchant, name: str) -> bytes:
    """The order's paid report as a signed notification envelope from the ingress."""
    answer = await platform.query_order(merchant.mch_id, name)
    fields = {k: v for k, v in answer.raw.items() if k not in {"code", "msg", "sign"}}
    envelope = CallbackEnvelope(
        fields=signed(fields, merchant.signing_key),
        key_id=merchant.signing_key.key_id,
        received_at=time.time(),
        peer="127.0.0.1",
        delivery_id=uuid.uuid4().hex,
        source="notification",
    )
    return envelope.encode()


async def test_unpaid_orders_expire_once_with_two_sweepers_and_no_doubled_query(  # noqa: PLR0917 - fixtures
    settings: Settings,
    sandbox: Sandbox,
    redis: Redis,
    merchants: Mapping[str, Merchant],
    mch_id: str,
    fresh_topic: Callable[..., Awaitable[str]],
) -> None:
    """Two sweepers at once against the sandbox: each never-paid order gets exactly one
    order.expired event, and the sandbox saw no order queried more often than its schedule
    has points (a doubled query would exceed it)."""
    settings = replace(settings, order_expiry=300.0)  # 3 s at this time scale
    schedule = SweepSchedule.scaled(time_scale=TIME_SCALE, order_expiry=settings.order_expiry)
    callbacks, events_topic = await fresh_topic("callbacks"), await fresh_topic("events")
    names = _names("unpaid", 12)
    await sandbox.create(mch_id, names, {"pay_after": "never"})
    await _record(settings, redis, mch_id, names)
    subjects = {f"{mch_id}:{n}" for n in names}

    producer = await start_producer(settings)
    platform = _client(settings, merchants)
    sweepers = [
        build_sweeper(settings, redis, bootstrap.sweep_order(
            settings, redis, platform, producer, clock=SystemClock(), name=name,
            callbacks_topic=callbacks, events_topic=events_topic,
        ))
        for name in ("first", "second")
    ]  # fmt: skip
    tasks = [asyncio.create_task(s.run()) for s in sweepers]
    try:
        async with asyncio.timeout(60):
            while await pending_index(redis).count() > 0:
                await asyncio.sleep(0.05)
    finally:
        for sweeper in sweepers:
            await sweeper.stop()
        async with asyncio.timeout(30):
            await asyncio.gather(*tasks)
        await platform.close()
        await producer.stop()

    # Both sweepers have stopped: everything they published is on the topic now.
    events = await _events(
        settings.kafka_bootstrap_servers,
        events_topic,
        subjects,
        lambda found: {e["subject"] for e in found} >= subjects,
    )
    assert Counter(e["subject"] for e in events) == Counter(dict.fromkeys(subjects, 1))
    assert {e["type"] for e in events} == {"paynotify.order.expired"}
    assert {e["data"]["answer"] for e in events} == {"unpaid"}
    queries = await sandbox.queries()
    assert set(queries) == set(names)
    assert max(queries.values()) <= len(schedule.offsets())
    assert sum(s.stats["queries"] for s in sweepers) == sum(queries.values())
    book = OrderBook(redis, SystemClock())
    for name in names:
        record = await book.get(mch_id, name)
        assert record is not None
        assert record.state is OrderState.EXPIRED


async def test_orders_published_from_outside_are_used_for_the_amount_check(  # noqa: PLR0917 - fixtures
    settings: Settings,
    sandbox: Sandbox,
    redis: Redis,
    merchants: Mapping[str, Merchant],
    mch_id: str,
    fresh_topic: Callable[..., Awaitable[str]],
) -> None:
    """Two paid orders known only from `order.created` messages (no create_order call): the
    one whose recorded amount matches settles as succeeded, the one recorded with another amount
    is refused as amount_mismatch (record_amount_differs)."""
    await ensure_topics(settings)
    orders_topic = await fresh_topic("orders", partitions=1)
    good, wrong = _names("outside", 2)
    await sandbox.create(mch_id, [good, wrong], {"pay_after": 0, "drop_attempts": 9})
    producer = await start_producer(settings)
    now = int(time.time())
    for name, amt in ((good, 10_000), (wrong, 9_000)):
        message = {"type": "order.created", "mch_id": mch_id, "mch_order": name, "amt": amt,
                   "pay_type": 10, "created_at": now}  # fmt: skip
        await producer.send_and_wait(orders_topic, orjson.dumps(message), key=f"{mch_id}:{name}")

    def orders_consumer() -> AIOKafkaConsumer:
        return AIOKafkaConsumer(
            orders_topic, bootstrap_servers=settings.kafka_bootstrap_servers,
            group_id=f"{settings.consumer_group}.orders", enable_auto_commit=False,
            auto_offset_reset="earliest",
        )  # fmt: skip

    book = bootstrap.order_book(settings, redis, SystemClock())
    recorder = OrdersConsumer(
        settings, book, producer=producer, clock=SystemClock(), consumer_factory=orders_consumer
    )
    stop = asyncio.Event()
    tasks = [asyncio.create_task(recorder.run()), asyncio.create_task(run_worker(settings, stop))]
    platform = _client(settings, merchants)
    sweeper = build_sweeper(
        settings,
        redis,
        bootstrap.sweep_order(settings, redis, platform, producer, clock=SystemClock()),
    )
    tasks.append(asyncio.create_task(sweeper.run()))
    subjects = {f"{mch_id}:{good}", f"{mch_id}:{wrong}"}
    try:
        events = await _events(
            settings.kafka_bootstrap_servers,
            topics.EVENTS,
            subjects,
            lambda found: {e["subject"] for e in found} >= subjects,
        )
    finally:
        await sweeper.stop()
        await recorder.stop()
        stop.set()
        async with asyncio.timeout(60):
            await asyncio.gather(*tasks)
        await platform.close()
        await producer.stop()
    by_subject = {e["subject"]: e for e in events}
    assert by_subject[f"{mch_id}:{good}"]["type"] == "paynotify.payment.succeeded"
    refused = by_subject[f"{mch_id}:{wrong}"]
    assert refused["type"] == "paynotify.payment.amount_mismatch"
    assert refused["data"]["reason"] == "record_amount_differs"
    assert refused["data"]["expected"] == {"mch_amt": 9_000}


async def test_paid_orders_settle_beside_a_flood_of_orders_that_cannot_be(  # noqa: PLR0917 - fixtures
    settings: Settings,
    sandbox: Sandbox,
    redis: Redis,
    merchants: Mapping[str, Merchant],
    mch_id: str,
    fresh_topic: Callable[..., Awaitable[str]],
) -> None:
    """Hole 11 through the whole pipeline: 2000 pending orders of a merchant without a key (in
    Redis, due first) and 300 `order.created` messages of another one sit beside ten paid orders
    whose every notification the sandbox drops. The orders consumer dead-letters the 300, the
    sweeper spends no query on the 2000, and the ten reach payment.succeeded through the real
    workers within a bound. Before, at 50 queries a second, the flood came first: 46 s."""
    settings = replace(settings, sweep_rate=50.0)
    await ensure_topics(settings)
    orders_topic = await fresh_topic("orders", partitions=1)
    names = _names("buried", 10)
    await sandbox.create(mch_id, names, {"pay_after": 0, "drop_attempts": 9})
    now = time.time()
    async with redis.pipeline(transaction=False) as pipe:
        for i in range(2000):
            pipe.hset(
                order_record_key("nokey", f"n-{i}"),
                mapping={"mch_id": "nokey", "mch_order": f"n-{i}", "amt": "10000",
                         "pay_type": "10", "created_at": str(int(now) - 600), "state": "pending"},
            )  # fmt: skip
            member = f"nokey:n-{i}".encode()
            pipe.zadd(pending_index(redis).key_of(member), {member: now - 60})
        await pipe.execute()
    producer = await start_producer(settings)
    for i in range(300):
        message = {"type": "order.created", "mch_id": "stranger", "mch_order": f"s-{i}",
                   "amt": 10_000, "pay_type": 10, "created_at": int(now)}  # fmt: skip
        await producer.send(orders_topic, orjson.dumps(message), key=f"stranger:s-{i}")
    await producer.flush()
    await _record(settings, redis, mch_id, names)

    def orders_consumer() -> AIOKafkaConsumer:
        return AIOKafkaConsumer(
            orders_topic, bootstrap_servers=settings.kafka_bootstrap_servers,
            group_id=f"{settings.consumer_group}.orders", enable_auto_commit=False,
            auto_offset_reset="earliest",
        )  # fmt: skip

    recorder = OrdersConsumer(
        settings, bootstrap.order_book(settings, redis, SystemClock()), producer=producer,
        clock=SystemClock(), consumer_factory=orders_consumer,
    )  # fmt: skip
    stop = asyncio.Event()
    tasks = [asyncio.create_task(recorder.run()), asyncio.create_task(run_worker(settings, stop))]
    platform = _client(settings, merchants)
    sweeper = build_sweeper(settings, redis, bootstrap.sweep_order(
        settings, redis, platform, producer, clock=SystemClock(), merchants=frozenset(merchants)
    ))  # fmt: skip
    tasks.append(asyncio.create_task(sweeper.run()))
    subjects = {f"{mch_id}:{n}" for n in names}
    started = time.monotonic()
    try:
        events = await _events(
            settings.kafka_bootstrap_servers,
            topics.EVENTS,
            subjects,
            lambda found: {e["subject"] for e in found} >= subjects,
        )
        elapsed = time.monotonic() - started
        async with asyncio.timeout(30):
            while recorder.dead_lettered < 300:
                await asyncio.sleep(0.05)
        # The flood is set aside without a query however long a loaded machine takes over it
        # (the ten paid orders' bound above is the promise; this is the bookkeeping after it).
        async with asyncio.timeout(60):
            while sweeper.stats["hopeless_unknown_merchant"] < 2000:
                await asyncio.sleep(0.05)
    finally:
        await sweeper.stop()
        await recorder.stop()
        stop.set()
        async with asyncio.timeout(60):
            await asyncio.gather(*tasks)
        await platform.close()
        await producer.stop()
    assert elapsed < 20.0
    assert {e["type"] for e in events} == {"paynotify.payment.succeeded"}
    assert recorder.recorded == 0
    assert sweeper.stats["queries"] == len(names)
    assert sweeper.stats["hopeless_unknown_merchant"] >= 2000
    # The workers query too (and, in a group of their own, re-read earlier tests' callbacks):
    # the sweeper's own count above is the one that says no query went to the flood.
    assert set(names) <= set(await sandbox.queries())


async def test_answers_signed_over_code_and_msg_settle_through_the_sweeper(
    settings: Settings,
    redis: Redis,
    merchants: Mapping[str, Merchant],
    mch_id: str,
) -> None:
    """With PAYNOTIFY_ANSWER_SIGN_INCLUDES_ENVELOPE (the platform signs `code` and `msg` too),
    the sweeper forwards what the signature covers, so the workers' check of the envelope holds:
    every paid order settles. Before, `code`/`msg` were stripped and every forwarded report was
    dead-lettered as `bad_signature`, so an order whose notifications were lost was never
    credited."""
    config = SandboxConfig(
        time_scale=TIME_SCALE, delivery_timeout=2.0, answer_sign_includes_envelope=True
    )
    app = build_app(config, merchants, clock=SystemClock(), rng=random.Random(13))
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    host, port = runner.addresses[0][:2]
    signed_over = replace(
        settings, platform_url=f"http://{host}:{port}/", answer_sign_includes_envelope=True
    )
    async with aiohttp.ClientSession() as session:
        sandbox = Sandbox(f"http://{host}:{port}", session)
        await ensure_topics(signed_over)
        names = _names("envsigned", 5)
        await sandbox.create(mch_id, names, {"pay_after": 0, "drop_attempts": 9})
        await _record(signed_over, redis, mch_id, names)
        subjects = {f"{mch_id}:{n}" for n in names}
        stop = asyncio.Event()
        worker = asyncio.create_task(run_worker(signed_over, stop))
        producer = await start_producer(signed_over)
        platform = _client(signed_over, merchants)
        orders = bootstrap.sweep_order(signed_over, redis, platform, producer, clock=SystemClock())
        sweeper = build_sweeper(signed_over, redis, orders)
        sweeping = asyncio.create_task(sweeper.run())
        try:
            events = await _events(
                signed_over.kafka_bootstrap_servers,
                topics.EVENTS,
                subjects,
                lambda found: {e["subject"] for e in found} >= subjects,
            )
            assert {e["type"] for e in events} == {"paynotify.payment.succeeded"}
            assert {e["subject"] for e in events} == subjects
        finally:
            await sweeper.stop()
            stop.set()
            async with asyncio.timeout(60):
                await asyncio.gather(sweeping, worker)
            await platform.close()
            await producer.stop()
    await runner.cleanup()
