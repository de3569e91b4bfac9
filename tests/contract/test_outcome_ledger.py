"""The outcome ledger's contract (shared.ports.OutcomeLedger), run on the Redis adapter and on
the in-memory fake (the arroyo way: one suite, two backends), so the fake that the rules' unit
tests use cannot drift from the real thing.

The fake's cases are unit tests (`-m unit`); the adapter's talk to the session's real Redis
(standalone, or the local cluster with `PAYNOTIFY_TEST_REDIS_CLUSTER=1`) and are integration
tests. Expiry is waited for on Redis (a second or so) and advanced on the fake's clock.
"""

from __future__ import annotations

import asyncio
import uuid
from dataclasses import dataclass
from typing import TYPE_CHECKING

import pytest

from shared.adapters.order_book import OrderBook
from shared.adapters.outcomes import OutcomeStore
from shared.clock import ManualClock, SystemClock
from shared.domain.orders import OrderState
from shared.ports import Busy, Decided, Locked, RecordedOutcome
from tests.support.fakes import MemoryLedger, pending_record
from tests.support.redis_db import open_redis

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Awaitable, Callable

    from shared.domain.orders import OrderRecord
    from shared.ports import OutcomeLedger

MCH = "contract1"
OUTCOME_TTL = 2  # seconds
LOCK_TTL_MS = 300


@dataclass
class Backend:
    ledger: OutcomeLedger
    put_record: Callable[[OrderRecord], Awaitable[None]]
    get_record: Callable[[str, str], Awaitable[OrderRecord | None]]
    advance: Callable[[float], Awaitable[None]]  # let this much time pass


@pytest.fixture
async def backend(redis_or_memory: str | None) -> AsyncIterator[Backend]:
    if redis_or_memory is None:
        clock = ManualClock()
        fake = MemoryLedger(clock, outcome_ttl_seconds=OUTCOME_TTL, lock_ttl_ms=LOCK_TTL_MS)

        async def put(record: OrderRecord) -> None:
            fake.put_record(record)

        async def get(mch_id: str, mch_order: str) -> OrderRecord | None:
            return fake.records.get(f"{mch_id}:{mch_order}")

        async def advance(seconds: float) -> None:
            clock.advance(seconds)

        yield Backend(fake, put, get, advance)
        return
    redis = open_redis(redis_or_memory)
    book = OrderBook(redis, SystemClock())
    store = OutcomeStore(redis, outcome_ttl_seconds=OUTCOME_TTL, lock_ttl_ms=LOCK_TTL_MS)
    try:
        yield Backend(store, book.record_pending, book.get, asyncio.sleep)
    finally:
        await redis.aclose()


def _order() -> str:
    return f"c{uuid.uuid4().hex[:16]}"


async def _decide(
    ledger: OutcomeLedger, order: str, token: str, event_type: str, *, settle: bool = False
) -> RecordedOutcome:
    return await ledger.decide(
        f"{MCH}:{order}",
        token,
        event_type=event_type,
        event_id=f"id-{event_type}",
        event=b'{"type": "%s"}' % event_type.encode(),
        decided_at=1_700_000_100.0,
        settle_record=(MCH, order) if settle else None,
    )


async def _lock(ledger: OutcomeLedger, order: str, record_order: str | None = None) -> Locked:
    state = await ledger.begin(f"{MCH}:{order}", MCH, record_order or order)
    assert isinstance(state, Locked)
    return state


async def test_the_first_begin_locks_and_a_second_finds_it_busy(backend: Backend) -> None:
    order = _order()
    locked = await _lock(backend.ledger, order)
    assert locked.record is None  # no record of the order
    assert isinstance(await backend.ledger.begin(f"{MCH}:{order}", MCH, order), Busy)
    await backend.ledger.release(f"{MCH}:{order}", locked.token)
    await _lock(backend.ledger, order)


async def test_a_release_with_another_token_leaves_the_lock(backend: Backend) -> None:
    order = _order()
    locked = await _lock(backend.ledger, order)
    await backend.ledger.release(f"{MCH}:{order}", locked.token + "x")
    assert isinstance(await backend.ledger.begin(f"{MCH}:{order}", MCH, order), Busy)


async def test_a_lock_expires_unless_renewed_by_its_holder(backend: Backend) -> None:
    order, other = _order(), _order()
    locked = await _lock(backend.ledger, order)
    kept = await _lock(backend.ledger, other)
    assert not await backend.ledger.renew(f"{MCH}:{order}", "not-the-token")
    await backend.advance(LOCK_TTL_MS / 1000 * 0.6)
    assert await backend.ledger.renew(f"{MCH}:{other}", kept.token)
    await backend.advance(LOCK_TTL_MS / 1000 * 0.6)
    assert isinstance(await backend.ledger.begin(f"{MCH}:{other}", MCH, other), Busy)
    again = await _lock(backend.ledger, order)  # the first one expired
    assert again.token != locked.token
    assert not await backend.ledger.renew(f"{MCH}:{order}", locked.token)


