"""The rules of settling a notification (shared.service.settle.Reconciler, the use case), on the
ports' in-memory fakes with a manual clock: no service, milliseconds per test.

The same rules are proved on the real Redis and Kafka by tests/integration/test_reconcile.py;
the fakes pass the adapters' contract suite (tests/contract).
"""

from __future__ import annotations

import asyncio
import itertools
import uuid
from dataclasses import replace

import orjson
import pytest

from shared.adapters.kafka import CallbackEnvelope
from shared.clock import ManualClock
from shared.domain.decision import requery_schedule
from shared.domain.events import EventType
from shared.domain.orders import OrderState
from shared.merchants import parse_merchants
from shared.ports import Decided, Locked
from shared.protocol.catalog import PayTypeCatalog
from shared.protocol.errors import PlatformUnavailable
from shared.protocol.models import OrderQueryAnswer
from shared.protocol.payment import PaymentReport, PaymentStatus, report_fields
from shared.protocol.signing import signed
from shared.service.settle import Reconciler, Settlement, Work
from tests.conftest import TEST_KEY
from tests.support.fakes import CapturingSink, MemoryLedger, ScriptedPlatform, pending_record

pytestmark = pytest.mark.unit

MCH = "t9awtvk6dn"
START = 1_700_000_000.0
_seq = itertools.count()


class World:
    """A reconciler wired to fakes, and the fakes to look at."""

    def __init__(self) -> None:
        self.clock = ManualClock(START)
        self.ledger = MemoryLedger(self.clock, outcome_ttl_seconds=86_400, lock_ttl_ms=30_000)
        self.platform = ScriptedPlatform()
        self.events = CapturingSink()
        self.dlq = CapturingSink()
        self.reconciler = Reconciler(
            store=self.ledger,
            platform=self.platform,
            merchants=parse_merchants({"merchants": {MCH: {"keys": [TEST_KEY]}}}),
            events=self.events,
            dlq=self.dlq,
            pay_types=PayTypeCatalog.documented(),
            policy="required",
            schedule=requery_schedule(0.001),
            clock=self.clock,
            min_retry_delay=0.0,
            lock_wait=0.0,  # another worker's lock defers at once (no waiting on the clock)
        )

    async def handle(self, work: Work) -> Settlement:
        return await self.reconciler.handle(work)

    def event_types(self) -> list[str]:
        return [orjson.loads(value)["type"] for _, value in self.events.published]

    def dead_letter_reasons(self) -> list[str]:
        return [orjson.loads(value)["reason"] for _, value in self.dlq.published]

    async def outcome(self, order: str) -> Decided | None:
        state = await self.ledger.begin(f"{MCH}:{order}", MCH, order)
        if isinstance(state, Locked):
            await self.ledger.release(f"{MCH}:{order}", state.token)
            return None
        assert isinstance(state, Decided)
        return state


def report(
    order: str,
    *,
    amt: int = 1000,
    status: int = 2,
    success_at: int = int(START) - 60,  # inside the replay window
    origin_order: str | None = None,
) -> PaymentReport:
    return PaymentReport(
        mch_id=MCH,
        pay_type=10,
        mch_order=order,
        amt=amt,
        mch_amt=1000,
        amt_type="cny",
        status=PaymentStatus(status),
        created_at=int(START) - 120,
        success_at=success_at if status == 2 else None,
        origin_order=origin_order,
        call=None,
        sign_type="md5",
    )


def work_for(r: PaymentReport, *, key: str = TEST_KEY, source: str = "notification") -> Work:
    envelope = CallbackEnvelope(
        fields=signed(report_fields(r), key),
        key_id="sha256:test",
        received_at=START,
        peer="127.0.0.1",
        delivery_id=uuid.uuid4().hex,
        source=source,
    )
    return Work(envelope=envelope, origin=f"test@{next(_seq)}")


def order_number() -> str:
    return f"o{next(_seq)}"


async def test_a_confirmed_payment_is_decided_once_published_once_and_settles_its_record() -> None:
    world, order = World(), order_number()
    world.ledger.put_record(pending_record(MCH, order))
    world.platform.answers[order] = report(order)

    assert await world.handle(work_for(report(order))) is Settlement.PUBLISHED
    assert world.event_types() == [EventType.PAYMENT_SUCCEEDED]
    assert world.events.keys() == [f"{MCH}:{order}"]
    assert world.ledger.records[f"{MCH}:{order}"].state is OrderState.SETTLED
    # Redelivered before and after the commit's flush: a duplicate, no second query.
    assert await world.handle(work_for(report(order))) is Settlement.DUPLICATE
    await world.ledger.flush_published()
    assert await world.handle(work_for(report(order))) is Settlement.DUPLICATE
    assert world.platform.calls == [order]
    assert len(world.events.published) == 1


