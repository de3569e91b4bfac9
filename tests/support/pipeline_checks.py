"""What end-to-end tests read back: the sandbox's control API and the events topic."""

from __future__ import annotations

import asyncio
from collections import defaultdict
from typing import Any

import aiohttp
import orjson
from aiokafka import AIOKafkaConsumer, ConsumerRecord

from shared import topics


async def control(base: str, method: str, path: str, body: Any = None) -> Any:
    async with (
        aiohttp.ClientSession() as session,
        session.request(method, f"{base}/_sandbox/{path}", json=body) as response,
    ):
        payload = await response.json()
        if response.status >= 400:
            raise AssertionError(f"sandbox {method} {path}: {response.status} {payload}")
        return payload


async def collect_events(
    bootstrap: str, subjects: set[str], *, deadline: float, settle: float = 3.0
) -> dict[str, list[dict[str, Any]]]:
    """Read `paynotify.events` from the start until every subject has an event, then `settle`
    seconds more (so late duplicates or conflicting events would be seen too)."""
    consumer = AIOKafkaConsumer(
        topics.EVENTS,
        bootstrap_servers=bootstrap,
        group_id=None,
        auto_offset_reset="earliest",
        isolation_level="read_committed",
    )
    await consumer.start()
    events: dict[str, list[dict[str, Any]]] = defaultdict(list)
    try:
        loop = asyncio.get_running_loop()
        end = loop.time() + deadline
        settled_at: float | None = None
        while loop.time() < end:
            batch = await consumer.getmany(timeout_ms=250)
            for records in batch.values():
                for record in records:
                    event = orjson.loads(record.value)
                    events[event["subject"]].append(event)
            if settled_at is None and subjects <= events.keys():
                settled_at = loop.time()
            if settled_at is not None and loop.time() - settled_at >= settle:
                break
    finally:
        await consumer.stop()
    return dict(events)


def one_outcome_each(events: dict[str, list[dict[str, Any]]]) -> dict[str, str]:
    """Each subject's outcome type; fails if two events of one payment disagree (type or id)."""
    outcomes: dict[str, str] = {}
    for subject, found in events.items():
        payment_events = [e for e in found if e["type"] != "paynotify.order.expired"]
        if not payment_events:
            continue
        ids = {e["id"] for e in payment_events}
        types = {e["type"] for e in payment_events}
        assert len(ids) == 1, f"{subject}: {len(ids)} different event ids {types}"
        assert len(types) == 1, f"{subject}: conflicting outcomes {types}"
        outcomes[subject] = types.pop()
    return outcomes


async def read_records(bootstrap: str, topic: str, count: int) -> list[ConsumerRecord[Any, Any]]:
    """The first `count` records of `topic` (at least), from the beginning; 20 s at most."""
    consumer = AIOKafkaConsumer(
        topic, bootstrap_servers=bootstrap, auto_offset_reset="earliest", group_id=None
    )
    await consumer.start()
    try:
        got: list[ConsumerRecord[Any, Any]] = []
        async with asyncio.timeout(20):
            while len(got) < count:
                batch = await consumer.getmany(timeout_ms=200)
                got.extend(r for rs in batch.values() for r in rs)
        return got
    finally:
        await consumer.stop()


async def read_json(bootstrap: str, topic: str, count: int) -> list[dict[str, Any]]:
    """The first `count` messages of `topic` (JSON values), from the beginning; 20 s at most."""
    return [orjson.loads(r.value) for r in await read_records(bootstrap, topic, count)]
