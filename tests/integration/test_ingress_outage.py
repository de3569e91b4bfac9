"""The ingress through a broker outage: 503 `fail` within the deadline, then recovery by itself;
what Kafka did not take is parked in Redis, and the sweeper publishes it once Kafka is back.

Runs on a broker of this module's own (`kafka_stack`), which the tests stop and start again.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections import Counter
from typing import TYPE_CHECKING
from urllib.parse import urlencode

import aiohttp
import pytest
from aiohttp import web
from aiokafka import AIOKafkaConsumer

from ingress.app import INGRESS, build_app
from shared import topics
from shared.adapters.kafka import CallbackEnvelope, start_producer, start_when_available
from shared.adapters.order_book import OrderBook
from shared.adapters.parked import PARKED_KEY, ParkedNotifications
from shared.adapters.redis_lock import Locks
from shared.adapters.topic_admin import ensure_topics
from shared.clock import SystemClock
from shared.domain.sweep import SweepSchedule
from shared.logs import get_logger
from shared.merchants import parse_merchants
from shared.protocol.signing import signed
from shared.service.sweep import SweepOrder
from shared.settings import Settings
from tests.support.redis_db import clean_db, in_db
from workers.sweeper import Sweeper, SweeperLimits

if TYPE_CHECKING:
    from aiokafka import AIOKafkaProducer
    from redis.asyncio import Redis

    from devtools.stack.local import LocalStack
    from ingress.counters import IngressCounters
    from shared.protocol.models import OrderQueryAnswer
    from shared.topics import Topics

pytestmark = pytest.mark.integration

MCH, KEY = "t9awtvk6dn", "25e72d96d0ffe0bb74373344d986df3c"
MERCHANTS = parse_merchants({"merchants": {MCH: {"keys": [KEY]}}})
ACK_TIMEOUT = 2.0
RECOVERY = 90.0  # seconds the broker and the producer get to come back
PARK_DB = 12  # shared with the order book modules; each empties it before and after


def notification() -> str:
    fields = {
        "mch_id": MCH,
        "service": "10",
        "mch_order": f"outage-{uuid.uuid4().hex[:12]}",
        "amt": "1000",
        "mch_amt": "1000",
        "sign_type": "md5",
        "amt_type": "cny",
        "status": "2",
        "created_at": "1700000000",
        "success_at": "1700000100",
    }
    return urlencode(signed(fields, KEY))


async def post(http: aiohttp.ClientSession, url: str, body: str) -> tuple[int, str, float]:
    started = time.monotonic()
    headers = {"Content-Type": "application/x-www-form-urlencoded"}
    async with http.post(f"{url}/notify", data=body, headers=headers) as response:
        return response.status, await response.text(), time.monotonic() - started


async def ready(http: aiohttp.ClientSession, url: str) -> bool:
    async with http.get(f"{url}/readyz") as response:
        return response.status == 200


async def test_broker_outage_gives_503_within_the_deadline_then_recovers(
    kafka_stack: LocalStack,
) -> None:
    """Broker up: `success`. Broker stopped: 503 `fail` no later than the ack deadline (plus
    scheduling slack), and /readyz says not ready. Broker back: the same ingress, untouched,
    answers `success` again and is ready."""
    settings = Settings(
        kafka_bootstrap_servers=kafka_stack.bootstrap_servers, kafka_ack_timeout=ACK_TIMEOUT
    )
    await ensure_topics(settings, [topics.CALLBACKS, topics.REJECTED])
    app = build_app(settings, MERCHANTS)
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=10)
    await runner.setup()
    try:
        await web.TCPSite(runner, "127.0.0.1", 0).start()
        host, port = runner.addresses[0][:2]
        url = f"http://{host}:{port}"
        async with aiohttp.ClientSession() as http:
            assert (await post(http, url, notification()))[:2] == (200, "success")
            assert await ready(http, url)

            await asyncio.to_thread(kafka_stack.stop_kafka)
            for _ in range(3):  # the first try, and retries while the producer reconnects
                status, body, took = await post(http, url, notification())
                assert (status, body) == (503, "fail")
                assert took < ACK_TIMEOUT + 1.0
            assert not await ready(http, url)
            counters = app[INGRESS].counters
            assert counters.refusals["kafka_timeout"] + counters.refusals["kafka_error"] == 3

            await asyncio.to_thread(kafka_stack.start_kafka)
            async with asyncio.timeout(RECOVERY):
                while (await post(http, url, notification()))[:2] != (200, "success"):
                    await asyncio.sleep(0.5)  # the platform's retry, compressed
                while not await ready(http, url):
                    await asyncio.sleep(0.2)
    finally:
        await runner.cleanup()


def _fields(mch_order: str, origin_order: str = "") -> dict[str, str]:
    fields = {
        "mch_id": MCH, "service": "10", "mch_order": mch_order, "amt": "1000",
        "mch_amt": "1000", "sign_type": "md5", "amt_type": "cny", "status": "2",
        "created_at": "1700000000", "success_at": "1700000100",
    }  # fmt: skip
    if origin_order:
        fields["origin_order"] = origin_order
    return signed(fields, KEY)


async def _tries_while_kafka_is_away(
    kafka_stack: LocalStack, settings: Settings, tries: list[dict[str, str]]
) -> IngressCounters:
    """Each try answered 503 `fail` by an ingress whose broker stopped; the broker started
    again before the ingress stops (its flush then does not wait for a dead broker)."""
    app = build_app(settings, MERCHANTS)
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=10)
    await runner.setup()
    try:
        await web.TCPSite(runner, "127.0.0.1", 0).start()
        host, port = runner.addresses[0][:2]
        url = f"http://{host}:{port}"
        async with aiohttp.ClientSession() as http:
            while not await ready(http, url):  # the ingress with its Kafka clients
                await asyncio.sleep(0.2)
            await asyncio.to_thread(kafka_stack.stop_kafka)
            for fields in tries:
                status, body, _ = await post(http, url, urlencode(fields))
                assert (status, body) == (503, "fail")
        await asyncio.to_thread(kafka_stack.start_kafka)
        return app[INGRESS].counters
    finally:
        await runner.cleanup()


def _parked_sweeper(redis: Redis, producer: AIOKafkaProducer, names: Topics) -> Sweeper:
    """A sweeper with nothing to query: only the parked notifications to publish."""
    clock = SystemClock()
    schedule = SweepSchedule.scaled(time_scale=0.001, order_expiry=60.0)
    limits = SweeperLimits(concurrency=2, lease_ttl=1.0, claim_hold=5.0, poll=0.05)
    orders = SweepOrder(
        OrderBook(redis, clock, schedule=schedule),
        NoQueries(),
        producer,
        clock=clock,
        schedule=schedule,
        rate=100.0,
        callbacks_topic=names.callbacks,
        events_topic=names.events,
        dlq_topic=names.dlq,
    )
    return Sweeper(orders, Locks(redis), limits=limits, parked=ParkedNotifications(redis))


class NoQueries:
    """The sweeper's platform in a test with no pending orders: never asked."""

    async def query_order(self, mch_id: str, mch_order: str) -> OrderQueryAnswer:
        raise AssertionError(f"unexpected order query for {mch_id}:{mch_order}")


