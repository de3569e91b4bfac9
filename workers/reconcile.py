"""Settle one callbacks message: dedupe, query the platform, decide, write once, publish.

`Reconciler.handle` returns only when the message is settled: its outcome published, nothing to
do (unpaid, duplicate), deferred durably to the retry set, or dead-lettered with its reason.
Infrastructure failures (Redis, Kafka) raise; the caller retries the whole step.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
from dataclasses import dataclass, field, replace
from enum import StrEnum
from typing import TYPE_CHECKING, Any, Protocol

import orjson

from shared.adapters.kafka import CallbackEnvelope
from shared.adapters.order_book import CorruptRecordError
from shared.adapters.outcomes import Busy, Decided, Locked, OutcomeStore, RecordedOutcome
from shared.domain.decision import (
    NoOutcome,
    Notice,
    QueryAnswer,
    RecordsPolicy,
    RequeryLater,
    decide,
    record_order,
)
from shared.domain.events import EventType, PaymentReconciled, encode, event_id
from shared.logs import get_logger
from shared.protocol.errors import (
    AnswerSignatureError,
    MalformedAnswer,
    OrderNotFound,
    PlatformError,
    UnknownMerchant,
)
from shared.protocol.fields import FieldError
from shared.protocol.payment import PaymentReport, parse_payment_report

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Container, Sequence

    from shared.clock import Clock
    from shared.protocol.models import OrderQueryAnswer

# Outcomes after which the order book stops chasing the order. `unconfirmed` leaves it pending
# (the sweeper may still find a genuine payment); a repeat payment never touches its origin order.
_SETTLING = frozenset({EventType.PAYMENT_SUCCEEDED, EventType.PAYMENT_AMOUNT_MISMATCHED})


# Answers that did not verify or parse may come from an impostor: retried as if unreachable.
_SUSPECT_ANSWERS = (AnswerSignatureError, MalformedAnswer)


class Settlement(StrEnum):
    PUBLISHED = "published"  # a new outcome was decided and published
    REPUBLISHED = "republished"  # the recorded outcome had not been marked published yet
    DUPLICATE = "duplicate"  # the payment's outcome was already published
    NO_OUTCOME = "no_outcome"  # status 1 (unpaid): nothing to decide
    DEFERRED = "deferred"  # scheduled in the durable retry set
    DEAD_LETTERED = "dead_lettered"  # on paynotify.dlq with its reason


class OrderQuery(Protocol):
    async def query_order(self, mch_id: str, mch_order: str) -> OrderQueryAnswer: ...


class Sink(Protocol):
    """Publishes to one topic and returns after the broker's ack."""

    async def publish(self, key: str, value: bytes) -> None: ...


@dataclass(frozen=True, slots=True)
class Work:
    """A callbacks message, or a deferred one coming back from the retry set."""

    envelope: CallbackEnvelope
    attempts: int = 0  # transient failures so far
    requeries: int = 0  # re-queries already done because the platform did not confirm
    origin: str = ""  # where it came from, for logs and dead letters ("topic/partition@offset")

    def to_retry(self) -> bytes:
        return orjson.dumps(
            {
                "envelope": self.envelope,
                "attempts": self.attempts,
                "requeries": self.requeries,
                "origin": self.origin,
            }
        )

    @classmethod
    def from_retry(cls, member: bytes) -> Work:
        document = orjson.loads(member)
        return cls(
            envelope=CallbackEnvelope.decode(orjson.dumps(document["envelope"])),
            attempts=int(document["attempts"]),
            requeries=int(document["requeries"]),
            origin=str(document.get("origin", "")),
        )


def dead_letter(reason: str, detail: str, origin: str, payload: bytes, at: float) -> bytes:
    """A DLQ record: enough to understand and replay the message, never a key."""
    document: dict[str, Any] = {
        "reason": reason,
        "detail": detail,
        "origin": origin,
        "failed_at": at,
    }
    try:
        document["payload"] = orjson.loads(payload)
    except orjson.JSONDecodeError:
        document["payload_base64"] = base64.b64encode(payload).decode()
    return orjson.dumps(document)


