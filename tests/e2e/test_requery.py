"""`paynotify requery` against the sandbox platform, real Kafka and Redis and the real worker:
a paid order whose every notification was dropped is settled by one requery (the manual 补单);
its dry run sends nothing (issue 11, "Repair tools")."""

from __future__ import annotations

import asyncio
import io
import random
import time
import uuid
from typing import TYPE_CHECKING, Any

import aiohttp
import orjson
import pytest
from aiohttp import web
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient

from devtools.sandbox.model import SandboxConfig
from devtools.sandbox.server import build_app
from shared import bootstrap
from shared.adapters.topic_admin import ensure_topics
from shared.cli import _parser
from shared.clock import SystemClock
from shared.domain.orders import OrderRecord, OrderState
from shared.merchants import load_merchants
from shared.ops.redis_state import open_redis
from shared.ops.requery import run_requery
from shared.ops.tool import EXIT_FAILED, EXIT_OK, Console, guarded
from shared.settings import Settings
from tests.conftest import TEST_MCH_ID
from tests.support.redis_db import clean_db, in_db
from workers.__main__ import run_worker

if TYPE_CHECKING:
    from collections.abc import AsyncIterator
    from pathlib import Path

pytestmark = pytest.mark.e2e

REQUERY_DB = 14  # shared with the sweeper's e2e module, emptied before and after
NOWHERE = "http://127.0.0.1:9/notify"  # never reached: the sandbox drops every try


@pytest.fixture
async def sandbox_url(merchants_file: Path) -> AsyncIterator[str]:
    app = build_app(
        SandboxConfig(time_scale=0.01, delivery_timeout=2.0),
        load_merchants(merchants_file),
        clock=SystemClock(),
        rng=random.Random(3),
    )
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    host, port = runner.addresses[0][:2]
    try:
        yield f"http://{host}:{port}"
    finally:
        await runner.cleanup()


@pytest.fixture
async def settings(
    kafka_bootstrap: str, redis_url: str, merchants_file: Path, sandbox_url: str
) -> AsyncIterator[Settings]:
    made = Settings(
        kafka_bootstrap_servers=kafka_bootstrap,
        redis_url=in_db(redis_url, REQUERY_DB),
        merchants_file=merchants_file,
        platform_url=sandbox_url + "/",
        time_scale=0.01,
        topic_prefix=f"t{uuid.uuid4().hex[:10]}.",
        topic_partitions=2,
        consumer_group=f"requery-{uuid.uuid4().hex[:8]}",
        platform_timeout=2.0,
    )
    await ensure_topics(made)
    try:
        async with clean_db(redis_url, REQUERY_DB):
            yield made
    finally:
        admin = AIOKafkaAdminClient(bootstrap_servers=kafka_bootstrap)
        await admin.start()
        try:
            await admin.delete_topics(list(made.topics.all))
        finally:
            await admin.close()


async def _requery(settings: Settings, *argv: str) -> tuple[int, str]:
    args = _parser().parse_args(["requery", *argv])
    out = io.StringIO()
    console = Console(out=out, err=out, clock=SystemClock())
    return await guarded("requery", run_requery(settings, console, args), console), out.getvalue()


async def _records(settings: Settings, topic: str) -> list[Any]:
    consumer = AIOKafkaConsumer(bootstrap_servers=settings.kafka_bootstrap_servers)
    await consumer.start()
    try:
        tps = [TopicPartition(topic, p) for p in range(settings.topic_partitions)]
        ends = await consumer.end_offsets(tps)
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        found: list[Any] = []
        async with asyncio.timeout(60):
            while len(found) < sum(ends.values()):
                batch = await consumer.getmany(timeout_ms=300)
                found.extend(r for records in batch.values() for r in records)
        return found
    finally:
        await consumer.stop()


async def test_requery_settles_a_paid_order_whose_notifications_were_all_lost(
    settings: Settings, sandbox_url: str
) -> None:
    """The sandbox drops every notification of a paid order. A dry run says it would send and
    sends nothing; the requery puts the platform's signed answer on callbacks, and the real
    worker settles it: one payment.succeeded event (source query), the record settled. An
    order the platform does not know is reported (exit 1) and nothing is sent."""
    name = f"rq-{uuid.uuid4().hex[:8]}"
    order = {"mch_id": TEST_MCH_ID, "mch_order": name, "amt": 10_000, "pay_type": 10,
             "notify_url": NOWHERE, "scenario": {"pay_after": 0, "drop_attempts": 9}}  # fmt: skip
    async with (
        aiohttp.ClientSession() as session,
        session.post(f"{sandbox_url}/_sandbox/orders", json={"orders": [order]}) as response,
    ):
        assert response.status < 300, await response.text()
    redis = open_redis(settings)
    try:
        book = bootstrap.order_book(settings, redis, SystemClock())
        await book.record_pending(OrderRecord(TEST_MCH_ID, name, 10_000, 10, int(time.time())))

        code, out = await _requery(settings, TEST_MCH_ID, name, "--dry-run")
        assert code == EXIT_OK, out
        assert "would send" in out
        assert "(dry run: nothing changed)" in out
        assert await _records(settings, settings.topics.callbacks) == []

        code, out = await _requery(settings, TEST_MCH_ID, f"{name}-unknown")
        assert code == EXIT_FAILED
        assert "does not know the order (103)" in out
        assert await _records(settings, settings.topics.callbacks) == []

        code, out = await _requery(settings, TEST_MCH_ID, name)
        assert code == EXIT_OK, out
        assert "sent" in out
        (sent,) = await _records(settings, settings.topics.callbacks)
        assert sent.key == f"{TEST_MCH_ID}:{name}".encode()
        assert orjson.loads(sent.value)["source"] == "query"
        assert "sign" in orjson.loads(sent.value)["fields"]

        stop = asyncio.Event()
        worker = asyncio.create_task(run_worker(settings, stop))
        try:
            async with asyncio.timeout(90):
                while not (events := await _records(settings, settings.topics.events)):
                    await asyncio.sleep(0.2)
        finally:
            stop.set()
            async with asyncio.timeout(60):
                await worker
        (event,) = [orjson.loads(e.value) for e in events]
        assert event["type"] == "paynotify.payment.succeeded"
        assert event["subject"] == f"{TEST_MCH_ID}:{name}"
        assert event["data"]["source"] == "query"
        record = await book.get(TEST_MCH_ID, name)
        assert record is not None
        assert record.state is OrderState.SETTLED
    finally:
        await redis.aclose()
