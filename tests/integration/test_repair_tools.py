"""The repair tools against real Kafka and Redis: `status`, `dlq list`, `dlq redrive` and
`replay`, each with its dry run (issue 11, "Repair tools").

Every test has topics of its own (a unique `PAYNOTIFY_TOPIC_PREFIX`, made by `topics ensure`'s
code and deleted afterwards) and a Redis database emptied before and after; the tools are run
through the same command-line parser as `paynotify`."""

from __future__ import annotations

import asyncio
import io
import time
import uuid
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import orjson
import pytest
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.structs import OffsetAndMetadata

from shared.adapters.kafka import CLOUDEVENTS_HEADERS, CallbackEnvelope, TopicSink, start_producer
from shared.adapters.order_book import SWEEPER_LEASE_KEY, OrderBook
from shared.adapters.outcomes import OutcomeStore, outcome_key
from shared.adapters.redis_lock import Locks
from shared.adapters.topic_admin import ensure_topics
from shared.cli import _parser
from shared.clock import SystemClock
from shared.domain.decision import requery_schedule
from shared.domain.events import AnswerStatus, OrderExpired, encode, event_id
from shared.domain.orders import OrderRecord
from shared.domain.sweep import SweepMark, SweepSchedule
from shared.merchants import parse_merchants
from shared.ops import dlq, replay, status
from shared.ops.tool import EXIT_OK, EXIT_USAGE, Console, guarded
from shared.protocol.catalog import PayTypeCatalog
from shared.protocol.models import OrderQueryAnswer
from shared.protocol.payment import PaymentReport, PaymentStatus, report_fields
from shared.protocol.signing import signed
from shared.service.dead_letters import publish_dead_letter
from shared.service.settle import Reconciler, Settlement, Work
from shared.settings import Settings
from tests.conftest import TEST_KEY, TEST_MCH_ID
from tests.support.redis_db import clean_db, in_db

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

    from redis.asyncio import Redis

    from shared.adapters.renewing_producer import RenewingProducer

pytestmark = pytest.mark.integration

# Shared with other modules that empty it before and after (test modules run one at a time).
REPAIR_DB = 12


@dataclass
class Env:
    settings: Settings
    redis: Redis
    producer: RenewingProducer

    async def run(self, module: Any, *argv: str) -> tuple[int, str, str]:
        """Run a tool as `paynotify ARGV` would; (exit code, stdout, stderr)."""
        args = _parser().parse_args(list(argv))
        out, err = io.StringIO(), io.StringIO()
        console = Console(out=out, err=err, clock=SystemClock())
        runner = {
            "status": getattr(module, "run_status", None),
            "replay": getattr(module, "run_replay", None),
        }.get(argv[0]) or (module.run_redrive if "redrive" in argv else module.run_list)
        code = await guarded(argv[0], runner(self.settings, console, args), console)
        return code, out.getvalue(), err.getvalue()

    async def ends(self, topic: str) -> dict[int, int]:
        consumer = AIOKafkaConsumer(bootstrap_servers=self.settings.kafka_bootstrap_servers)
        await consumer.start()
        try:
            tps = [TopicPartition(topic, p) for p in range(self.settings.topic_partitions)]
            return {tp.partition: n for tp, n in (await consumer.end_offsets(tps)).items()}
        finally:
            await consumer.stop()

    async def read(self, topic: str) -> list[Any]:
        """Every record on `topic` now."""
        ends = await self.ends(topic)
        consumer = AIOKafkaConsumer(
            bootstrap_servers=self.settings.kafka_bootstrap_servers, enable_auto_commit=False
        )
        await consumer.start()
        found: list[Any] = []
        try:
            tps = [TopicPartition(topic, p) for p, end in ends.items() if end > 0]
            if not tps:
                return found
            consumer.assign(tps)
            await consumer.seek_to_beginning(*tps)
            async with asyncio.timeout(30):
                while len(found) < sum(ends.values()):
                    batch = await consumer.getmany(timeout_ms=300)
                    found.extend(r for records in batch.values() for r in records)
        finally:
            await consumer.stop()
        return sorted(found, key=lambda r: (r.partition, r.offset))


