"""Trace context through the pipeline (issue 11): the ingress starts a W3C `traceparent` for a
notification, carries it as the callbacks message's Kafka header, and the worker's outcome event
carries the same trace (the CloudEvents `traceparent` extension), with a span of its own."""

from __future__ import annotations

import asyncio
import uuid

import pytest
from aiokafka import AIOKafkaConsumer

from shared import topics
from shared.adapters.order_book import OrderBook
from shared.clock import SystemClock
from shared.domain.orders import OrderRecord
from shared.trace import from_headers, parse
from tests.conftest import TEST_MCH_ID
from tests.support.pipeline_checks import collect_events, control
from tests.support.redis_db import open_redis

pytestmark = pytest.mark.e2e


async def callbacks_traces(bootstrap: str, subject: str, deadline: float) -> set[str]:
    """The trace ids of every callbacks message of `subject` (each must carry a valid one)."""
    consumer = AIOKafkaConsumer(
        topics.CALLBACKS, bootstrap_servers=bootstrap, group_id=None, auto_offset_reset="earliest"
    )
    await consumer.start()
    found: set[str] = set()
    try:
        async with asyncio.timeout(deadline):
            while not found:
                for records in (await consumer.getmany(timeout_ms=250)).values():
                    for record in records:
                        if record.key == subject.encode():
                            trace = from_headers(record.headers)
                            assert trace is not None, record.headers
                            found.add(trace.trace_id)
    finally:
        await consumer.stop()
    return found


async def test_the_outcome_event_continues_the_ingress_trace(
    pipeline, module_kafka, module_redis
) -> None:
    pipeline.start_ingress()
    pipeline.start_worker(0)
    order = f"tr{uuid.uuid4().hex[:14]}"
    subject = f"{TEST_MCH_ID}:{order}"
    redis = open_redis(module_redis)  # a cluster client on a cluster
    try:
        await OrderBook(redis, SystemClock()).record_pending(
            OrderRecord(TEST_MCH_ID, order, 1500, 10, 1)
        )
        base = pipeline.sandbox_url
        await control(
            base,
            "POST",
            "orders",
            {"orders": [{"mch_id": TEST_MCH_ID, "mch_order": order, "amt": 1500,
                         "notify_url": pipeline.notify_url}]},
        )  # fmt: skip
        await control(
            base, "POST", "pay", {"orders": [{"mch_id": TEST_MCH_ID, "mch_order": order}]}
        )
        events = await collect_events(module_kafka, {subject}, deadline=90, settle=0.5)
        traces = await callbacks_traces(module_kafka, subject, deadline=30)
    finally:
        await redis.aclose()
    (event,) = events[subject]
    assert event["type"] == "paynotify.payment.succeeded"
    decided = parse(event["traceparent"])
    assert decided is not None, event["traceparent"]
    assert decided.trace_id in traces  # the trace of the notification that decided it
