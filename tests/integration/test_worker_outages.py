"""Redis going away under a worker (issue 10, holes 7 and 8), on a redis-server of the module's own
that the tests stop, pause and restart. Each test failed on the code before its fix."""

from __future__ import annotations

import asyncio
import os
import signal
from collections import Counter
from typing import TYPE_CHECKING

import pytest
import redis.exceptions

from devtools.stack.local import LocalStack, free_port
from shared.adapters.kafka import CallbackEnvelope, TopicSink, start_producer
from shared.adapters.outcomes import OutcomeStore, outcome_key
from shared.adapters.redis_client import SOCKET_TIMEOUT, connect_redis
from shared.clock import SystemClock
from shared.ports import RecordedOutcome
from shared.service.settle import Settlement, Work
from shared.settings import Settings
from tests.support.pipeline_checks import read_json
from tests.support.redis_db import retry_set
from workers.consumer import callbacks_consumer, retries_consumer
from workers.keyed import KeyedRunner

if TYPE_CHECKING:
    from collections.abc import Iterator

pytestmark = pytest.mark.integration


def _unmarked_outcome() -> RecordedOutcome:
    """An outcome as Redis holds it before its mark: `published` 0."""
    return RecordedOutcome("t", "id", b"{}", published=False)


@pytest.fixture(scope="module")
def own_redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalStack]:
    stack = LocalStack(
        state_dir=tmp_path_factory.mktemp("redis-outage"), kafka_port=0, redis_port=free_port()
    )
    stack.start_redis()
    try:
        yield stack
    finally:
        stack.stop_redis()


def _redis_pid(stack: LocalStack) -> int:
    return int((stack.state_dir / "redis.pid").read_text())


async def test_a_paused_redis_is_a_timeout_not_a_hang(own_redis: LocalStack) -> None:
    """Every command has a deadline: with redis-server stopped (SIGSTOP) a call raises
    redis's TimeoutError (which callers wait out) instead of hanging the job for ever."""
    client = connect_redis(own_redis.redis_url, max_connections=4)
    try:
        await client.ping()
        os.kill(_redis_pid(own_redis), signal.SIGSTOP)
        try:
            async with asyncio.timeout(SOCKET_TIMEOUT + 5):
                with pytest.raises(redis.exceptions.TimeoutError):
                    await client.set("k", "v")
        finally:
            os.kill(_redis_pid(own_redis), signal.SIGCONT)
        await client.connection_pool.disconnect()
        assert await client.ping()
    finally:
        await client.aclose()


async def test_a_commit_cycle_without_redis_is_skipped_not_fatal(own_redis: LocalStack) -> None:
    """Hole 8: marking outcomes published raised out of the consumer when Redis was away, and
    the worker exited. Now the cycle is skipped (no offsets committed before the marks) and the
    marks are written once Redis is back."""
    client = connect_redis(own_redis.redis_url, max_connections=4)
    store = OutcomeStore(client, outcome_ttl_seconds=60, lock_ttl_ms=1000)
    await client.hset(outcome_key("m:o1"), mapping={"type": "t", "published": "0"})
    store.note_published("m:o1")
    stats: Counter[str] = Counter()
    consumer = callbacks_consumer(
        None,  # no offsets are taken, so the Kafka consumer is never called
        "unused",
        KeyedRunner(4),
        _never_called,
        store=store,
        dlq=_NoSink(),
        clock=SystemClock(),
        stats=stats,
    )
    try:
        own_redis.stop_redis()
        await consumer.commit()  # the old code raised ConnectionError here
        assert store.is_published("m:o1", _unmarked_outcome())  # still noted, for the next try
        assert stats["commit_skipped"] == 1
        own_redis.start_redis()
        await client.connection_pool.disconnect()
        await consumer.commit()
        assert not store.is_published("m:o1", _unmarked_outcome())  # Redis has it now
        assert await client.hget(outcome_key("m:o1"), "published") == b"1"
    finally:
        if not own_redis.status()["redis"]:
            own_redis.start_redis()
        await client.aclose()


async def test_a_corrupt_retry_entry_is_dead_lettered_and_removed(
    own_redis: LocalStack, kafka_bootstrap: str, fresh_topic
) -> None:
    """Redis values are not trusted: a retry-set member that does not parse used to raise in
    the poller and stop the worker. Now it goes to the DLQ (corrupt_retry_entry) and leaves
    the set, and the good member beside it is settled."""
    dlq_topic = await fresh_topic("dlq", partitions=1)
    producer = await start_producer(Settings(kafka_bootstrap_servers=kafka_bootstrap))
    client = connect_redis(own_redis.redis_url, max_connections=4)
    good = Work(
        envelope=CallbackEnvelope({"mch_id": "m", "mch_order": "o2"}, "k", 0.0, None, "d", "q")
    ).to_retry()
    for member in (b"not json{", b'{"envelope": 5}', good):
        await retry_set(client).add(member, 1.0)
    settled: list[Work] = []

    async def settle(work: Work) -> Settlement:
        settled.append(work)
        return Settlement.NO_OUTCOME

    stop = asyncio.Event()
    stats: Counter[str] = Counter()
    poller = retries_consumer(
        OutcomeStore(client, outcome_ttl_seconds=60, lock_ttl_ms=1000),
        KeyedRunner(4),
        settle,
        dlq=TopicSink(producer, dlq_topic),
        clock=SystemClock(),
        stats=stats,
        interval=0.05,
    )
    task = asyncio.create_task(poller.run(stop))
    try:
        async with asyncio.timeout(20):
            while await retry_set(client).count() > 0 or stats["dead_lettered"] < 2:
                await asyncio.sleep(0.05)
        assert [w.envelope.fields["mch_order"] for w in settled] == ["o2"]
        letters = await read_json(kafka_bootstrap, dlq_topic, 2)
        assert {letter["reason"] for letter in letters} == {"corrupt_retry_entry"}
    finally:
        stop.set()
        await asyncio.wait_for(task, 5)
        await producer.stop()
        await client.flushdb()
        await client.aclose()


async def _never_called(work: Work) -> Settlement:
    raise AssertionError(work)


class _NoSink:
    async def publish(self, key: str, value: bytes) -> None:
        raise AssertionError(key)
