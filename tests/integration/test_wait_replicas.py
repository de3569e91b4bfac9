"""`PAYNOTIFY_REDIS_WAIT_REPLICAS` on a real primary and replica (`--replicaof`): an outcome write
returns once the replica holds it; with the replica paused (SIGSTOP) WAIT falls short, nothing is
published, and the retry finds the outcome written and publishes that one, never a new decision."""

from __future__ import annotations

import asyncio
import itertools
import time
import uuid
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import pytest
from aiokafka import AIOKafkaConsumer, TopicPartition
from redis.asyncio import Redis

from devtools.stack.redis_pair import LocalRedisPair
from shared.adapters.kafka import CallbackEnvelope, TopicSink, start_producer
from shared.adapters.outcomes import Decided, Locked, OutcomeStore, outcome_key
from shared.adapters.redis_client import connect_redis
from shared.adapters.replication import NotReplicatedError
from shared.clock import SystemClock
from shared.domain.decision import requery_schedule
from shared.merchants import parse_merchants
from shared.protocol.catalog import PayTypeCatalog
from shared.protocol.models import OrderQueryAnswer
from shared.protocol.payment import PaymentReport, PaymentStatus, report_fields
from shared.protocol.signing import signed
from shared.service.settle import Reconciler, Settlement, Work
from shared.settings import Settings
from tests.conftest import TEST_KEY
from tests.support.pipeline_checks import read_json

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Iterator

pytestmark = [pytest.mark.integration, pytest.mark.own_stack]  # its own redis-servers

MCH = "w4itrep1ca"
TIMEOUT_MS = 200  # where WAIT is expected to fall short (a paused replica)
# Where the replica is expected to acknowledge: WAIT returns as soon as it does, so a patient
# bound costs a healthy run nothing. With 200 ms here, one CI run's cluster pass (2026-12-04)
# failed two tests with the replica synced and running; the likely cause, the replica's fsync
# (`appendfsync always`) on a disk shared with the cluster's servers, was not proven.
PATIENT_MS = 5_000
_seq = itertools.count()


@pytest.fixture(scope="module")
def pair(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalRedisPair]:
    with LocalRedisPair(tmp_path_factory.mktemp("pair")) as started:
        yield started


@pytest.fixture
async def primary(pair: LocalRedisPair) -> AsyncIterator[Redis]:
    pair.resume_replica()  # a test that failed half way left it paused
    pair.wait_synced()
    client = connect_redis(pair.primary_url, max_connections=8)
    try:
        yield client
    finally:
        await client.aclose()


def replica(pair: LocalRedisPair) -> Redis:
    return Redis(host="127.0.0.1", port=pair.replica_port, socket_timeout=5.0)


def store_on(client: Redis, replicas: int = 1, timeout_ms: int = PATIENT_MS) -> OutcomeStore:
    return OutcomeStore(
        client, outcome_ttl_seconds=600, lock_ttl_ms=5000, wait_replicas=replicas,
        wait_timeout_ms=timeout_ms,
    )  # fmt: skip


async def decide(store: OutcomeStore, key: str, kind: str) -> str:
    state = await store.begin(key, MCH, key.partition(":")[2])
    if isinstance(state, Decided):
        return state.outcome.type
    assert isinstance(state, Locked)
    recorded = await store.decide(
        key, state.token, event_type=kind, event_id=f"id-{kind}", event=b"{}",
        decided_at=time.time(), settle_record=None,
    )  # fmt: skip
    return recorded.type


async def test_a_waited_write_is_on_the_replica_when_it_returns(
    pair: LocalRedisPair, primary: Redis
) -> None:
    """WAIT 1 returned 1: the replica already holds the outcome (read from it directly)."""
    key = f"{MCH}:{uuid.uuid4().hex[:10]}"
    assert await decide(store_on(primary), key, "paid") == "paid"
    async with replica(pair) as copy:
        assert await copy.hget(outcome_key(key), "type") == b"paid"


async def test_a_paused_replica_fails_the_write_and_the_retry_keeps_the_first_outcome(
    pair: LocalRedisPair, primary: Redis
) -> None:
    """The replica is stopped: the write raises NotReplicatedError (after WAIT's timeout, not a
    hang); the primary holds the outcome; a second attempt that would decide otherwise finds it
    and waits for it again, and succeeds once the replica is back."""
    store = store_on(primary, timeout_ms=TIMEOUT_MS)
    key = f"{MCH}:{uuid.uuid4().hex[:10]}"
    pair.pause_replica()
    try:
        started = time.monotonic()
        with pytest.raises(NotReplicatedError, match="0 of 1 replicas"):
            await decide(store, key, "paid")
        assert time.monotonic() - started < 4.0  # WAIT's 0.2 s, with room for a busy machine
        assert store.writes.last_shortfall == "0 of 1 replicas acknowledged"
        assert await primary.hget(outcome_key(key), "type") == b"paid"
        with pytest.raises(NotReplicatedError):
            await store.confirm(key)
    finally:
        pair.resume_replica()
    pair.wait_synced()
    retry = store_on(primary)  # the next attempt (this worker's or another's)
    assert await decide(retry, key, "mismatched") == "paid"  # found, not decided again
    await retry.confirm(key)
    assert retry.writes.last_shortfall is None
    async with replica(pair) as copy:
        assert await copy.hget(outcome_key(key), "type") == b"paid"


