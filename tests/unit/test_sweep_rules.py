"""The sweeper's rules (workers.sweeper.Sweeper) on the ports' in-memory fakes: the order book,
the lease, the platform and the producer. No service; a second or two per test, as the sweep
schedule here is seconds long.

The same rules are proved on Redis and Kafka by tests/integration/test_order_book_sweeper.py;
the fakes pass the adapters' contract suites (tests/contract).
"""

from __future__ import annotations

import asyncio
import time
from typing import TYPE_CHECKING

import orjson
import pytest

from shared.adapters.order_book import SWEEPER_LEASE_KEY
from shared.clock import SystemClock
from shared.domain.events import SOURCE_QUERY, EventType
from shared.domain.orders import OrderRecord, OrderState
from shared.domain.sweep import SweepSchedule
from shared.protocol.payment import PaymentReport, PaymentStatus
from shared.service.sweep import SweepOrder
from tests.support.fakes import CapturingProducer, MemoryLocks, MemoryOrderBook, ScriptedPlatform
from workers.sweeper import Sweeper, SweeperLimits

if TYPE_CHECKING:
    from collections.abc import Callable

pytestmark = pytest.mark.unit

MCH = "m1"
SCHEDULE = SweepSchedule(
    expiry=1.5, first_check=0.2, max_gap=0.4, settle_gap=0.3, retry_gap=0.1, hopeless_gap=0.1
)
CALLBACKS, EVENTS, DLQ = "callbacks", "events", "dlq"


class World:
    def __init__(self, merchants: frozenset[str] | None = None) -> None:
        self.clock = SystemClock()
        self.book = MemoryOrderBook(self.clock, schedule=SCHEDULE)
        self.locks = MemoryLocks(self.clock)
        self.platform = ScriptedPlatform()
        self.producer = CapturingProducer()
        orders = SweepOrder(
            self.book, self.platform, self.producer, clock=self.clock, schedule=SCHEDULE,
            rate=1000.0, callbacks_topic=CALLBACKS, events_topic=EVENTS, dlq_topic=DLQ,
            merchants=merchants,
        )  # fmt: skip
        self.sweeper = Sweeper(
            orders, self.locks,
            limits=SweeperLimits(concurrency=8, lease_ttl=1.0, claim_hold=5.0,
                                 poll=0.02),
        )  # fmt: skip

    async def record(self, mch_order: str) -> OrderRecord:
        record = OrderRecord(MCH, mch_order, 10_000, 10, int(time.time()))
        await self.book.record(record)
        return record

    async def run_until(self, condition: Callable[[], bool], seconds: float = 10.0) -> None:
        task = asyncio.create_task(self.sweeper.run())
        try:
            async with asyncio.timeout(seconds):
                while not condition():
                    await asyncio.sleep(0.01)
        finally:
            await self.sweeper.stop()
            async with asyncio.timeout(10):
                await task


def paid(mch_order: str, status: PaymentStatus = PaymentStatus.PAID) -> PaymentReport:
    now = int(time.time())
    return PaymentReport(
        mch_id=MCH, pay_type=10, mch_order=mch_order, amt=10_000, mch_amt=10_000,
        amt_type="cny", status=status, created_at=now,
        success_at=now if status is PaymentStatus.PAID else None, origin_order=None, call=None,
        sign_type="md5",
    )  # fmt: skip


async def test_a_paid_order_is_forwarded_as_a_query_report_and_stays_pending() -> None:
    world = World()
    record = await world.record("o-paid")
    world.platform.answers["o-paid"] = paid("o-paid")

    await world.run_until(lambda: bool(world.producer.on(CALLBACKS)))
    (key, value), *_ = world.producer.on(CALLBACKS)
    envelope = orjson.loads(value)
    assert key == record.order_key
    assert envelope["source"] == SOURCE_QUERY
    assert envelope["fields"]["mch_order"] == "o-paid"
    assert "code" not in envelope["fields"]  # the answer's envelope is not the report's
    entry = await world.book.entry(MCH, "o-paid")
    assert entry is not None
    assert entry.record.state is OrderState.PENDING  # the workers settle it, not the sweeper
    assert entry.sweep_attempts >= 1
    assert world.producer.on(EVENTS) == []