@dataclass
class Reconciler:
    store: OutcomeStore
    platform: OrderQuery
    events: Sink
    dlq: Sink
    pay_types: Container[int]
    policy: RecordsPolicy
    schedule: Sequence[float]  # re-query delays (shared.domain.decision.requery_schedule)
    clock: Clock
    min_retry_delay: float = 1.0  # seconds, already scaled
    lock_wait: float = 35.0  # seconds to wait for another worker's lock before deferring
    renew_every: float = 10.0  # seconds between lock renewals while the platform answers
    published: set[str] = field(default_factory=set)  # order keys published since the last commit

    def __post_init__(self) -> None:
        self._log = get_logger("worker")

    async def handle(self, work: Work) -> Settlement:
        envelope = work.envelope
        try:
            report = parse_payment_report(envelope.fields, self.pay_types)
        except FieldError as exc:
            return await self._dead_letter(work, "invalid_fields", str(exc), None)
        if not report.paid:
            return Settlement.NO_OUTCOME
        try:
            state = await self._begin(report)
        except CorruptRecordError as exc:
            return await self._dead_letter(work, "corrupt_order_record", str(exc), report)
        if isinstance(state, Decided):
            return await self._replay(report, state.outcome)
        if isinstance(state, Busy):
            return await self._defer(work, report, None, self.min_retry_delay, transient=True)
        return await self._reconcile(work, report, state)

    async def _begin(self, report: PaymentReport) -> Decided | Locked | Busy:
        """Take the lock, or find the outcome; wait a while for another worker's lock."""
        deadline = self.clock.monotonic() + self.lock_wait
        pause = 0.02
        while True:
            state = await self.store.begin(report.order_key, report.mch_id, record_order(report))
            if not isinstance(state, Busy) or self.clock.monotonic() >= deadline:
                return state
            await self.clock.sleep(pause)
            pause = min(pause * 2, 1.0)

    async def _replay(self, report: PaymentReport, outcome: RecordedOutcome) -> Settlement:
        # `published` reaches Redis in batches; until then this process remembers what it sent.
        if outcome.published or report.order_key in self.published:
            return Settlement.DUPLICATE
        await self._publish(report.order_key, outcome)
        return Settlement.REPUBLISHED

    async def _reconcile(self, work: Work, report: PaymentReport, lock: Locked) -> Settlement:
        try:
            async with self._renewing(report.order_key, lock.token):
                answer = await self.platform.query_order(report.mch_id, report.mch_order)
            queried = QueryAnswer(report=answer.report, queried_at=int(self.clock.time()))
        except OrderNotFound:
            queried = QueryAnswer(report=None, queried_at=int(self.clock.time()))
        except UnknownMerchant as exc:
            await self.store.release(report.order_key, lock.token)
            return await self._dead_letter(work, "unknown_merchant", str(exc), report)
        except PlatformError as exc:
            if not exc.transient and not isinstance(exc, _SUSPECT_ANSWERS):
                await self.store.release(report.order_key, lock.token)
                return await self._dead_letter(work, f"platform_{exc.code}", str(exc), report)
            return await self._defer(work, report, lock.token, None, transient=True, why=exc)

        notice = Notice(
            report=report,
            source="query" if work.envelope.source == "query" else "notification",
            delivery_ids=(work.envelope.delivery_id,),
            key_id=work.envelope.key_id,
        )
        decision = decide(
            notice,
            queried,
            lock.record,
            policy=self.policy,
            requeries_done=work.requeries,
            schedule=self.schedule,
        )
        if isinstance(decision, NoOutcome):  # pragma: no cover - paid reports only reach here
            await self.store.release(report.order_key, lock.token)
            return Settlement.NO_OUTCOME
        if isinstance(decision, RequeryLater):
            later = replace(work, requeries=decision.attempt)
            return await self._defer(later, report, lock.token, decision.delay, transient=False)
        return await self._settle(report, lock, decision)

    async def _settle(
        self, report: PaymentReport, lock: Locked, outcome: PaymentReconciled
    ) -> Settlement:
        now = self.clock.time()
        settles = outcome.type in _SETTLING and not report.repeat and lock.record is not None
        recorded = await self.store.decide(
            report.order_key,
            lock.token,
            event_type=outcome.type,
            event_id=event_id(outcome.type, report.mch_id, report.mch_order),
            event=encode(outcome, time=now),
            decided_at=now,
            settle_record=(report.mch_id, report.mch_order) if settles else None,
        )
        if recorded.type != outcome.type:
            # The lock expired during a pause and another worker decided first: its outcome
            # stands, and is the one published again here.
            self._log.warning(
                "outcome_conflict_refused",
                order=report.order_key,
                kept=recorded.type,
                refused=outcome.type,
            )
        await self._publish(report.order_key, recorded)
        self._log.info("payment_settled", order=report.order_key, outcome=recorded.type)
        return Settlement.PUBLISHED

    async def _publish(self, order_key: str, outcome: RecordedOutcome) -> None:
        await self.events.publish(order_key, outcome.event)
        self.published.add(order_key)

    async def _defer(
        self,
        work: Work,
        report: PaymentReport,
        token: str | None,
        delay: float | None,
        *,
        transient: bool,
        why: Exception | None = None,
    ) -> Settlement:
        if transient:
            if work.attempts >= len(self.schedule):
                if token is not None:
                    await self.store.release(report.order_key, token)
                detail = str(why) if why is not None else "lock held past the retry horizon"
                return await self._dead_letter(work, "retries_exhausted", detail, report)
            delay = self.schedule[work.attempts]
            work = replace(work, attempts=work.attempts + 1)
        wait = max(delay or 0.0, self.min_retry_delay)
        await self.store.defer(report.order_key, token, self.clock.time() + wait, work.to_retry())
        self._log.info(
            "reconciliation_deferred",
            order=report.order_key,
            delay=round(wait, 3),
            attempts=work.attempts,
            requeries=work.requeries,
            why=type(why).__name__ if why is not None else ("requery" if not transient else "busy"),
        )
        return Settlement.DEFERRED

    async def _dead_letter(
        self, work: Work, reason: str, detail: str, report: PaymentReport | None
    ) -> Settlement:
        key = report.order_key if report is not None else work.envelope.delivery_id
        record = dead_letter(
            reason, detail, work.origin, work.envelope.encode(), at=self.clock.time()
        )
        await self.dlq.publish(key, record)
        self._log.warning("message_dead_lettered", order=key, reason=reason, origin=work.origin)
        return Settlement.DEAD_LETTERED

    @contextlib.asynccontextmanager
    async def _renewing(self, order_key: str, token: str) -> AsyncIterator[None]:
        """Keep the lock alive while the platform takes its time."""

        async def renew() -> None:
            while True:
                await self.clock.sleep(self.renew_every)
                if not await self.store.renew(order_key, token):
                    self._log.warning("lock_lost", order=order_key)
                    return

        task = asyncio.create_task(renew())
        try:
            yield
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