async def test_begin_reads_the_merchants_record_of_the_order(backend: Backend) -> None:
    order, origin = _order(), _order()
    await backend.put_record(pending_record(MCH, order, amt=1234))
    await backend.put_record(pending_record(MCH, origin, amt=777))
    locked = await _lock(backend.ledger, order)
    assert locked.record == pending_record(MCH, order, amt=1234)
    # A repeat payment reads its origin order's record.
    repeat = await _lock(backend.ledger, _order(), record_order=origin)
    assert repeat.record == pending_record(MCH, origin, amt=777)


async def test_an_outcome_is_written_once_and_the_first_stands(backend: Backend) -> None:
    order = _order()
    locked = await _lock(backend.ledger, order)
    first = await _decide(backend.ledger, order, locked.token, "paynotify.payment.succeeded")
    assert first == RecordedOutcome(
        "paynotify.payment.succeeded",
        "id-paynotify.payment.succeeded",
        b'{"type": "paynotify.payment.succeeded"}',
        published=False,
    )
    # The lock was released by the decision; a later decision cannot replace the outcome.
    relocked = await backend.ledger.begin(f"{MCH}:{order}", MCH, order)
    assert relocked == Decided(first)
    second = await _decide(backend.ledger, order, "stale-token", "paynotify.payment.failed")
    assert second == first
    assert await backend.ledger.begin(f"{MCH}:{order}", MCH, order) == Decided(first)


async def test_a_decision_settles_the_record_when_asked(backend: Backend) -> None:
    settled, left = _order(), _order()
    for order in (settled, left):
        await backend.put_record(pending_record(MCH, order))
        locked = await _lock(backend.ledger, order)
        await _decide(
            backend.ledger, order, locked.token, "paynotify.payment.succeeded",
            settle=order == settled,
        )  # fmt: skip
    record = await backend.get_record(MCH, settled)
    assert record is not None
    assert record.state is OrderState.SETTLED
    record = await backend.get_record(MCH, left)
    assert record is not None
    assert record.state is OrderState.PENDING


async def test_published_marks_are_noted_then_flushed(backend: Backend) -> None:
    order = _order()
    key = f"{MCH}:{order}"
    locked = await _lock(backend.ledger, order)
    outcome = await _decide(backend.ledger, order, locked.token, "paynotify.payment.succeeded")
    assert not backend.ledger.is_published(key, outcome)
    backend.ledger.note_published(key)
    assert backend.ledger.is_published(key, outcome)  # noted, not yet in the ledger
    state = await backend.ledger.begin(key, MCH, order)
    assert isinstance(state, Decided)
    assert not state.outcome.published
    await backend.ledger.flush_published()
    state = await backend.ledger.begin(key, MCH, order)
    assert isinstance(state, Decided)
    assert state.outcome.published
    assert backend.ledger.is_published(key, state.outcome)


async def test_an_outcome_expires_and_a_mark_does_not_recreate_it(backend: Backend) -> None:
    order = _order()
    key = f"{MCH}:{order}"
    locked = await _lock(backend.ledger, order)
    await _decide(backend.ledger, order, locked.token, "paynotify.payment.succeeded")
    await backend.advance(OUTCOME_TTL + 0.5)
    await backend.ledger.mark_published([key])
    assert isinstance(await backend.ledger.begin(key, MCH, order), Locked)


async def test_deferred_work_is_claimed_when_due_hidden_for_the_lease_then_finished(
    backend: Backend,
) -> None:
    order = _order()
    key = f"{MCH}:{order}"
    locked = await _lock(backend.ledger, order)
    member = f'{{"order": "{order}"}}'.encode()
    now = 1_700_000_000.0
    await backend.ledger.defer(key, locked.token, now + 10, member)
    await _lock(backend.ledger, order)  # deferring released the lock
    assert member not in await backend.ledger.claim_retries(now, 30, 1000)  # not due yet
    assert member in await backend.ledger.claim_retries(now + 10, 30, 1000)
    assert member not in await backend.ledger.claim_retries(now + 20, 30, 1000)  # leased
    assert member in await backend.ledger.claim_retries(now + 41, 30, 1000)  # lease ran out
    await backend.ledger.finish_retry(member)
    assert member not in await backend.ledger.claim_retries(now + 1000, 30, 1000)


async def test_a_claim_returns_at_most_its_limit(backend: Backend) -> None:
    members = [f'{{"n": "{_order()}"}}'.encode() for _ in range(5)]
    now = 1_700_000_000.0
    for member in members:
        await backend.ledger.defer(f"{MCH}:{_order()}", None, now - 1, member)
    claimed = await backend.ledger.claim_retries(now, 30, 2)
    assert len(claimed) <= 2
    assert set(claimed) <= set(members)
    for member in members:
        await backend.ledger.finish_retry(member)