@pytest.fixture
async def env(kafka_bootstrap: str, redis_url: str) -> AsyncIterator[Env]:
    settings = Settings(
        kafka_bootstrap_servers=kafka_bootstrap,
        redis_url=in_db(redis_url, REPAIR_DB),
        topic_prefix=f"t{uuid.uuid4().hex[:10]}.",
        topic_partitions=2,
        consumer_group=f"repair-{uuid.uuid4().hex[:8]}",
    )
    await ensure_topics(settings)
    producer = await start_producer(settings)
    try:
        async with clean_db(redis_url, REPAIR_DB) as redis:
            yield Env(settings, redis, producer)
    finally:
        await producer.stop()
        admin = AIOKafkaAdminClient(bootstrap_servers=kafka_bootstrap)
        await admin.start()
        try:
            await admin.delete_topics(list(settings.topics.all))
        finally:
            await admin.close()


def _report(order: str, *, paid: bool = True) -> PaymentReport:
    now = int(time.time())
    return PaymentReport(
        mch_id=TEST_MCH_ID, pay_type=10, mch_order=order, amt=1000, mch_amt=1000, amt_type="cny",
        status=PaymentStatus.PAID if paid else PaymentStatus.UNPAID, created_at=now - 120,
        success_at=now - 60 if paid else None, origin_order=None, call=None, sign_type="md5",
    )  # fmt: skip


def _envelope(order: str) -> CallbackEnvelope:
    """A signed notification as the ingress publishes it."""
    return CallbackEnvelope(
        fields=signed(report_fields(_report(order)), TEST_KEY),
        key_id="sha256:test",
        received_at=time.time(),
        peer="127.0.0.1",
        delivery_id=uuid.uuid4().hex,
        source="notification",
    )


async def _dead_letter_from_callbacks(
    env: Env, order: str, reason: str
) -> tuple[CallbackEnvelope, Any]:
    """A notification on the callbacks topic, then its dead letter as the worker writes it
    (shared.service.dead_letters.publish_dead_letter, origin = the record's position)."""
    envelope = _envelope(order)
    key = f"{TEST_MCH_ID}:{order}"
    sent = await env.producer.send_and_wait(
        env.settings.topics.callbacks, envelope.encode(), key=key
    )
    await publish_dead_letter(
        TopicSink(env.producer, env.settings.topics.dlq), key, reason=reason,
        detail="test", origin=f"{env.settings.topics.callbacks}/{sent.partition}@{sent.offset}",
        payload=envelope.encode(), at=time.time(),
    )  # fmt: skip
    return envelope, sent


async def _orders_retry_and_lease(redis: Redis) -> str:
    """Two pending orders, one overdue; one retry, due; the sweeper's lease taken (its token)."""
    clock = SystemClock()
    book = OrderBook(redis, clock, schedule=SweepSchedule(expiry=3600.0, first_check=0.001))
    await book.record_pending(OrderRecord(TEST_MCH_ID, "p1", 1000, 10, int(time.time()) - 10))
    later = OrderBook(redis, clock, schedule=SweepSchedule(expiry=7200.0, first_check=3000.0))
    await later.record_pending(OrderRecord(TEST_MCH_ID, "p2", 1000, 10, int(time.time())))
    store = OutcomeStore(redis, outcome_ttl_seconds=60, lock_ttl_ms=1000)
    await store.defer(f"{TEST_MCH_ID}:r1", None, time.time() - 1, b'{"retry": 1}')
    token = await Locks(redis).acquire(SWEEPER_LEASE_KEY, 10_000, holder="pod-7:42")
    assert token is not None
    await book.mark_sweep(SweepMark("pod-7:42", time.time() - 3, 2))
    return token


