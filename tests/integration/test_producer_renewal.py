"""The project's producer survives a sequence gap (found by the chaos run on three brokers).

aiokafka 0.14 takes a partition's next sequence number for a batch that then fails unsent (no
leader past the batch's deadline, as while a whole cluster restarts); the broker refuses every
later batch of that partition with `OutOfOrderSequenceNumber`, for good. The test makes the same
gap on a real broker (by advancing the client's sequence as that failed batch does: the one
place a test reaches into aiokafka's internals, to reproduce its bug) and checks that
`start_producer`'s producer renews itself: the next send succeeds, and the message is written
once.
"""

from __future__ import annotations

import asyncio

import pytest
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.errors import OutOfOrderSequenceNumber

from shared.adapters.kafka import start_producer
from shared.settings import Settings

pytestmark = pytest.mark.integration


def gap(producer, topic: str) -> None:
    """What aiokafka does to a batch that expires without a partition leader."""
    inner = producer._producer  # the current AIOKafkaProducer
    inner._txn_manager.increment_sequence_number(TopicPartition(topic, 0), 3)


async def read_all(bootstrap: str, topic: str, count: int) -> list[bytes]:
    consumer = AIOKafkaConsumer(topic, bootstrap_servers=bootstrap, auto_offset_reset="earliest")
    await consumer.start()
    values: list[bytes] = []
    try:
        async with asyncio.timeout(30):
            while len(values) < count:
                batch = await consumer.getmany(timeout_ms=300)
                values += [r.value for records in batch.values() for r in records]
        await asyncio.sleep(1.0)  # and nothing more comes
        batch = await consumer.getmany(timeout_ms=300)
        values += [r.value for records in batch.values() for r in records]
    finally:
        await consumer.stop()
    return values


async def test_a_refused_sequence_renews_the_producer_and_sends_again(
    kafka_bootstrap: str, fresh_topic
) -> None:
    topic = await fresh_topic("renewal", partitions=1)
    producer = await start_producer(Settings(kafka_bootstrap_servers=kafka_bootstrap))
    try:
        await producer.send_and_wait(topic, b"first", partition=0)
        gap(producer, topic)
        await producer.send_and_wait(topic, b"after-the-gap", partition=0)
        assert producer.renewals == 1
        await producer.send_and_wait(topic, b"and-on", partition=0)
    finally:
        await producer.stop()
    assert await read_all(kafka_bootstrap, topic, 3) == [b"first", b"after-the-gap", b"and-on"]


async def test_a_send_that_was_refused_says_so_and_the_next_one_gets_through(
    kafka_bootstrap: str, fresh_topic
) -> None:
    """The ingress's path: `send` hands back the delivery; a refused one fails (the ingress
    answers 503, the platform tries again) and the producer is renewed for the next request."""
    topic = await fresh_topic("renewal-send", partitions=1)
    producer = await start_producer(Settings(kafka_bootstrap_servers=kafka_bootstrap))
    try:
        await (await producer.send(topic, b"first", partition=0))
        gap(producer, topic)
        with pytest.raises(OutOfOrderSequenceNumber):
            await (await producer.send(topic, b"refused", partition=0))
        async with asyncio.timeout(30):
            while producer.renewals == 0:
                await asyncio.sleep(0.05)
        await (await producer.send(topic, b"next", partition=0))
    finally:
        await producer.stop()
    assert await read_all(kafka_bootstrap, topic, 2) == [b"first", b"next"]
