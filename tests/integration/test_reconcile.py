"""The reconciler on real Redis and Kafka: one outcome per payment, written once, replayed as is.

The platform's order query is scripted here (a plain object answering what each test needs), so
each rule can be driven directly; the sandbox platform drives the same code in tests/e2e.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import time
import uuid
from dataclasses import replace
from typing import TYPE_CHECKING

import pytest

from shared import bootstrap
from shared.adapters.kafka import CallbackEnvelope, TopicSink, start_producer
from shared.adapters.order_book import OrderBook, order_record_key
from shared.adapters.outcomes import OutcomeStore, lock_key, outcome_key
from shared.clock import SystemClock
from shared.domain.decision import requery_schedule
from shared.domain.orders import OrderRecord
from shared.merchants import parse_merchants
from shared.protocol.catalog import PayTypeCatalog
from shared.protocol.errors import PlatformUnavailable
from shared.protocol.payment import PaymentReport, PaymentStatus, report_fields
from shared.protocol.signing import signed
from shared.service.settle import Reconciler, Settlement, Work
from shared.settings import Settings
from tests.conftest import TEST_KEY
from tests.support.fakes import ScriptedPlatform
from tests.support.pipeline_checks import read_json
from tests.support.redis_db import open_redis, pending_index, retry_set

if TYPE_CHECKING:
    from redis.asyncio import Redis

    from shared.protocol.models import OrderQueryAnswer

pytestmark = pytest.mark.integration

MCH = "t9awtvk6dn"
_seq = itertools.count()


def another_process(reconciler: Reconciler, redis: Redis) -> Reconciler:
    """The same reconciler in a process that has published nothing yet (its outcome store
    remembers what this process published until Redis has the marks)."""
    store = OutcomeStore(redis, outcome_ttl_seconds=3600, lock_ttl_ms=5000)
    return replace(reconciler, store=store)


def report(
    order: str, *, amt: int = 1000, mch_amt: int = 1000, status: int = 2, **extra
) -> PaymentReport:
    paid_at = extra.pop("success_at", int(time.time()) - 60)  # inside the replay window
    return PaymentReport(
        mch_id=MCH,
        pay_type=extra.pop("pay_type", 10),
        mch_order=order,
        amt=amt,
        mch_amt=mch_amt,
        amt_type="cny",
        status=PaymentStatus(status),
        created_at=1_700_000_000,
        success_at=paid_at if status == 2 else None,
        origin_order=extra.pop("origin_order", None),
        call=None,
        sign_type="md5",
    )


def work_for(r: PaymentReport, **kw) -> Work:
    envelope = CallbackEnvelope(
        fields=signed(report_fields(r), TEST_KEY),
        key_id="sha256:test",
        received_at=1_700_000_061.0,
        peer="127.0.0.1",
        delivery_id=uuid.uuid4().hex,
        source="notification",
    )
    return Work(envelope=envelope, origin=f"test@{next(_seq)}", **kw)


@pytest.fixture
async def env(kafka_bootstrap: str, redis_url: str, fresh_topic):
    events_topic = await fresh_topic("events", partitions=1)
    dlq_topic = await fresh_topic("dlq", partitions=1)
    settings = Settings(kafka_bootstrap_servers=kafka_bootstrap, redis_url=redis_url)
    producer = await start_producer(settings)
    redis = open_redis(redis_url)
    platform = ScriptedPlatform()
    store = OutcomeStore(redis, outcome_ttl_seconds=3600, lock_ttl_ms=5000)
    reconciler = Reconciler(
        store=store,
        platform=platform,
        merchants=parse_merchants({"merchants": {MCH: {"keys": [TEST_KEY]}}}),
        events=TopicSink(producer, events_topic),
        dlq=TopicSink(producer, dlq_topic),
        pay_types=PayTypeCatalog.documented(),
        policy="required",
        schedule=requery_schedule(0.001),
        clock=SystemClock(),
        min_retry_delay=0.0,
    )
    book = OrderBook(redis, SystemClock())
    try:
        yield reconciler, platform, book, redis, (events_topic, dlq_topic)
    finally:
        await producer.stop()
        await redis.aclose()


def unique_order() -> str:
    return f"o{uuid.uuid4().hex[:16]}"


async def test_confirmed_payment_succeeds_once_and_settles_the_record(env, kafka_bootstrap) -> None:
    """Paid, confirmed, amounts agree: one succeeded event; the order leaves the pending index."""
    reconciler, platform, book, redis, (events, _) = env
    order = unique_order()
    await book.record_pending(OrderRecord(MCH, order, 1000, 10, 1_700_000_000))
    platform.answers[order] = report(order)

    assert await reconciler.handle(work_for(report(order))) is Settlement.PUBLISHED
    (event,) = await read_json(kafka_bootstrap, events, 1)
    assert event["type"] == "paynotify.payment.succeeded"
    assert event["subject"] == f"{MCH}:{order}"
    assert event["data"]["amt"] == 1000
    record = await book.get(MCH, order)
    assert record is not None
    assert record.state == "settled"
    assert await pending_index(redis).score(f"{MCH}:{order}".encode()) is None


async def test_redelivery_republishes_the_recorded_event_until_marked(env, kafka_bootstrap) -> None:
    """A duplicate in the same process publishes nothing; a redelivery to another process before
    `published` is marked re-sends the same bytes, not a new decision; after marking it is a
    duplicate and costs no platform query."""
    reconciler, platform, book, redis, (events, _) = env
    order = unique_order()
    await book.record_pending(OrderRecord(MCH, order, 1000, 10, 1_700_000_000))
    platform.answers[order] = report(order)
    await reconciler.handle(work_for(report(order)))
    # In the same process, a duplicate is recognised before `published` reaches Redis.
    assert await reconciler.handle(work_for(report(order))) is Settlement.DUPLICATE
    # A process that crashed before marking it: the next one (which has not seen it) re-sends
    # the recorded event, even though the platform now says something else.
    reconciler = another_process(reconciler, redis)
    platform.answers[order] = report(order, status=1)
    assert await reconciler.handle(work_for(report(order))) is Settlement.REPUBLISHED
    first, second = await read_json(kafka_bootstrap, events, 2)
    assert first == second
    await reconciler.store.mark_published([f"{MCH}:{order}"])
    calls = len(platform.calls)
    assert await reconciler.handle(work_for(report(order))) is Settlement.DUPLICATE
    assert len(platform.calls) == calls


async def test_an_outcome_cannot_be_decided_twice(env, kafka_bootstrap) -> None:
    """If another worker wrote an outcome while this one's lock had lapsed, the write is refused
    and the existing outcome is what gets published."""
    reconciler, platform, book, redis, (_events, _) = env
    order = unique_order()
    await book.record_pending(OrderRecord(MCH, order, 1000, 10, 1_700_000_000))
    platform.answers[order] = report(order)
    store = reconciler.store
    state = await store.begin(f"{MCH}:{order}", MCH, order)
    # Another worker, its lock long expired, decided a mismatch first.
    await redis.delete(lock_key(f"{MCH}:{order}"))
    other = await store.begin(f"{MCH}:{order}", MCH, order)
    kept = await store.decide(
        f"{MCH}:{order}",
        other.token,
        event_type="paynotify.payment.amount_mismatch",
        event_id="first-id",
        event=b'{"type":"paynotify.payment.amount_mismatch"}',
        decided_at=1.0,
        settle_record=None,
    )
    assert kept.event_id == "first-id"
    refused = await store.decide(
        f"{MCH}:{order}",
        state.token,
        event_type="paynotify.payment.succeeded",
        event_id="second-id",
        event=b"{}",
        decided_at=2.0,
        settle_record=None,
    )
    assert refused.event_id == "first-id"
    assert refused.type == "paynotify.payment.amount_mismatch"
    stored = await redis.hget(outcome_key(f"{MCH}:{order}"), "type")
    assert stored == b"paynotify.payment.amount_mismatch"


async def test_unconfirmed_only_after_every_requery(env, kafka_bootstrap) -> None:
    """A paid claim the platform never confirms is re-queried over the whole schedule, through
    the durable retry set, and only then decided `unconfirmed`, never `succeeded`."""
    reconciler, platform, book, redis, (events, _) = env
    order = unique_order()
    await book.record_pending(OrderRecord(MCH, order, 1000, 10, 1_700_000_000))
    platform.answers[order] = report(order, status=1)
    work = work_for(report(order))
    settlements = []
    for _ in range(20):
        settlement = await reconciler.handle(work)
        settlements.append(settlement)
        if settlement is not Settlement.DEFERRED:
            break
        members = await retry_set(redis).members()
        mine = [m for m in members if order.encode() in m]
        assert len(mine) == 1
        await retry_set(redis).remove(mine[0])
        work = Work.from_retry(mine[0])
    assert settlements.count(Settlement.DEFERRED) == len(reconciler.schedule)
    assert settlements[-1] is Settlement.PUBLISHED
    (event,) = await read_json(kafka_bootstrap, events, 1)
    assert event["type"] == "paynotify.payment.unconfirmed"
    assert event["data"]["reason"] == "platform_unpaid"
    # A suspected forgery leaves the order pending: the sweeper may still find a real payment.
    record = await book.get(MCH, order)
    assert record is not None
    assert record.state == "pending"


async def test_transient_failures_retry_then_dead_letter(env, kafka_bootstrap) -> None:
    """An unreachable platform defers the work; past the horizon it goes to the DLQ with its
    reason, and no outcome is written."""
    reconciler, platform, _book, redis, (_events, dlq) = env
    order = unique_order()
    platform.answers[order] = PlatformUnavailable("connection refused")
    work = work_for(report(order))
    for _ in range(len(reconciler.schedule)):
        assert await reconciler.handle(work) is Settlement.DEFERRED
        work = work.__class__(
            envelope=work.envelope, attempts=work.attempts + 1, requeries=0, origin=work.origin
        )
    assert await reconciler.handle(work) is Settlement.DEAD_LETTERED
    (letter,) = await read_json(kafka_bootstrap, dlq, 1)
    assert letter["reason"] == "retries_exhausted"
    assert letter["payload"]["fields"]["mch_order"] == order
    assert await redis.exists(outcome_key(f"{MCH}:{order}")) == 0
    assert await redis.exists(lock_key(f"{MCH}:{order}")) == 0


async def test_unpaid_notification_has_no_outcome(env) -> None:
    """Status 1 is acknowledged and decides nothing (no query, no Redis state)."""
    reconciler, platform, _book, _redis, _ = env
    order = unique_order()
    assert await reconciler.handle(work_for(report(order, status=1))) is Settlement.NO_OUTCOME
    assert platform.calls == []


async def test_invalid_fields_are_dead_lettered(env, kafka_bootstrap) -> None:
    """A message whose fields do not validate is not dropped: it goes to the DLQ with why."""
    reconciler, _platform, _book, _redis, (_, dlq) = env
    work = work_for(report(unique_order()))
    bad = Work(
        envelope=CallbackEnvelope(
            fields=signed({**work.envelope.fields, "amt": "-5"}, TEST_KEY),
            key_id="k",
            received_at=0.0,
            peer=None,
            delivery_id="d",
            source="notification",
        )
    )
    assert await reconciler.handle(bad) is Settlement.DEAD_LETTERED
    (letter,) = await read_json(kafka_bootstrap, dlq, 1)
    assert letter["reason"] == "invalid_fields"
    assert "amt" in letter["detail"]


async def test_a_corrupt_order_record_dead_letters_and_frees_the_lock(env, kafka_bootstrap) -> None:
    """A half-written record in the order book is not this worker's to guess about: the message
    goes to the DLQ with the reason, the lock is freed, and the worker goes on."""
    reconciler, platform, _book, redis, (_, dlq) = env
    order = unique_order()
    await redis.hset(order_record_key(MCH, order), mapping={"mch_id": MCH, "amt": "not-a-number"})
    platform.answers[order] = report(order)
    assert await reconciler.handle(work_for(report(order))) is Settlement.DEAD_LETTERED
    (letter,) = await read_json(kafka_bootstrap, dlq, 1)
    assert letter["reason"] == "corrupt_order_record"
    assert await redis.exists(lock_key(f"{MCH}:{order}")) == 0
    assert platform.calls == []


# --- Trust and faults (issue 10): each test below failed on the code before its fix ------------


def forged(r: PaymentReport) -> Work:
    """A message as a topic writer without the merchant's key could put it on the topic."""
    work = work_for(r)
    fields = {**work.envelope.fields, "sign": "f" * 32}
    return Work(envelope=replace(work.envelope, fields=fields), origin=work.origin)