async def test_a_recorded_outcome_not_yet_marked_is_republished_exactly_as_recorded() -> None:
    """Another process decided and crashed before marking it published: the recorded event is
    sent again byte for byte, whatever the platform says now, and without asking it."""
    world, order = World(), order_number()
    locked = await world.ledger.begin(f"{MCH}:{order}", MCH, order)
    assert isinstance(locked, Locked)
    recorded = await world.ledger.decide(
        f"{MCH}:{order}", locked.token, event_type=EventType.PAYMENT_SUCCEEDED,
        event_id="e1", event=b'{"type": "paynotify.payment.succeeded", "id": "e1"}',
        decided_at=START, settle_record=None,
    )  # fmt: skip
    world.platform.answers[order] = report(order, status=1)

    assert await world.handle(work_for(report(order))) is Settlement.REPUBLISHED
    assert world.events.published == [(f"{MCH}:{order}", recorded.event)]
    assert world.platform.calls == []


async def test_the_first_outcome_stands_when_another_worker_decided_meanwhile() -> None:
    """The lock expired during a long query and another worker decided first: its outcome is
    the one kept and published, never a second one."""
    world, order = World(), order_number()
    world.ledger.put_record(pending_record(MCH, order))
    kept = b'{"type": "paynotify.payment.amount_mismatch", "id": "first"}'

    class DecidedMeanwhile(ScriptedPlatform):
        async def query_order(self, mch_id: str, mch_order: str) -> OrderQueryAnswer:
            await world.ledger.decide(
                f"{mch_id}:{mch_order}", "another-worker",
                event_type=EventType.PAYMENT_AMOUNT_MISMATCHED, event_id="first", event=kept,
                decided_at=START, settle_record=None,
            )  # fmt: skip
            return OrderQueryAnswer(report=report(mch_order), key_id="sha256:test", raw={})

    world.reconciler.platform = DecidedMeanwhile()
    assert await world.handle(work_for(report(order))) is Settlement.PUBLISHED
    assert world.events.published == [(f"{MCH}:{order}", kept)]


async def test_an_outage_of_the_platform_defers_until_the_retry_horizon_then_dead_letters() -> None:
    world, order = World(), order_number()
    world.ledger.put_record(pending_record(MCH, order))
    world.platform.answers[order] = PlatformUnavailable("connection refused")
    work = work_for(report(order))

    assert await world.handle(work) is Settlement.DEFERRED
    ((member, due),) = world.ledger.retries.items()
    deferred = Work.from_retry(member)
    assert deferred.attempts == 1
    assert due == START + world.reconciler.schedule[0]
    assert await world.outcome(order) is None  # nothing decided, the lock released

    exhausted = replace(work, attempts=len(world.reconciler.schedule))
    assert await world.handle(exhausted) is Settlement.DEAD_LETTERED
    assert world.dead_letter_reasons() == ["retries_exhausted"]
    assert world.events.published == []
    assert await world.outcome(order) is None


async def test_a_payment_the_platform_never_confirms_is_requeried_then_unconfirmed() -> None:
    """Not found at the platform (103): re-queried on the schedule; after the last re-query the
    outcome is `unconfirmed` (a suspected forgery), never a success."""
    world, order = World(), order_number()
    world.ledger.put_record(pending_record(MCH, order))
    work = work_for(report(order))

    assert await world.handle(work) is Settlement.DEFERRED
    ((member, _),) = world.ledger.retries.items()
    assert Work.from_retry(member).requeries == 1
    last = replace(work, requeries=len(world.reconciler.schedule))
    assert await world.handle(last) is Settlement.PUBLISHED
    assert world.event_types() == [EventType.PAYMENT_UNCONFIRMED]
    # Unconfirmed leaves the order pending: the sweeper may still find a genuine payment.
    assert world.ledger.records[f"{MCH}:{order}"].state is OrderState.PENDING


@pytest.mark.parametrize(
    ("mutate", "reason"),
    [
        (lambda w: work_for(report(w), key="not-the-merchants-key"), "bad_signature"),
        (lambda w: replace(work_for(report(w)), envelope=_unknown_merchant(w)), "unknown_merchant"),
        (lambda w: work_for(report(w), source="elsewhere"), "unknown_source"),
    ],
)
async def test_an_envelope_that_does_not_verify_is_dead_lettered_and_changes_nothing(
    mutate, reason: str
) -> None:
    world, order = World(), order_number()
    world.ledger.put_record(pending_record(MCH, order))
    world.platform.answers[order] = report(order)

    assert await world.handle(mutate(order)) is Settlement.DEAD_LETTERED
    assert world.dead_letter_reasons() == [reason]
    assert world.platform.calls == []
    assert await world.outcome(order) is None
    assert world.ledger.records[f"{MCH}:{order}"].state is OrderState.PENDING