async def _read(bootstrap: str, topic: str, count: int, bound: float) -> list[bytes]:
    consumer = AIOKafkaConsumer(
        topic, bootstrap_servers=bootstrap, auto_offset_reset="earliest", enable_auto_commit=False
    )
    await consumer.start()
    found: list[bytes] = []
    try:
        async with asyncio.timeout(bound):
            while len(found) < count:
                for batch in (await consumer.getmany(timeout_ms=500)).values():
                    found += [message.value for message in batch if message.value is not None]
    finally:
        await consumer.stop()
    return found


async def test_notifications_kafka_did_not_take_are_parked_once_and_published_by_the_sweeper(
    kafka_stack: LocalStack, redis_url: str
) -> None:
    """The hole (chaos run, `unreachable`): a repeat payment whose every try met Kafka away was
    lost - answered 503 each time, then given up by the platform, and no order query finds it.
    Now each such notification is still answered 503, but parked once however many of its tries
    fail; once Kafka is back the sweeper publishes it to the callbacks topic byte for byte as
    the ingress would have, dead-letters a parked value it cannot read, and empties the hash."""
    prefix = f"parked-{uuid.uuid4().hex[:8]}."
    settings = Settings(
        kafka_bootstrap_servers=kafka_stack.bootstrap_servers,
        kafka_ack_timeout=ACK_TIMEOUT,
        redis_url=in_db(redis_url, PARK_DB),
        topic_prefix=prefix,
    )
    names = settings.topics
    await ensure_topics(settings, [names.callbacks, names.rejected, names.dlq, names.events])
    repeat = _fields(f"UP{uuid.uuid4().hex[:12]}", origin_order=f"D{uuid.uuid4().hex[:8]}")
    plain = _fields(f"park-{uuid.uuid4().hex[:12]}")
    async with clean_db(redis_url, PARK_DB) as redis:
        counters = await _tries_while_kafka_is_away(kafka_stack, settings, [repeat] * 3 + [plain])
        assert counters.parked == Counter(parked=2, already=2)
        assert await redis.hlen(PARKED_KEY) == 2
        await redis.hset(PARKED_KEY, "f" * 64, b'{"v": 1, "key": "x"}')  # not one we wrote
        producer = await start_when_available(
            lambda: start_producer(settings),
            stop=asyncio.Event(),
            clock=SystemClock(),
            log=get_logger("test"),
        )
        assert producer is not None
        sweeper = _parked_sweeper(redis, producer, names)
        task = asyncio.create_task(sweeper.run())
        try:
            async with asyncio.timeout(RECOVERY):
                while await redis.hlen(PARKED_KEY):
                    await asyncio.sleep(0.1)
            dead = await _read(kafka_stack.bootstrap_servers, names.dlq, 1, RECOVERY)
            published = await _read(kafka_stack.bootstrap_servers, names.callbacks, 2, RECOVERY)
        finally:
            await sweeper.stop()
            await asyncio.wait_for(task, 30)
            await producer.stop()
    # The ingress's own sends that timed out may also arrive, late: duplicates, absorbed.
    envelopes = [CallbackEnvelope.decode(value) for value in published]
    assert {e.fields["mch_order"] for e in envelopes} == {repeat["mch_order"], plain["mch_order"]}
    for envelope in envelopes:
        assert envelope.fields in (repeat, plain)  # as received, `sign` included
        assert envelope.source == "notification"
        assert envelope.key_id.startswith("sha256:")
    assert sweeper.stats["parked_released"] == 2
    assert sweeper.stats["parked_corrupt"] == 1
    assert b'"reason":"parked_corrupt"' in dead[0]