async def test_status_reports_topics_lag_dead_letters_orders_retries_and_lease(env: Env) -> None:
    """Three dead letters of two reasons and one unreadable record; a group two messages
    behind on callbacks; two pending orders, one overdue; a retry due; the lease held: the
    JSON says each, the table names them, the bad record is reported and skipped, and
    `--dry-run` changes nothing (the tool only reads)."""
    names = env.settings.topics
    for order, reason in (("s1", "bad_signature"), ("s2", "bad_signature"), ("s3", "stale")):
        await _dead_letter_from_callbacks(env, order, reason)
    await env.producer.send_and_wait(names.dlq, b"not json", key="x")
    # A group that has handled the first of the three callbacks records, and none after it.
    records = await env.read(names.callbacks)
    first = records[0]
    group = env.settings.consumer_group
    consumer = AIOKafkaConsumer(
        bootstrap_servers=env.settings.kafka_bootstrap_servers, group_id=group,
        enable_auto_commit=False,
    )  # fmt: skip
    await consumer.start()
    try:
        tp = TopicPartition(names.callbacks, first.partition)
        consumer.assign([tp])
        await consumer.commit({tp: OffsetAndMetadata(first.offset + 1, "")})
    finally:
        await consumer.stop()
    token = await _orders_retry_and_lease(env.redis)

    code, out, err = await env.run(status, "status", "--json")
    assert code == EXIT_OK
    document = orjson.loads(out)
    assert document["dlq_reasons"] == {"bad_signature": 2, "stale": 1}
    assert document["dlq_unreadable"] == 1
    assert "skipped" in err
    assert "not JSON" in err
    topics = {row["topic"]: row for row in document["topics"]}
    assert set(topics) == set(names.all)
    assert topics[names.callbacks]["partitions"] == 2
    assert topics[names.callbacks]["messages"] == 3
    (lag,) = [row for row in document["lags"] if row["group"] == group]
    assert (lag["topic"], lag["lag"]) == (names.callbacks, 2)
    figures = document["redis"]
    assert (figures["pending"], figures["overdue"]) == (2, 1)
    assert (figures["retries"], figures["retries_due"]) == (1, 1)
    assert figures["lease"]["held"] is True
    assert figures["lease"]["holder"] == "pod-7:42"
    assert figures["lease"]["token_prefix"] == token.rpartition("/")[2][:8]
    assert figures["last_run"]["instance"] == "pod-7:42"
    assert figures["last_run"]["claimed"] == 2
    assert figures["last_run_note"] is None

    before = await env.ends(names.dlq)
    code, out, _ = await env.run(status, "status", "--dry-run")
    assert code == EXIT_OK
    for text in (
        "bad_signature", "overdue orders", "sweeper lease: held by pod-7:42", names.callbacks,
        "sweeper last run: ", "by pod-7:42 (2 orders claimed)",
    ):  # fmt: skip
        assert text in out
    assert (
        out.rstrip().splitlines()[-1].startswith("status: 5 topics, 3 dead letters, 2 largest lag")
    )
    assert "(dry run: nothing changed)" in out
    assert await env.ends(names.dlq) == before


async def test_dlq_list_filters_by_reason_merchant_order_and_time(env: Env) -> None:
    """`dlq list` selects by reason, merchant, order and time; unreadable records are reported
    and skipped; --json gives one object a line."""
    await _dead_letter_from_callbacks(env, "l1", "bad_signature")
    await _dead_letter_from_callbacks(env, "l2", "stale")
    await env.producer.send_and_wait(env.settings.topics.dlq, b'{"reason": 5}', key="x")

    code, out, err = await env.run(dlq, "dlq", "list", "--reason", "stale", "--json")
    assert code == EXIT_OK
    (line,) = out.splitlines()
    shown = orjson.loads(line)
    assert (shown["reason"], shown["mch_order"], shown["payload"]) == ("stale", "l2", "json")
    assert "dlq list: 3 read, 1 matched, 1 shown, 1 unreadable skipped" in err

    _, out, _ = await env.run(dlq, "dlq", "list", "--order", f"{TEST_MCH_ID}:l1")
    assert "l1" in out
    assert "l2" not in out
    _, out, _ = await env.run(dlq, "dlq", "list", "--merchant", "nobody")
    assert "0 matched" in out
    _, out, _ = await env.run(dlq, "dlq", "list", "--since", "1h")
    assert "2 matched" in out
    _, out, _ = await env.run(dlq, "dlq", "list", "--until", "1h")
    assert "0 matched" in out
    code, _, err = await env.run(dlq, "dlq", "list", "--since", "yesterday-ish")
    assert code == EXIT_USAGE
    assert "is not a time" in err