async def test_without_waiting_a_paused_replica_changes_nothing(
    pair: LocalRedisPair, primary: Redis
) -> None:
    """The default (0): the write returns at once and the replica is simply behind."""
    store = store_on(primary, replicas=0)
    key = f"{MCH}:{uuid.uuid4().hex[:10]}"
    pair.pause_replica()
    try:
        assert await decide(store, key, "paid") == "paid"
        await store.confirm(key)
    finally:
        pair.resume_replica()


# --- the reconciler: nothing is published until the replica holds the outcome ---------------


@dataclass
class Answers:
    """The platform's order query, answering `report` (changeable between attempts)."""

    report: PaymentReport | None = None
    calls: list[str] = field(default_factory=list)

    async def query_order(self, mch_id: str, mch_order: str) -> OrderQueryAnswer:
        self.calls.append(mch_order)
        assert self.report is not None
        return OrderQueryAnswer(report=self.report, key_id="sha256:test", raw={})


def payment(order: str, amt: int) -> PaymentReport:
    return PaymentReport(
        mch_id=MCH, pay_type=10, mch_order=order, amt=amt, mch_amt=1000, amt_type="cny",
        status=PaymentStatus(2), created_at=int(time.time()) - 120,
        success_at=int(time.time()) - 60, origin_order=None, call=None, sign_type="md5",
    )  # fmt: skip


def work(r: PaymentReport) -> Work:
    envelope = CallbackEnvelope(
        fields=signed(report_fields(r), TEST_KEY), key_id="sha256:test", received_at=time.time(),
        peer="127.0.0.1", delivery_id=uuid.uuid4().hex, source="notification",
    )  # fmt: skip
    return Work(envelope=envelope, origin=f"wait@{next(_seq)}")


async def topic_end(bootstrap: str, topic: str) -> int:
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=None)
    await consumer.start()
    try:
        partition = TopicPartition(topic, 0)
        async with asyncio.timeout(20):
            return (await consumer.end_offsets([partition]))[partition]
    finally:
        await consumer.stop()


async def test_the_reconciler_publishes_only_what_the_replica_holds(
    pair: LocalRedisPair, primary: Redis, kafka_bootstrap: str, fresh_topic
) -> None:
    """Replica paused: the settled payment's outcome is written on the primary, WAIT falls
    short, it is counted (`outcome_not_replicated`) and nothing reaches the events topic. The
    platform's answer then changes (an underpayment); the replica comes back; the retry finds the
    first outcome and publishes it, once: no second decision."""
    events_topic = await fresh_topic("events", partitions=1)
    dlq_topic = await fresh_topic("dlq", partitions=1)
    producer = await start_producer(Settings(kafka_bootstrap_servers=kafka_bootstrap))
    order = f"w{uuid.uuid4().hex[:12]}"
    answers = Answers(payment(order, 1000))
    reconciler = Reconciler(
        store=store_on(primary, timeout_ms=TIMEOUT_MS), platform=answers,
        merchants=parse_merchants({"merchants": {MCH: {"keys": [TEST_KEY]}}}),
        events=TopicSink(producer, events_topic), dlq=TopicSink(producer, dlq_topic),
        pay_types=PayTypeCatalog.documented(), policy="optional",
        schedule=requery_schedule(0.001), clock=SystemClock(), min_retry_delay=0.0,
        random=lambda: 0.0,
    )  # fmt: skip
    try:
        pair.pause_replica()
        try:
            settling = asyncio.create_task(reconciler.settle(work(payment(order, 1000))))
            async with asyncio.timeout(30):
                while reconciler.stats["outcome_not_replicated"] < 2:
                    await asyncio.sleep(0.05)
            assert await topic_end(kafka_bootstrap, events_topic) == 0
            answers.report = payment(order, 900)  # would be decided amount_mismatched now
        finally:
            pair.resume_replica()
        async with asyncio.timeout(60):
            assert await settling == Settlement.REPUBLISHED
        (event,) = await read_json(kafka_bootstrap, events_topic, 1)
        assert event["type"] == "paynotify.payment.succeeded"
        assert len(answers.calls) == 1  # decided once; the retries only waited
        assert await topic_end(kafka_bootstrap, events_topic) == 1
    finally:
        await producer.stop()