async def test_a_forged_envelope_changes_nothing_and_the_genuine_one_then_succeeds(
    env, kafka_bootstrap
) -> None:
    """Hole 4: a wrong-signature message claiming 5 li used to record a permanent
    amount_mismatch, and the genuine notification was then a duplicate. Now it is dead-lettered
    as bad_signature before any state is read or written."""
    reconciler, platform, book, redis, (events, dlq) = env
    order = unique_order()
    await book.record_pending(OrderRecord(MCH, order, 1000, 10, 1_700_000_000))
    platform.answers[order] = report(order)

    assert await reconciler.handle(forged(report(order, amt=5, mch_amt=5))) is (
        Settlement.DEAD_LETTERED
    )
    (letter,) = await read_json(kafka_bootstrap, dlq, 1)
    assert letter["reason"] == "bad_signature"
    assert "f" * 32 not in letter["detail"]
    assert platform.calls == []
    assert await redis.exists(outcome_key(f"{MCH}:{order}"), lock_key(f"{MCH}:{order}")) == 0

    assert await reconciler.handle(work_for(report(order))) is Settlement.PUBLISHED
    (event,) = await read_json(kafka_bootstrap, events, 1)
    assert event["type"] == "paynotify.payment.succeeded"


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        ({"source": "somebody"}, "unknown_source"),
        ({"fields": {"mch_id": "nobody", "mch_order": "o1", "sign": "0" * 32}}, "unknown_merchant"),
    ],
)
async def test_an_envelope_from_an_unknown_source_or_merchant_is_refused(
    env, kafka_bootstrap, change, reason
) -> None:
    reconciler, platform, _book, _redis, (_events, dlq) = env
    work = work_for(report(unique_order()))
    bad = Work(envelope=replace(work.envelope, **change), origin=work.origin)
    assert await reconciler.handle(bad) is Settlement.DEAD_LETTERED
    (letter,) = await read_json(kafka_bootstrap, dlq, 1)
    assert letter["reason"] == reason
    assert platform.calls == []


