"""The order book against a real Redis: recording is idempotent, never overwrites a settled
order, and the sweeper's claim/reschedule/expire steps keep their promises."""

from __future__ import annotations

import asyncio
import uuid
from typing import TYPE_CHECKING

import pytest

from shared.adapters.order_book import OrderBook, expired_marker_key, order_record_key
from shared.clock import ManualClock
from shared.domain.orders import OrderConflictError, OrderRecord, OrderState
from shared.domain.sweep import SweepSchedule
from shared.protocol.models import CreateOrderRequest
from tests.support.redis_db import clean_db, pending_index

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

    from redis.asyncio import Redis

pytestmark = pytest.mark.integration

CREATED = 1_700_000_000
BOOK_DB = 11  # a database of its own: the pending index is one key for the whole book


@pytest.fixture
async def redis(redis_url: str) -> AsyncIterator[Redis]:
    async with clean_db(redis_url, BOOK_DB) as client:
        yield client


def _order(mch_order: str | None = None, amt: int = 10_000) -> OrderRecord:
    return OrderRecord(
        mch_id="m1", mch_order=mch_order or uuid.uuid4().hex[:16], amt=amt, pay_type=10,
        created_at=CREATED,
    )  # fmt: skip


def _book(redis: Redis, clock: ManualClock, ttl: int = 0) -> OrderBook:
    return OrderBook(redis, clock, schedule=SweepSchedule(expiry=3600.0), record_ttl=ttl)


async def test_recording_stores_the_record_and_indexes_it_by_first_sweep(redis: Redis) -> None:
    """A new order is pending, readable, and due in the index at its first scheduled query."""
    book = _book(redis, ManualClock(), ttl=1000)
    order = _order()
    assert await book.record(order) is True
    assert await book.get(order.mch_id, order.mch_order) == order
    assert await pending_index(redis).score(order.order_key.encode()) == CREATED + 90.0
    assert 0 < await redis.ttl(order_record_key(order.mch_id, order.mch_order)) <= 1000


async def test_recording_twice_changes_nothing(redis: Redis) -> None:
    """The same order recorded again (a redelivered message, a retried create) is a no-op."""
    book = _book(redis, ManualClock())
    order = _order()
    await book.record_pending(order)
    await pending_index(redis).add(order.order_key.encode(), 5.0)  # the sweeper moved it meanwhile
    assert await book.record(order) is False
    assert await pending_index(redis).score(order.order_key.encode()) == 5.0


async def test_a_settled_order_is_never_overwritten(redis: Redis) -> None:
    """After the workers settled it, recording the order again keeps it settled and unindexed."""
    book = _book(redis, ManualClock())
    order = _order()
    await book.record_pending(order)
    key = order_record_key(order.mch_id, order.mch_order)
    # What the workers' outcome script does:
    await redis.hset(key, mapping={"state": "settled", "outcome": "paynotify.payment.succeeded"})
    await pending_index(redis).remove(order.order_key.encode())
    await book.record_pending(order)
    entry = await book.entry(order.mch_id, order.mch_order)
    assert entry is not None
    assert entry.record.state is OrderState.SETTLED
    assert entry.outcome == "paynotify.payment.succeeded"
    assert await pending_index(redis).score(order.order_key.encode()) is None


async def test_a_different_amount_under_the_same_number_is_a_conflict(redis: Redis) -> None:
    """Reusing an order number with another amount raises and keeps the first record."""
    book = _book(redis, ManualClock())
    order = _order()
    await book.record_pending(order)
    with pytest.raises(OrderConflictError) as caught:
        await book.record_pending(_order(order.mch_order, amt=99))
    assert caught.value.fields == ("amt",)
    assert await book.get(order.mch_id, order.mch_order) == order


async def test_concurrent_recordings_create_one_record(redis: Redis) -> None:
    """Twenty simultaneous recordings of one order: exactly one reports it created."""
    book = _book(redis, ManualClock())
    order = _order()
    results = await asyncio.gather(*(book.record(order) for _ in range(20)))
    assert results.count(True) == 1


async def test_a_create_order_request_can_be_recorded(redis: Redis) -> None:
    """The platform client hands its CreateOrderRequest to record_pending directly."""
    book = _book(redis, ManualClock())
    request = CreateOrderRequest(
        pay_type=10, mch_id="m1", mch_order=uuid.uuid4().hex[:16], amt=2500, remark="r",
        created_at=CREATED, client_ip="127.0.0.1", notify_url="http://127.0.0.1/notify",
    )  # fmt: skip
    await book.record_pending(request)
    assert await book.get("m1", request.mch_order) == OrderRecord(
        "m1", request.mch_order, 2500, 10, CREATED
    )