def _unknown_merchant(order: str) -> CallbackEnvelope:
    fields = signed({**report_fields(report(order)), "mch_id": "nobody"}, TEST_KEY)
    return CallbackEnvelope(fields, "sha256:test", START, "127.0.0.1", "d", "notification")


async def test_a_repeat_payment_is_repeated_and_leaves_its_origin_order_alone() -> None:
    world, origin, repeat = World(), order_number(), order_number()
    world.ledger.put_record(replace(pending_record(MCH, origin), state=OrderState.SETTLED))
    world.platform.answers[repeat] = report(repeat, origin_order=origin)

    assert await world.handle(work_for(report(repeat, origin_order=origin))) is (
        Settlement.PUBLISHED
    )
    assert world.event_types() == [EventType.PAYMENT_REPEATED]
    assert world.events.keys() == [f"{MCH}:{repeat}"]
    assert world.ledger.records[f"{MCH}:{origin}"].state is OrderState.SETTLED


async def test_a_notification_older_than_the_replay_window_with_nothing_recorded_is_stale() -> None:
    world, order = World(), order_number()
    world.ledger.put_record(pending_record(MCH, order))
    old = int(START - world.reconciler.replay_window - 1)
    world.platform.answers[order] = report(order, success_at=old)

    assert await world.handle(work_for(report(order, success_at=old))) is Settlement.DEAD_LETTERED
    assert world.dead_letter_reasons() == ["stale"]
    assert world.events.published == []
    assert world.platform.calls == []


async def test_a_settled_record_counts_as_decided_after_its_outcome_expired() -> None:
    """A replay once the outcome's retention ran out: the order record still says settled, so
    the payment is not decided again."""
    world, order = World(), order_number()
    world.ledger.put_record(replace(pending_record(MCH, order), state=OrderState.SETTLED))
    world.platform.answers[order] = report(order)

    assert await world.handle(work_for(report(order))) is Settlement.DUPLICATE
    assert world.events.published == []
    assert world.platform.calls == []


async def test_another_workers_lock_defers_the_message_without_deciding() -> None:
    world, order = World(), order_number()
    world.ledger.put_record(pending_record(MCH, order))
    world.platform.answers[order] = report(order)
    held = await world.ledger.begin(f"{MCH}:{order}", MCH, order)
    assert isinstance(held, Locked)

    assert await world.handle(work_for(report(order))) is Settlement.DEFERRED
    assert world.platform.calls == []
    assert world.events.published == []
    assert len(world.ledger.retries) == 1


class _CountingRenewals:
    """The fake ledger, counting the lock renewals it is asked for."""

    def __init__(self, ledger: MemoryLedger) -> None:
        self._ledger = ledger
        self.renewals = 0

    def __getattr__(self, name: str) -> object:
        return getattr(self._ledger, name)

    async def renew(self, order_key: str, token: str) -> bool:
        self.renewals += 1
        return await self._ledger.renew(order_key, token)


class _TimedPlatform(ScriptedPlatform):
    """Answers after `delay` seconds of loop time, noting the tasks running while it waits."""

    def __init__(self, delay: float) -> None:
        super().__init__()
        self.delay = delay
        self.tasks_while_waiting: set[asyncio.Task[object]] = set()

    async def query_order(self, mch_id: str, mch_order: str) -> OrderQueryAnswer:
        await asyncio.sleep(self.delay)
        self.tasks_while_waiting = asyncio.all_tasks()
        return await super().query_order(mch_id, mch_order)


@pytest.mark.parametrize(
    ("delay", "renewals"), [(0.0, range(1)), (0.01, range(1)), (0.23, range(3, 5))]
)
async def test_the_lock_is_renewed_every_period_while_the_platform_takes_its_time(
    delay: float, renewals: range
) -> None:
    """A query outlasting `renew_every` (50 ms here) renews the lock at each period (at 50,
    100, 150 and 200 ms for 230 ms: 3 allowed for a slow machine's late timers); an answer
    inside the first period renews nothing, and no renewer task runs beside the query (the
    renewer is only a timer until it is due)."""
    world, order = World(), order_number()
    world.ledger.put_record(pending_record(MCH, order))
    counting = _CountingRenewals(world.ledger)
    platform = _TimedPlatform(delay)
    platform.answers[order] = report(order)
    reconciler = replace(world.reconciler, store=counting, platform=platform, renew_every=0.05)

    assert await reconciler.handle(work_for(report(order))) is Settlement.PUBLISHED
    assert counting.renewals in renewals
    renewers = [t for t in platform.tasks_while_waiting if t.get_name().startswith("renew:")]
    assert len(renewers) == (1 if counting.renewals else 0)
    assert reconciler.stats["renewer_stuck"] == 0