async def test_a_query_sourced_envelope_verifies_like_a_notification(env, kafka_bootstrap) -> None:
    """The sweeper forwards the platform's signed answer: it settles; a tampered one does not."""
    reconciler, platform, book, _redis, (events, dlq) = env
    order = unique_order()
    await book.record_pending(OrderRecord(MCH, order, 1000, 10, 1_700_000_000))
    platform.answers[order] = report(order)
    work = work_for(report(order))
    query = Work(envelope=replace(work.envelope, source="query"), origin="sweeper")
    tampered = {**query.envelope.fields, "amt": "999"}
    refused = Work(envelope=replace(query.envelope, fields=tampered), origin="sweeper")

    assert await reconciler.handle(refused) is Settlement.DEAD_LETTERED
    assert await reconciler.handle(query) is Settlement.PUBLISHED
    (event,) = await read_json(kafka_bootstrap, events, 1)
    assert event["data"]["source"] == "query"
    (letter,) = await read_json(kafka_bootstrap, dlq, 1)
    assert letter["reason"] == "bad_signature"


async def test_an_unexpected_error_dead_letters_the_message_and_the_next_one_settles(
    env, kafka_bootstrap
) -> None:
    """Hole 1's principle: an error nobody foresaw (here the platform stand-in raises
    RuntimeError) sends that message to the DLQ as internal_error; it never stops the worker."""
    reconciler, platform, book, _redis, (events, dlq) = env
    bad, good = unique_order(), unique_order()
    for order in (bad, good):
        await book.record_pending(OrderRecord(MCH, order, 1000, 10, 1_700_000_000))
    platform.answers[bad] = RuntimeError("boom")
    platform.answers[good] = report(good)

    assert await reconciler.settle(work_for(report(bad))) is Settlement.DEAD_LETTERED
    assert await reconciler.settle(work_for(report(good))) is Settlement.PUBLISHED
    (letter,) = await read_json(kafka_bootstrap, dlq, 1)
    assert letter["reason"] == "internal_error"
    assert letter["detail"] == "RuntimeError: boom"
    assert letter["payload"]["fields"]["mch_order"] == bad
    (event,) = await read_json(kafka_bootstrap, events, 1)
    assert event["data"]["mch_order"] == good
    assert reconciler.stats["internal_error"] == 1


