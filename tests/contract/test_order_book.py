"""The order book's contract (shared.ports.Orders), run on the Redis adapter
(shared.adapters.order_book.OrderBook) and on the in-memory fake (tests/support/fakes.py), so
the fake that the sweeper's unit tests use cannot drift from the real thing.

Both run on a manual clock far in the past, so the real index's members of other tests (due
at today's time) are never due here; every order has a merchant id of the test's own.
"""

from __future__ import annotations

import uuid
from dataclasses import replace
from typing import TYPE_CHECKING

import pytest

from shared.adapters.order_book import OrderBook
from shared.clock import ManualClock
from shared.domain.orders import OrderConflictError, OrderRecord, OrderState
from shared.domain.sweep import SweepMark
from tests.support.fakes import MemoryOrderBook
from tests.support.redis_db import open_redis

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

    from shared.ports import Orders

NOW = 1_000_000.0  # the clock of both backends: long before any real order


@pytest.fixture
async def book(redis_or_memory: str | None) -> AsyncIterator[tuple[Orders, ManualClock]]:
    clock = ManualClock(NOW)
    if redis_or_memory is None:
        yield MemoryOrderBook(clock), clock
        return
    redis = open_redis(redis_or_memory)
    try:
        yield OrderBook(redis, clock), clock
    finally:
        await redis.aclose()


def order(created_at: float = NOW - 10, **changes: object) -> OrderRecord:
    """A new order of a merchant of its own (created `created_at`, so due then)."""
    made = OrderRecord(f"cb{uuid.uuid4().hex[:10]}", "o1", 1000, 10, int(created_at))
    return replace(made, **changes)  # type: ignore[arg-type]


async def test_an_order_is_recorded_once_and_a_different_one_is_refused(
    book: tuple[Orders, ManualClock],
) -> None:
    orders, _ = book
    first = order()
    assert await orders.record(first)
    assert not await orders.record(first)  # the same again: nothing new
    with pytest.raises(OrderConflictError) as refused:
        await orders.record(replace(first, amt=999, pay_type=20))
    assert refused.value.fields == ("amt", "pay_type")
    assert await orders.get(first.mch_id, first.mch_order) == first


async def test_a_transfer_amount_is_kept_once(book: tuple[Orders, ManualClock]) -> None:
    orders, _ = book
    transfer = order(pay_type=44, transfer_amt=1003)
    await orders.record(transfer)
    await orders.record(transfer)  # the same sum again is fine
    with pytest.raises(OrderConflictError) as refused:
        await orders.record(replace(transfer, transfer_amt=1004))
    assert refused.value.fields == ("transfer_amt",)
    recorded = await orders.get(transfer.mch_id, transfer.mch_order)
    assert recorded is not None
    assert recorded.transfer_amt == 1003


async def test_a_recorded_order_is_claimed_when_due_and_hidden_for_the_hold(
    book: tuple[Orders, ManualClock],
) -> None:
    orders, clock = book
    due_now, later = order(NOW - 10), order(NOW + 100)
    await orders.record(due_now)
    await orders.record(later)
    claimed = await orders.claim_due(hold=60, limit=1000)
    assert due_now.order_key in claimed
    assert later.order_key not in claimed
    assert due_now.order_key not in await orders.claim_due(hold=60, limit=1000)  # held
    clock.advance(101)
    claimed = await orders.claim_due(hold=60, limit=1000)
    assert {due_now.order_key, later.order_key} <= set(claimed)  # hold over; later due


async def test_entries_say_what_each_member_holds(book: tuple[Orders, ManualClock]) -> None:
    orders, _ = book
    known = order()
    await orders.record(known)
    stranger = f"cb{uuid.uuid4().hex[:10]}:nobody"
    found = dict(await orders.entries([known.order_key, stranger]))
    entry = found[known.order_key]
    assert entry is not None
    assert not isinstance(entry, Exception)
    assert entry.record == known
    assert (entry.sweep_attempts, entry.sweep_failures, entry.sweep_hopeless) == (0, 0, 0)
    assert found[stranger] is None


