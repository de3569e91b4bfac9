"""The Kafka ports' contract (shared.ports.Sink, Producer), on Kafka (`TopicSink` and the
acks=all producer of `start_producer`) and on the in-memory fakes the use cases' unit tests use
(`CapturingSink`, `CapturingProducer`): what returned was published, and one key's messages
are read back in the order they were published."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import pytest

from shared.adapters.kafka import TopicSink, start_producer
from shared.settings import Settings
from tests.support.fakes import CapturingProducer, CapturingSink
from tests.support.pipeline_checks import read_records

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Awaitable, Callable

    from shared.ports import Producer, Sink


@dataclass
class Backend:
    producer: Producer
    sink: Callable[[str], Sink]  # a sink on a topic
    topic: Callable[[], Awaitable[str]]  # a new topic
    read: Callable[[str, int], Awaitable[list[tuple[str, bytes]]]]  # its first n (key, value)


@pytest.fixture(
    params=[
        pytest.param("memory", marks=pytest.mark.unit),
        pytest.param("kafka", marks=pytest.mark.integration),
    ]
)
def kafka_or_memory(request: pytest.FixtureRequest) -> tuple[str, Callable[..., Awaitable[str]]]:
    if request.param == "memory":
        return "", _no_topics
    return request.getfixturevalue("kafka_bootstrap"), request.getfixturevalue("fresh_topic")


async def _no_topics(prefix: str = "test", partitions: int = 3) -> str:
    raise AssertionError("not used")  # pragma: no cover


@pytest.fixture
async def backend(
    kafka_or_memory: tuple[str, Callable[..., Awaitable[str]]],
) -> AsyncIterator[Backend]:
    bootstrap, fresh_topic = kafka_or_memory
    if not bootstrap:
        producer = CapturingProducer()
        sinks: dict[str, CapturingSink] = {}
        names = iter(range(1_000_000))

        async def topic() -> str:
            return f"t{next(names)}"

        def sink(name: str) -> Sink:
            return sinks.setdefault(name, CapturingSink())

        async def read(name: str, count: int) -> list[tuple[str, bytes]]:
            found = list(sinks[name].published) if name in sinks else producer.on(name)
            assert len(found) >= count
            return found[:count]

        yield Backend(producer, sink, topic, read)
        return
    real = await start_producer(Settings(kafka_bootstrap_servers=bootstrap))

    async def read_kafka(name: str, count: int) -> list[tuple[str, bytes]]:
        return [(r.key.decode(), r.value) for r in await read_records(bootstrap, name, count)]

    try:
        yield Backend(real, lambda name: TopicSink(real, name), fresh_topic, read_kafka)
    finally:
        await real.stop()


async def test_a_sinks_messages_are_published_and_one_keys_stay_in_order(
    backend: Backend,
) -> None:
    topic = await backend.topic()
    sink = backend.sink(topic)
    for n in range(5):
        await sink.publish("m1:o1", b"first-%d" % n)
    got = await backend.read(topic, 5)
    assert got == [("m1:o1", b"first-%d" % n) for n in range(5)]


async def test_a_producer_writes_each_topic_its_own_messages(backend: Backend) -> None:
    events, dlq = await backend.topic(), await backend.topic()
    await backend.producer.send_and_wait(events, b"e1", key="m1:o1")
    await backend.producer.send_and_wait(dlq, b"d1", key="m1:o2", headers=[("h", b"v")])
    await backend.producer.send_and_wait(events, b"e2", key="m1:o1")
    assert await backend.read(events, 2) == [("m1:o1", b"e1"), ("m1:o1", b"e2")]
    assert await backend.read(dlq, 1) == [("m1:o2", b"d1")]