class _StubbornRenewals:
    """The real store, except that a renewal in flight swallows every cancellation for 5 s (as
    a Redis call did after a long pause) before it goes on."""

    def __init__(self, store: OutcomeStore) -> None:
        self._store = store
        self.renewals = 0

    def __getattr__(self, name: str):
        return getattr(self._store, name)

    async def renew(self, order_key: str, token: str) -> bool:
        self.renewals += 1
        loop = asyncio.get_running_loop()
        until = loop.time() + 5
        while (left := until - loop.time()) > 0:
            with contextlib.suppress(asyncio.CancelledError):  # the cancel is lost
                await asyncio.sleep(left)
        return False  # (touches no connection the test's teardown closes)


async def test_a_renewal_that_loses_its_cancel_does_not_hang_the_job(env, kafka_bootstrap) -> None:
    """Hole 7: the job used to await its renewer without a bound; a renewer that missed its
    cancel then hung the job (and renewed its lock) for good. Now it is stopped by a flag and
    awaited with a bound, and the job settles."""
    reconciler, _platform, book, _redis, _ = env
    order = unique_order()
    await book.record_pending(OrderRecord(MCH, order, 1000, 10, 1_700_000_000))
    stubborn = _StubbornRenewals(reconciler.store)
    slow = replace(reconciler, store=stubborn, renew_every=0.05, renew_timeout=0.3)

    class SlowPlatform(ScriptedPlatform):
        async def query_order(self, mch_id: str, mch_order: str) -> OrderQueryAnswer:
            await asyncio.sleep(0.2)  # the renewer is inside renew() when the answer comes
            return await super().query_order(mch_id, mch_order)

    slow.platform = SlowPlatform(answers={order: report(order)})
    async with asyncio.timeout(3):  # the old code waited the full 5 s of the lost cancels
        assert await slow.handle(work_for(report(order))) is Settlement.PUBLISHED
    assert stubborn.renewals >= 1
    assert slow.stats["renewer_stuck"] == 1