async def test_rescheduling_counts_queries_failures_and_answers(
    book: tuple[Orders, ManualClock],
) -> None:
    orders, clock = book
    pending = order()
    member = pending.order_key
    await orders.record(pending)
    assert await orders.reschedule(member, NOW + 50, queried=True, failed=True, hopeless=True)
    assert await orders.reschedule(member, NOW + 50, queried=True, failed=True)
    entry = await orders.entry(pending.mch_id, pending.mch_order)
    assert entry is not None
    assert (entry.sweep_attempts, entry.sweep_failures, entry.sweep_hopeless) == (2, 2, 1)
    assert member not in await orders.claim_due(hold=60, limit=1000)  # due at NOW + 50
    assert await orders.reschedule(member, NOW + 50, queried=True, failed=False)  # an answer
    entry = await orders.entry(pending.mch_id, pending.mch_order)
    assert entry is not None
    assert (entry.sweep_attempts, entry.sweep_failures, entry.sweep_hopeless) == (3, 0, 0)
    clock.advance(50)
    assert member in await orders.claim_due(hold=60, limit=1000)


async def test_an_order_no_longer_pending_is_not_rescheduled(
    book: tuple[Orders, ManualClock],
) -> None:
    orders, clock = book
    failed = order()
    await orders.record(failed)
    await orders.mark_failed(failed.mch_id, failed.mch_order, "refused by the platform")
    entry = await orders.entry(failed.mch_id, failed.mch_order)
    assert entry is not None
    assert (entry.record.state, entry.reason) == (OrderState.FAILED, "refused by the platform")
    assert not await orders.reschedule(failed.order_key, NOW, queried=True, failed=None)
    clock.advance(1000)
    assert failed.order_key not in await orders.claim_due(hold=60, limit=1000)


async def test_giving_up_marks_a_pending_record_and_leaves_the_index(
    book: tuple[Orders, ManualClock],
) -> None:
    orders, clock = book
    hopeless, gone = order(), order()
    await orders.record(hopeless)
    assert await orders.stop_sweeping(hopeless.order_key, "unknown_merchant")
    entry = await orders.entry(hopeless.mch_id, hopeless.mch_order)
    assert entry is not None
    assert (entry.record.state, entry.sweep_stopped) == (OrderState.PENDING, "unknown_merchant")
    assert not await orders.stop_sweeping(gone.order_key, "unknown_merchant")  # no record
    await orders.record(hopeless)  # recorded again: stays out of the index
    clock.advance(1000)
    assert hopeless.order_key not in await orders.claim_due(hold=60, limit=1000)


async def test_a_dropped_member_is_not_claimed(book: tuple[Orders, ManualClock]) -> None:
    orders, _ = book
    dropped = order()
    await orders.record(dropped)
    await orders.drop(dropped.order_key)
    assert dropped.order_key not in await orders.claim_due(hold=60, limit=1000)


async def test_an_expiry_is_emitted_until_confirmed_then_done(
    book: tuple[Orders, ManualClock],
) -> None:
    orders, clock = book
    unpaid = order()
    await orders.record(unpaid)
    assert await orders.begin_expire(unpaid) == "emit"
    assert await orders.begin_expire(unpaid) == "emit"  # not confirmed: emit again
    await orders.finish_expire(unpaid)
    entry = await orders.entry(unpaid.mch_id, unpaid.mch_order)
    assert entry is not None
    assert entry.record.state is OrderState.EXPIRED
    assert await orders.begin_expire(unpaid) == "gone"  # no longer pending
    clock.advance(1000)
    assert unpaid.order_key not in await orders.claim_due(hold=60, limit=1000)


async def test_a_settled_order_is_gone_for_the_expiry(book: tuple[Orders, ManualClock]) -> None:
    orders, _ = book
    failed = order()
    await orders.record(failed)
    await orders.mark_failed(failed.mch_id, failed.mch_order, "x")
    assert await orders.begin_expire(failed) == "gone"


async def test_the_last_sweep_mark_is_kept(book: tuple[Orders, ManualClock]) -> None:
    orders, _ = book
    mark = SweepMark(f"sweeper-{uuid.uuid4().hex[:6]}", NOW, 7)
    await orders.mark_sweep(mark)
    assert await orders.last_sweep() == mark