async def test_mark_failed_only_touches_pending_orders(redis: Redis) -> None:
    """A refused order becomes failed and leaves the index; a settled one stays settled."""
    book = _book(redis, ManualClock())
    refused, settled = _order(), _order()
    for order in (refused, settled):
        await book.record_pending(order)
    await redis.hset(order_record_key("m1", settled.mch_order), "state", "settled")
    await book.mark_failed("m1", refused.mch_order, "NoChannelAvailable(112)")
    await book.mark_failed("m1", settled.mch_order, "NoChannelAvailable(112)")
    entry = await book.entry("m1", refused.mch_order)
    assert entry is not None
    assert entry.record.state is OrderState.FAILED
    assert entry.reason == "NoChannelAvailable(112)"
    assert await pending_index(redis).score(refused.order_key.encode()) is None
    assert (await book.get("m1", settled.mch_order)).state is OrderState.SETTLED  # type: ignore[union-attr]
    await book.mark_failed("m1", "never-recorded", "x")
    assert await redis.exists(order_record_key("m1", "never-recorded")) == 0


async def test_claims_hide_due_orders_from_a_second_claimer(redis: Redis) -> None:
    """Only due orders are claimed, each by one claimer, and they come back after the hold."""
    clock = ManualClock(start=CREATED + 100)
    book = _book(redis, clock)
    due, later = _order(), _order()
    await book.record_pending(due)
    await book.record_pending(later)
    await pending_index(redis).add(later.order_key.encode(), CREATED + 500)
    first, second = await asyncio.gather(
        book.claim_due(hold=30, limit=10), book.claim_due(hold=30, limit=10)
    )
    assert sorted([*first, *second]) == [due.order_key]
    clock.advance(31)
    assert await book.claim_due(hold=30, limit=10) == [due.order_key]


async def test_reschedule_counts_queries_and_leaves_settled_orders_out(redis: Redis) -> None:
    """A pending order gets its new time and counters; a settled one is not put back."""
    book = _book(redis, ManualClock())
    pending, settled = _order(), _order()
    for order in (pending, settled):
        await book.record_pending(order)
    assert await book.reschedule(pending.order_key, 1234.0, queried=True, failed=True)
    assert await book.reschedule(pending.order_key, 1300.0, queried=True, failed=True)
    entry = await book.entry("m1", pending.mch_order)
    assert entry is not None
    assert (entry.sweep_attempts, entry.sweep_failures) == (2, 2)
    assert await book.reschedule(pending.order_key, 1400.0, queried=True, failed=False)
    entry = await book.entry("m1", pending.mch_order)
    assert entry is not None
    assert (entry.sweep_attempts, entry.sweep_failures) == (3, 0)
    assert await pending_index(redis).score(pending.order_key.encode()) == 1400.0

    await redis.hset(order_record_key("m1", settled.mch_order), "state", "settled")
    await pending_index(redis).remove(settled.order_key.encode())
    assert not await book.reschedule(settled.order_key, 1500.0, queried=True, failed=False)
    assert await pending_index(redis).score(settled.order_key.encode()) is None


async def test_expiry_is_emitted_once_and_marks_the_order(redis: Redis) -> None:
    """begin_expire says 'emit' once; after finish_expire it says 'gone'; a crash in between
    ('emitting' left behind) gets 'emit' again so the event is not lost."""
    book = _book(redis, ManualClock(), ttl=500)
    order = _order()
    await book.record_pending(order)
    assert await book.begin_expire(order) == "emit"
    assert await book.begin_expire(order) == "emit"  # the first attempt never confirmed
    assert 0 < await redis.ttl(expired_marker_key("m1", order.mch_order)) <= 500
    await book.finish_expire(order)
    assert await redis.get(expired_marker_key("m1", order.mch_order)) == b"emitted"
    assert (await book.get("m1", order.mch_order)).state is OrderState.EXPIRED  # type: ignore[union-attr]
    assert await pending_index(redis).score(order.order_key.encode()) is None
    assert await book.begin_expire(order) == "gone"


async def test_a_confirmed_marker_blocks_a_second_event(redis: Redis) -> None:
    """If the marker says 'emitted' while the record is still pending, nothing is re-sent."""
    book = _book(redis, ManualClock())
    order = _order()
    await book.record_pending(order)
    await redis.set(expired_marker_key("m1", order.mch_order), "emitted")
    assert await book.begin_expire(order) == "done"


async def test_a_transfers_asked_sum_is_kept_once(redis: Redis) -> None:
    """Issue 10, hole 2: the sum the create-order answer asked a transfer's payer for is kept
    in the record (the decision needs it); a different sum later is refused and changes nothing;
    an order never recorded gets no record from it."""
    book = _book(redis, ManualClock())
    await book.record_pending(OrderRecord("m1", "t-1", 10_000, 44, 1_700_000_000))
    await book.record_transfer_amount("m1", "t-1", 9_987)
    await book.record_transfer_amount("m1", "t-1", 9_987)  # the same again: fine
    with pytest.raises(OrderConflictError):
        await book.record_transfer_amount("m1", "t-1", 1)
    record = await book.get("m1", "t-1")
    assert record is not None
    assert record.transfer_amt == 9_987
    await book.record_transfer_amount("m1", "never-recorded", 5)
    assert await book.get("m1", "never-recorded") is None


async def test_an_order_recorded_with_its_transfer_sum_keeps_it(redis: Redis) -> None:
    book = _book(redis, ManualClock())
    await book.record_pending(
        OrderRecord("m1", "t-2", 10_000, 42, 1_700_000_000, transfer_amt=10_013)
    )
    record = await book.get("m1", "t-2")
    assert record is not None
    assert record.transfer_amt == 10_013
