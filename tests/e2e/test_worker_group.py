"""Workers scale out and fail over: processes of one group share partitions, a stopped one hands
its partitions over, and a `kill -9` mid-stream loses nothing and decides nothing twice."""

from __future__ import annotations

import asyncio
import uuid

import orjson
import pytest

from shared.adapters.order_book import OrderBook
from shared.clock import SystemClock
from shared.domain.orders import OrderRecord
from tests.conftest import TEST_MCH_ID
from tests.support.pipeline_checks import collect_events, control, one_outcome_each
from tests.support.redis_db import open_redis

pytestmark = pytest.mark.e2e

PARTITIONS = 6


def assignments(log_text: str) -> list[list[int]]:
    """Every partition set a worker logged as assigned, in order."""
    return [
        orjson.loads(line)["partitions"]
        for line in log_text.splitlines()
        if '"partitions_assigned"' in line
    ]


async def pay_wave(base: str, notify_url: str, book: OrderBook, count: int) -> set[str]:
    orders = [f"w{uuid.uuid4().hex[:14]}" for _ in range(count)]
    for order in orders:
        await book.record_pending(OrderRecord(TEST_MCH_ID, order, 2000, 10, 1))
    await control(
        base,
        "POST",
        "orders",
        {
            "orders": [
                {"mch_id": TEST_MCH_ID, "mch_order": o, "amt": 2000, "notify_url": notify_url}
                for o in orders
            ]
        },
    )
    await control(
        base, "POST", "pay", {"orders": [{"mch_id": TEST_MCH_ID, "mch_order": o} for o in orders]}
    )
    return {f"{TEST_MCH_ID}:{o}" for o in orders}


async def wait_for_log(process, text: str, deadline: float = 60) -> None:
    """Poll this run's output (not an earlier run's in the same log file) for `text`."""
    async with asyncio.timeout(deadline):
        while text not in process.output():
            await asyncio.sleep(0.05)


async def test_two_workers_share_hand_over_and_survive_kill_9(
    pipeline, module_kafka, module_redis
) -> None:
    """Two workers split the partitions; SIGTERM one and the other takes all; kill -9 one
    mid-stream and restart it: every payment still has exactly one outcome, and any repeated
    event carries the same id."""
    pipeline.start_ingress()
    await control(pipeline.sandbox_url, "PUT", "chaos", {"query_latency": 0.05})
    first = pipeline.start_worker(0)
    second = pipeline.start_worker(1)
    redis = open_redis(module_redis)
    book = OrderBook(redis, SystemClock())
    base, url = pipeline.sandbox_url, pipeline.notify_url
    subjects: set[str] = set()
    try:
        # 1. Both work: the group splits the partitions between them.
        subjects |= await pay_wave(base, url, book, 120)
        one_outcome_each(await collect_events(module_kafka, subjects, deadline=90, settle=0.5))
        async with asyncio.timeout(60):
            while not (assignments(first.output()) and assignments(second.output())):
                await asyncio.sleep(0.1)
        split = assignments(first.output())[-1], assignments(second.output())[-1]
        assert sorted(split[0] + split[1]) == list(range(PARTITIONS))
        assert split[0]
        assert split[1]

        # 2. A graceful stop hands every partition to the survivor.
        assert second.stop() == 0
        async with asyncio.timeout(60):
            while sorted(assignments(first.output())[-1]) != list(range(PARTITIONS)):
                await asyncio.sleep(0.1)
        subjects |= await pay_wave(base, url, book, 120)
        one_outcome_each(await collect_events(module_kafka, subjects, deadline=90, settle=0.5))

        # 3. kill -9 in the middle of a wave, then a restart: nothing lost, nothing decided twice.
        second = pipeline.start_worker(1)
        await wait_for_log(second, '"partitions_assigned"')
        # The wave comes in parts, so the restarted worker is mid-stream when it is killed.
        subjects |= await pay_wave(base, url, book, 60)
        await wait_for_log(second, '"payment_settled"')
        for _ in range(4):
            subjects |= await pay_wave(base, url, book, 60)
        second.kill()
        second = pipeline.start_worker(1)
        events = await collect_events(module_kafka, subjects, deadline=120, settle=3)
        outcomes = one_outcome_each(events)
        assert subjects <= outcomes.keys()
        assert set(outcomes.values()) == {"paynotify.payment.succeeded"}
    finally:
        await redis.aclose()