async def test_an_order_unpaid_at_expiry_gets_one_expired_event() -> None:
    world = World()
    record = await world.record("o-unpaid")
    world.platform.answers["o-unpaid"] = paid("o-unpaid", PaymentStatus.UNPAID)

    await world.run_until(lambda: bool(world.producer.on(EVENTS)))
    await world.run_until(lambda: True)  # another leader, later: nothing more to emit
    await asyncio.sleep(SCHEDULE.max_gap)
    (key, value), *more = world.producer.on(EVENTS)
    assert more == []
    assert key == record.order_key
    assert orjson.loads(value)["type"] == EventType.ORDER_EXPIRED
    entry = await world.book.entry(MCH, "o-unpaid")
    assert entry is not None
    assert entry.record.state is OrderState.EXPIRED
    assert record.order_key not in world.book.pending
    assert world.producer.on(CALLBACKS) == []


async def test_an_order_whose_merchant_has_no_key_is_never_queried_and_given_up() -> None:
    world = World(merchants=frozenset({"another-merchant"}))
    record = await world.record("o-nokey")

    await world.run_until(lambda: bool(world.producer.on(DLQ)), seconds=20)
    assert world.platform.calls == []
    ((key, value),) = world.producer.on(DLQ)
    assert key == record.order_key
    assert orjson.loads(value)["reason"] == "unknown_merchant"
    entry = await world.book.entry(MCH, "o-nokey")
    assert entry is not None
    assert entry.sweep_stopped == "unknown_merchant"
    assert record.order_key not in world.book.pending


async def test_an_unexpected_error_on_one_order_is_dead_lettered_and_the_others_go_on() -> None:
    world = World()
    await world.record("o-boom")
    await world.record("o-fine")
    world.platform.answers["o-boom"] = RuntimeError("a bug in the client")
    world.platform.answers["o-fine"] = paid("o-fine")

    await world.run_until(lambda: bool(world.producer.on(DLQ) and world.producer.on(CALLBACKS)))
    assert {orjson.loads(v)["reason"] for _, v in world.producer.on(DLQ)} == {"internal_error"}
    assert {k for k, _ in world.producer.on(DLQ)} == {f"{MCH}:o-boom"}
    assert {k for k, _ in world.producer.on(CALLBACKS)} == {f"{MCH}:o-fine"}
    assert world.sweeper.stats["internal_error"] >= 1


async def test_no_order_is_swept_while_another_instance_holds_the_lease() -> None:
    world = World()
    await world.record("o-waiting")
    world.platform.answers["o-waiting"] = paid("o-waiting")
    other = await world.locks.acquire(SWEEPER_LEASE_KEY, 60_000, holder="other")
    assert other is not None

    task = asyncio.create_task(world.sweeper.run())
    await asyncio.sleep(SCHEDULE.first_check + 0.3)
    assert world.platform.calls == []
    assert not world.sweeper.leading
    await world.locks.release(SWEEPER_LEASE_KEY, other)
    async with asyncio.timeout(10):
        while not world.producer.on(CALLBACKS):
            await asyncio.sleep(0.01)
    await world.sweeper.stop()
    async with asyncio.timeout(10):
        await task


@pytest.mark.parametrize("rate", [0.0, -1.0, float("inf"), float("nan")])
def test_a_sweep_rate_that_is_not_positive_and_finite_is_refused_at_start_up(rate: float) -> None:
    """The query rate is the use case's own pacing: refused when it is built, not at the first
    query (it used to be checked by the loop's SweeperLimits, which no longer carries it)."""
    with pytest.raises(ValueError, match="sweep rate"):
        SweepOrder(
            MemoryOrderBook(SystemClock()), ScriptedPlatform(), CapturingProducer(),
            clock=SystemClock(), schedule=SCHEDULE, rate=rate,
        )  # fmt: skip