class PaidPlatform:
    """The platform's answer: every order paid, as reported."""

    async def query_order(self, mch_id: str, mch_order: str) -> OrderQueryAnswer:
        return OrderQueryAnswer(report=_report(mch_order), key_id="sha256:test", raw={})


async def test_redrive_republishes_the_original_message_and_the_worker_dedupes_it(
    env: Env,
) -> None:
    """A payment settled, and an earlier delivery of it dead-lettered: the dry run publishes
    nothing; the redrive puts the original record back on callbacks byte for byte (key, value,
    so the same delivery id) and the worker finds it a duplicate. A dead letter of the sweeper
    (no source record) is reported as not redrivable; a redrive without any filter needs
    --all."""
    names = env.settings.topics
    envelope, sent = await _dead_letter_from_callbacks(env, "d1", "retries_exhausted")
    await publish_dead_letter(
        TopicSink(env.producer, names.dlq), f"{TEST_MCH_ID}:d2", reason="unknown_merchant",
        detail="gave up", origin="sweeper", payload=orjson.dumps({"order": f"{TEST_MCH_ID}:d2"}),
        at=time.time(),
    )  # fmt: skip
    store = OutcomeStore(env.redis, outcome_ttl_seconds=600, lock_ttl_ms=5000)
    reconciler = Reconciler(
        store=store, platform=PaidPlatform(),
        merchants=parse_merchants({"merchants": {TEST_MCH_ID: {"keys": [TEST_KEY]}}}),
        events=TopicSink(env.producer, names.events), dlq=TopicSink(env.producer, names.dlq),
        pay_types=PayTypeCatalog.documented(), policy="optional",
        schedule=requery_schedule(0.001), clock=SystemClock(), min_retry_delay=0.0,
    )  # fmt: skip
    # The payment was settled since (another delivery of it).
    assert await reconciler.handle(Work(envelope=_envelope("d1"))) is Settlement.PUBLISHED
    await store.flush_published()

    code, out, _ = await env.run(dlq, "dlq", "redrive")
    assert code == EXIT_USAGE
    before = await env.ends(names.callbacks)
    code, out, _ = await env.run(dlq, "dlq", "redrive", "--merchant", TEST_MCH_ID, "--dry-run")
    assert code == EXIT_OK
    assert "would redrive" in out
    assert "original record" in out
    assert "not redrivable" in out
    assert "use `paynotify requery`" in out
    assert await env.ends(names.callbacks) == before

    code, out, _ = await env.run(dlq, "dlq", "redrive", "--merchant", TEST_MCH_ID)
    assert code == EXIT_OK, out
    assert "1 redriven, 1 not redrivable" in out
    records = await env.read(names.callbacks)
    original = next(r for r in records if (r.partition, r.offset) == (sent.partition, sent.offset))
    redriven = next(r for r in records if r.offset >= before[r.partition])
    assert (redriven.key, redriven.value) == (original.key, original.value)
    again = CallbackEnvelope.decode(redriven.value)
    assert again.delivery_id == envelope.delivery_id
    assert await reconciler.handle(Work(envelope=again)) is Settlement.DUPLICATE