async def test_waiting_for_a_dead_workers_lock_gives_way_when_the_partition_goes(
    env, kafka_bootstrap
) -> None:
    """Hole 9: a job waiting for another worker's lock held up the revocation of every
    partition for up to 35 s. Now it gives way at once: not settled, nothing deferred."""
    reconciler, platform, book, redis, _ = env
    order = unique_order()
    await book.record_pending(OrderRecord(MCH, order, 1000, 10, 1_700_000_000))
    platform.answers[order] = report(order)
    await redis.set(lock_key(f"{MCH}:{order}"), "a-killed-worker", px=30_000)
    gate = asyncio.Event()
    work = replace(work_for(report(order)), give_way=gate)

    handling = asyncio.create_task(reconciler.handle(work))
    await asyncio.sleep(0.3)
    assert not handling.done()  # waiting for the lock
    gate.set()
    async with asyncio.timeout(2):
        assert await handling is Settlement.GAVE_WAY
    assert platform.calls == []
    assert all(order.encode() not in m for m in await retry_set(redis).members())


async def test_a_replay_after_the_outcome_expired_is_still_a_duplicate(
    env, kafka_bootstrap
) -> None:
    """Hole 3: the outcome expired before the order record, and a settled record was not taken
    as decided, so an old notification replayed then gave a second succeeded event."""
    reconciler, platform, book, redis, (events, _) = env
    order = unique_order()
    await book.record_pending(OrderRecord(MCH, order, 1000, 10, 1_700_000_000))
    platform.answers[order] = report(order)
    assert await reconciler.handle(work_for(report(order))) is Settlement.PUBLISHED
    await redis.delete(outcome_key(f"{MCH}:{order}"))  # its retention ran out
    reconciler = another_process(reconciler, redis)

    assert await reconciler.handle(work_for(report(order))) is Settlement.DUPLICATE
    assert len(await read_json(kafka_bootstrap, events, 1)) == 1
    assert platform.calls == [order]  # asked once, for the first delivery only
    assert await redis.exists(lock_key(f"{MCH}:{order}")) == 0


