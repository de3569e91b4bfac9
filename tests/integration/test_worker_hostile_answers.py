"""The hostile platform-answer corpus through the real worker path (issue 10): the reconciler with
the real platform client in front of a hostile platform on 127.0.0.1, on real Redis and Kafka.
Every case ends as a retry (deferred) or a dead letter: never a crash, never an outcome."""

from __future__ import annotations

import itertools
import random
import time
import uuid
from typing import TYPE_CHECKING

import pytest

from shared.adapters.kafka import CallbackEnvelope, TopicSink, start_producer
from shared.adapters.order_book import OrderBook
from shared.adapters.outcomes import OutcomeStore, outcome_key
from shared.clock import SystemClock
from shared.domain.decision import requery_schedule
from shared.domain.orders import OrderRecord
from shared.merchants import load_merchants
from shared.platform.client import ClientConfig, PlatformClient, RetryPolicy
from shared.protocol.catalog import PayTypeCatalog
from shared.protocol.signing import signed
from shared.service.settle import Reconciler, Settlement, Work
from shared.settings import Settings
from tests.conftest import TEST_KEY, TEST_MCH_ID
from tests.support.hostile_answers import HostilePlatform, load_hostile_answers
from tests.support.redis_db import clean_db

if TYPE_CHECKING:
    from pathlib import Path

pytestmark = pytest.mark.integration

CORPUS = load_hostile_answers()
HOSTILE_DB = 12
_seq = itertools.count()


@pytest.fixture(scope="module")
async def world(kafka_bootstrap: str, redis_url: str, merchants_file: Path, fresh_topic_module):
    events, dlq = await fresh_topic_module("events"), await fresh_topic_module("dlq")
    producer = await start_producer(Settings(kafka_bootstrap_servers=kafka_bootstrap))
    merchants = load_merchants(merchants_file)
    async with clean_db(redis_url, HOSTILE_DB) as redis, HostilePlatform() as platform:
        config = ClientConfig(base_url=platform.base_url + "/", retry=RetryPolicy(retries=0))
        client = PlatformClient.open(config, merchants, clock=SystemClock(), random=random.random)
        reconciler = Reconciler(
            store=OutcomeStore(redis, outcome_ttl_seconds=600, lock_ttl_ms=5000),
            platform=client,
            merchants=merchants,
            events=TopicSink(producer, events),
            dlq=TopicSink(producer, dlq),
            pay_types=PayTypeCatalog.documented(),
            policy="required",
            schedule=requery_schedule(0.001),
            clock=SystemClock(),
            min_retry_delay=0.0,
        )
        try:
            yield reconciler, platform, OrderBook(redis, SystemClock()), redis
        finally:
            await client.close()
            await producer.stop()


@pytest.fixture(scope="module")
async def fresh_topic_module(kafka_bootstrap: str):
    from aiokafka.admin import AIOKafkaAdminClient, NewTopic  # noqa: PLC0415

    admin = AIOKafkaAdminClient(bootstrap_servers=kafka_bootstrap)
    await admin.start()
    made: list[str] = []

    async def make(prefix: str) -> str:
        name = f"{prefix}.{uuid.uuid4().hex[:12]}"
        await admin.create_topics([NewTopic(name, 1, 1)])
        made.append(name)
        return name

    try:
        yield make
    finally:
        await admin.delete_topics(made)
        await admin.close()


def notification(order: str) -> Work:
    now = int(time.time())
    fields = {
        "mch_id": TEST_MCH_ID, "service": "10", "mch_order": order, "amt": "1000",
        "mch_amt": "1000", "sign_type": "md5", "amt_type": "cny", "status": "2",
        "created_at": str(now - 120), "success_at": str(now - 60),
    }  # fmt: skip
    envelope = CallbackEnvelope(
        fields=signed(fields, TEST_KEY),
        key_id="claimed",
        received_at=float(now),
        peer="127.0.0.1",
        delivery_id=uuid.uuid4().hex,
        source="notification",
    )
    return Work(envelope=envelope, origin=f"hostile@{next(_seq)}")


@pytest.mark.parametrize("case", CORPUS, ids=[case.name for case in CORPUS])
async def test_a_hostile_answer_never_crashes_the_worker_nor_settles_a_payment(world, case) -> None:
    reconciler, platform, book, redis = world
    platform.answer = case
    order = f"H-{uuid.uuid4().hex[:12]}"
    await book.record_pending(OrderRecord(TEST_MCH_ID, order, 1000, 10, int(time.time()) - 120))

    settlement = await reconciler.settle(notification(order))

    assert settlement in {Settlement.DEFERRED, Settlement.DEAD_LETTERED}, settlement
    assert await redis.exists(outcome_key(f"{TEST_MCH_ID}:{order}")) == 0
    assert reconciler.stats["internal_error"] == 0