async def test_redrive_rebuilds_a_message_its_topic_no_longer_keeps(env: Env) -> None:
    """A dead letter whose source record is gone (here: an origin past the topic's end) is
    redriven from the bytes the DLQ kept, keyed by the order: the same bytes the ingress
    wrote, the same delivery id."""
    names = env.settings.topics
    envelope = _envelope("gone")
    key = f"{TEST_MCH_ID}:gone"
    await publish_dead_letter(
        TopicSink(env.producer, names.dlq), key, reason="internal_error", detail="boom",
        origin=f"{names.callbacks}/1@999999", payload=envelope.encode(), at=time.time(),
    )  # fmt: skip
    before = await env.ends(names.callbacks)
    code, out, _ = await env.run(dlq, "dlq", "redrive", "--reason", "internal_error")
    assert code == EXIT_OK, out
    assert "rebuilt from the dead letter" in out
    (redriven,) = [r for r in await env.read(names.callbacks) if r.offset >= before[r.partition]]
    assert redriven.key == key.encode()
    assert redriven.value == envelope.encode()


def _expired(order: str) -> bytes:
    event = OrderExpired(
        mch_id=TEST_MCH_ID, mch_order=order, pay_type=10, mch_amt=1000, created_at=1_700_000_000,
        queried_at=1_700_000_100, answer=AnswerStatus.UNPAID,
    )  # fmt: skip
    return encode(event, time=time.time())


async def test_replay_republishes_events_byte_for_byte_with_their_ids(env: Env) -> None:
    """Events of two orders (one published twice) and a record that is no event: a dry run
    publishes nothing; a replay by merchant to another topic publishes each id once, with the
    same key, value and headers; an order whose event only Redis still records is replayed
    from there; a replay without a filter needs --all."""
    names = env.settings.topics
    values = {order: _expired(order) for order in ("e1", "e2")}
    for order in ("e1", "e2", "e1"):  # e1 twice: a redelivery published it again
        await env.producer.send_and_wait(
            names.events, values[order], key=f"{TEST_MCH_ID}:{order}",
            headers=list(CLOUDEVENTS_HEADERS),
        )  # fmt: skip
    await env.producer.send_and_wait(names.events, b"[]", key="junk")
    only_in_redis = _expired("r1")
    await env.redis.hset(outcome_key(f"{TEST_MCH_ID}:r1"), mapping={"event": only_in_redis})
    target = f"{env.settings.topic_prefix}repair"
    admin = AIOKafkaAdminClient(bootstrap_servers=env.settings.kafka_bootstrap_servers)
    await admin.start()
    try:
        from aiokafka.admin import NewTopic  # noqa: PLC0415

        await admin.create_topics([NewTopic(target, 2, 1)])
    finally:
        await admin.close()

    code, _, _ = await env.run(replay, "replay")
    assert code == EXIT_USAGE
    before = await env.ends(names.events)
    code, out, err = await env.run(replay, "replay", "--merchant", TEST_MCH_ID, "--dry-run")
    assert code == EXIT_OK
    assert sum(line.startswith("would replay ") for line in out.splitlines()) == 2
    assert "1 repeats of one id dropped" in out
    assert "skipped" in err
    assert await env.ends(names.events) == before

    code, out, _ = await env.run(replay, "replay", "--merchant", TEST_MCH_ID, "--to", target)
    assert code == EXIT_OK, out
    replayed = await env.read(target)
    originals = {r.key: r for r in await env.read(names.events) if r.key != b"junk"}
    assert len(replayed) == 2
    for record in replayed:
        assert record.value == originals[record.key].value
        assert list(record.headers) == list(CLOUDEVENTS_HEADERS)
        event = orjson.loads(record.value)
        assert event["id"] == event_id(event["type"], TEST_MCH_ID, event["data"]["mch_order"])

    code, out, _ = await env.run(replay, "replay", "--order", f"{TEST_MCH_ID}:r1", "--to", target)
    assert code == EXIT_OK, out
    assert "1 taken from Redis" in out
    (from_redis,) = [r for r in await env.read(target) if r.key == f"{TEST_MCH_ID}:r1".encode()]
    assert from_redis.value == only_in_redis
    code, out, _ = await env.run(replay, "replay", "--order", f"{TEST_MCH_ID}:none")
    assert "no event for" in out
    assert "1 orders without an event" in out
    admin = AIOKafkaAdminClient(bootstrap_servers=env.settings.kafka_bootstrap_servers)
    await admin.start()
    try:
        await admin.delete_topics([target])
    finally:
        await admin.close()