async def test_a_notification_older_than_the_replay_window_is_refused_as_stale(
    env, kafka_bootstrap
) -> None:
    """Hole 3: with nothing recorded for it, a notification paid two days ago is a replay:
    dead-lettered as `stale` (audited, counted), never `succeeded`; the sweeper's report of the
    same payment (the platform's word now) is still settled."""
    reconciler, platform, book, redis, (events, dlq) = env
    order = unique_order()
    await book.record_pending(OrderRecord(MCH, order, 1000, 10, 1_700_000_000))
    old = report(order, success_at=int(time.time()) - 2 * 86_400)
    platform.answers[order] = old

    assert await reconciler.handle(work_for(old)) is Settlement.DEAD_LETTERED
    (letter,) = await read_json(kafka_bootstrap, dlq, 1)
    assert letter["reason"] == "stale"
    assert platform.calls == []
    assert await redis.exists(outcome_key(f"{MCH}:{order}"), lock_key(f"{MCH}:{order}")) == 0
    assert reconciler.stats["stale"] == 1

    swept = work_for(old)
    swept = Work(envelope=replace(swept.envelope, source="query"), origin="sweeper")
    assert await reconciler.handle(swept) is Settlement.PUBLISHED
    (event,) = await read_json(kafka_bootstrap, events, 1)
    assert event["type"] == "paynotify.payment.succeeded"


def test_outcomes_outlive_order_records() -> None:
    """Retention: an outcome (kept from its decision) never expires before the order record
    (kept from its recording for the order's expiry plus the retention)."""
    redis = open_redis("redis://127.0.0.1:1/0")  # never asked: only the TTLs are read
    for scale in (1.0, 0.01):
        settings = Settings(time_scale=scale)
        book = bootstrap.order_book(settings, redis, SystemClock())
        ledger = bootstrap.outcome_ledger(settings, redis)
        assert ledger._ttl >= book._record_ttl > 0


async def test_a_dead_letter_too_large_for_the_dlq_goes_without_its_payload(
    env, kafka_bootstrap
) -> None:
    """Something waiting cannot fix (the broker refuses a record over its size limit) must not
    stall the message for ever: the dead letter goes out without its payload, saying so."""
    reconciler, _platform, _book, _redis, (_, dlq) = env
    work = work_for(report(unique_order()))
    huge = {**work.envelope.fields, "sign": "0" * 32, "padding": "x" * 1_500_000}
    big = Work(envelope=replace(work.envelope, fields=huge), origin=work.origin)
    async with asyncio.timeout(30):
        assert await reconciler.settle(big) is Settlement.DEAD_LETTERED
    (letter,) = await read_json(kafka_bootstrap, dlq, 1)
    assert letter["reason"] == "bad_signature"
    assert "payload" not in letter
    assert "MessageSizeTooLargeError" in letter["payload_omitted"]
