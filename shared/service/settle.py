"""Settle one callbacks message: dedupe, query the platform, decide, write once, publish.

`Reconciler.handle` returns only when the message is settled: its outcome published, nothing to
do (unpaid, duplicate), deferred durably to the retry set, or dead-lettered with its reason.
Infrastructure failures (Redis, Kafka) raise. `Reconciler.settle` is what consumers call: it
retries those with backoff, bounds every attempt, and dead-letters anything unexpected, so no
single message can stop a partition or the worker.

Nothing on the topic is trusted: every envelope's signature is checked against the merchant's
keys (the ingress's notifications and the sweeper's query answers are both signed by the
platform with those keys) before any state is read or written.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
from collections import Counter
from dataclasses import dataclass, field, replace
from enum import StrEnum
from typing import TYPE_CHECKING

import orjson

from shared.adapters.kafka import CallbackEnvelope, EnvelopeError
from shared.adapters.outages import OUTAGES
from shared.adapters.replication import NotReplicatedError
from shared.domain.decision import (
    DEFAULT_REPLAY_WINDOW_S,
    DEFAULT_TRANSFER_TOLERANCE_LI,
    NoOutcome,
    Notice,
    QueryAnswer,
    RecordsPolicy,
    RequeryLater,
    decide,
    is_stale,
    record_order,
)
from shared.domain.events import (
    SOURCE_NOTIFICATION,
    SOURCE_QUERY,
    EventType,
    PaymentReconciled,
    encode,
    event_id,
    source_of,
)
from shared.domain.orders import CorruptRecordError, OrderState
from shared.logs import get_logger
from shared.platform.retry import OUTAGE_BACKOFF, wait_out
from shared.ports import Busy, Decided, Locked, RecordedOutcome
from shared.protocol.errors import (
    AnswerSignatureError,
    MalformedAnswer,
    OrderNotFound,
    PlatformError,
    UnknownMerchant,
)
from shared.protocol.fields import FieldError
from shared.protocol.models import ENVELOPE_FIELDS
from shared.protocol.payment import PaymentReport, order_fields, parse_payment_report
from shared.protocol.signing import SignatureError, verify
from shared.service.dead_letters import publish_dead_letter
from shared.trace import TraceParent
from shared.trace import parse as trace_parse

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Callable, Container, Mapping, Sequence

    from shared.clock import Clock
    from shared.merchants import Merchant
    from shared.ports import OrderQuery, OutcomeLedger, Sink

# Outcomes after which the order book stops chasing the order. `unconfirmed` leaves it pending
# (the sweeper may still find a genuine payment); a repeat payment never touches its origin order.
_SETTLING = frozenset({EventType.PAYMENT_SUCCEEDED, EventType.PAYMENT_AMOUNT_MISMATCHED})


# Answers that did not verify or parse may come from an impostor: retried as if unreachable.
_SUSPECT_ANSWERS = (AnswerSignatureError, MalformedAnswer)
# A service being away: waited out, never a reason to drop the message or stop the worker.
# Narrower than RedisError/KafkaError: WRONGTYPE or a message too large never go away by waiting.
_OUTAGES = OUTAGES
DETAIL_LIMIT = 200  # characters of an unexpected error's message kept in its dead letter


class Settlement(StrEnum):
    PUBLISHED = "published"  # a new outcome was decided and published
    REPUBLISHED = "republished"  # the recorded outcome had not been marked published yet
    DUPLICATE = "duplicate"  # the payment's outcome was already published
    NO_OUTCOME = "no_outcome"  # status 1 (unpaid): nothing to decide
    DEFERRED = "deferred"  # scheduled in the durable retry set
    DEAD_LETTERED = "dead_lettered"  # on paynotify.dlq with its reason
    GAVE_WAY = "gave_way"  # NOT settled: its partition was revoked; the next owner handles it


@dataclass(frozen=True, slots=True)
class Work:
    """A callbacks message, or a deferred one coming back from the retry set."""

    envelope: CallbackEnvelope
    attempts: int = 0  # transient failures so far
    requeries: int = 0  # re-queries already done because the platform did not confirm
    origin: str = ""  # where it came from, for logs and dead letters ("topic/partition@offset")
    # Set when the message's partition is revoked: waiting for another worker's lock stops at
    # once (the next owner redelivers). Not part of the retry form.
    give_way: asyncio.Event | None = field(default=None, compare=False, repr=False)
    # This worker's span of the notification's trace (shared.trace): the outcome event's
    # `traceparent`. None: the event carries none.
    trace: TraceParent | None = field(default=None, compare=False)

    def to_retry(self) -> bytes:
        document: dict[str, object] = {
            "envelope": self.envelope,
            "attempts": self.attempts,
            "requeries": self.requeries,
            "origin": self.origin,
        }
        if self.trace is not None:
            document["traceparent"] = str(self.trace)
        return orjson.dumps(document)

    @classmethod
    def from_retry(cls, member: bytes) -> Work:
        """Parse a retry-set member strictly, or raise `EnvelopeError` (Redis is not trusted)."""
        try:
            document = orjson.loads(member)
        except orjson.JSONDecodeError:
            raise EnvelopeError("retry entry is not JSON") from None
        if not isinstance(document, dict) or not isinstance(document.get("envelope"), dict):
            raise EnvelopeError("retry entry has no envelope object")
        counts = (document.get("attempts"), document.get("requeries"))
        origin = document.get("origin", "")
        attempts, requeries = (_retry_count(count) for count in counts)
        if not isinstance(origin, str):
            raise EnvelopeError("retry entry origin must be a string")
        traceparent = document.get("traceparent")
        trace = trace_parse(traceparent)
        if traceparent is not None and trace is None:
            raise EnvelopeError("retry entry traceparent is not a W3C trace context")
        envelope = CallbackEnvelope.decode(orjson.dumps(document["envelope"]))
        if "mch_order" not in envelope.fields:
            raise EnvelopeError("retry entry's report has no mch_order")
        return cls(
            envelope=envelope, attempts=attempts, requeries=requeries, origin=origin, trace=trace
        )


def _retry_count(value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= 1000:
        raise EnvelopeError("retry entry counts must be integers from 0 to 1000")
    return value


class _Refused(Exception):  # noqa: N818 - a refusal, not an error of ours
    """An envelope that must not change any state: dead-lettered with `reason`."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason


def _report_fields(envelope: CallbackEnvelope) -> Mapping[str, str]:
    """The report's fields of a verified envelope. A query answer's `code` and `msg` may be signed
    (PAYNOTIFY_ANSWER_SIGN_INCLUDES_ENVELOPE), and are then forwarded with the report; they are
    the answer's, not the report's."""
    if envelope.source != SOURCE_QUERY:
        return envelope.fields
    return {k: v for k, v in envelope.fields.items() if k not in ENVELOPE_FIELDS}


@dataclass
class Reconciler:
    store: OutcomeLedger
    platform: OrderQuery
    merchants: Mapping[str, Merchant]  # whose keys verify every envelope
    events: Sink
    dlq: Sink
    pay_types: Container[int]
    policy: RecordsPolicy
    schedule: Sequence[float]  # re-query delays (shared.domain.decision.requery_schedule)
    clock: Clock
    min_retry_delay: float = 1.0  # seconds, already scaled
    transfer_tolerance: int = DEFAULT_TRANSFER_TOLERANCE_LI  # li above mch_amt (see decide)
    replay_window: float = DEFAULT_REPLAY_WINDOW_S  # seconds (see decision.is_stale)
    lock_wait: float = 35.0  # seconds to wait for another worker's lock before deferring
    renew_every: float = 10.0  # seconds between lock renewals while the platform answers
    renew_timeout: float = 5.0  # bound on one renewal, and on waiting for the renewer to stop
    # Bound on one attempt at a message (lock wait + query + decide + publish); past it the
    # attempt is abandoned (as a crash would) and tried again, then dead-lettered.
    attempt_deadline: float = 90.0
    deadline_attempts: int = 3
    stats: Counter[str] = field(default_factory=Counter)
    random: Callable[[], float] = random.random

    def __post_init__(self) -> None:
        self._log = get_logger("worker")

    async def settle(self, work: Work) -> Settlement:
        """`handle` until the message is settled: outages waited out with backoff, each attempt
        bounded, and an unexpected error dead-lettered as `internal_error`, so that one message
        can never stop its partition (its offset is committed once it is on the DLQ)."""
        outages = overruns = 0
        while True:
            try:
                async with asyncio.timeout(self.attempt_deadline):
                    settlement = await self.handle(work)
            except TimeoutError as exc:  # before _OUTAGES: TimeoutError is an OSError
                overruns += 1
                self.stats["attempt_deadline_exceeded"] += 1
                self._log.error(
                    "attempt_deadline_exceeded", origin=work.origin, attempt=overruns,
                    deadline=self.attempt_deadline,
                )  # fmt: skip
                if overruns >= self.deadline_attempts:
                    return await self._internal_error(work, exc, "deadline_exceeded")
            except _OUTAGES as exc:
                delay = OUTAGE_BACKOFF.backoff(outages, self.random)
                outages += 1
                self.stats["infrastructure_retries"] += 1
                if isinstance(exc, NotReplicatedError):
                    # Written on the primary, not yet on enough replicas: not published; the
                    # retry finds the outcome and waits again (never decides anew).
                    self.stats["outcome_not_replicated"] += 1
                self._log.warning(
                    "settle_retry", origin=work.origin, error=type(exc).__name__,
                    pause=round(delay, 3),
                )  # fmt: skip
                await self.clock.sleep(delay)
            except Exception as exc:  # the one place an unexpected error is handled
                return await self._internal_error(work, exc, "internal_error")
            else:
                self.stats[settlement.value] += 1
                return settlement

    async def _internal_error(self, work: Work, exc: BaseException, reason: str) -> Settlement:
        self.stats[reason] += 1
        self._log.exception("message_failed_unexpectedly", origin=work.origin, reason=reason)
        detail = f"{type(exc).__name__}: {str(exc)[:DETAIL_LIMIT]}".rstrip(": ")
        # Dead-lettering waits out a Kafka outage itself: the message is never dropped.
        return await wait_out(
            lambda: self._dead_letter(work, reason, detail, None),
            errors=_OUTAGES, clock=self.clock, random=self.random,
        )  # fmt: skip

    async def handle(self, work: Work) -> Settlement:  # noqa: PLR0911 - a return per way to settle
        envelope = work.envelope
        try:
            key_id = self._verify(work)
        except _Refused as exc:
            return await self._dead_letter(work, exc.reason, str(exc), None)
        try:
            report = parse_payment_report(_report_fields(envelope), self.pay_types)
        except FieldError as exc:
            return await self._dead_letter(work, "invalid_fields", str(exc), None)
        if not report.paid:
            return Settlement.NO_OUTCOME
        try:
            state = await self._begin(report, work.give_way)
        except CorruptRecordError as exc:
            return await self._dead_letter(work, "corrupt_order_record", str(exc), report)
        if state is None:
            return Settlement.GAVE_WAY
        if isinstance(state, Decided):
            return await self._replay(report, state.outcome)
        if isinstance(state, Busy):
            return await self._defer(work, report, None, self.min_retry_delay, transient=True)
        if (refusal := self._already_or_never(work, report, state)) is not None:
            await self.store.release(report.order_key, state.token)
            if refusal == "decided":
                return Settlement.DUPLICATE
            return await self._dead_letter(work, refusal, "paid longer ago than the replay window, "
                                           "and nothing is recorded about it", report)  # fmt: skip
        return await self._reconcile(work, report, state, key_id)

    def _already_or_never(self, work: Work, report: PaymentReport, lock: Locked) -> str | None:
        """With no outcome kept for the payment: "decided" when the order record says it was
        settled (its outcome expired first: a replay must not decide it again), "stale" for a
        notification paid longer ago than the replay window, else None."""
        record = lock.record
        if record is not None and record.state is OrderState.SETTLED and not report.repeat:
            self.stats["decided_without_outcome"] += 1
            self._log.info("replay_of_settled_order", **order_fields(report.order_key))
            return "decided"
        # The sweeper's query-sourced reports are the platform's word now, whatever their age.
        if work.envelope.source == SOURCE_NOTIFICATION and is_stale(
            report, now=self.clock.time(), window=self.replay_window
        ):
            self.stats["stale"] += 1
            return "stale"
        return None

    def _verify(self, work: Work) -> str:
        """The id of the merchant key the envelope's report verifies under, or `_Refused`.

        Whoever can write to the callbacks topic must not be able to record anything: a forged
        message would otherwise decide the payment (write-once) before the genuine one arrives.
        """
        envelope = work.envelope
        try:  # both sources' reports are signed by the platform with the merchant's key
            source_of(envelope.source)
        except ValueError:
            detail = f"envelope source {envelope.source!r} is not known"
            raise _Refused("unknown_source", detail) from None
        merchant = self.merchants.get(envelope.fields.get("mch_id", ""))
        if merchant is None:
            raise _Refused("unknown_merchant", "the envelope's merchant is not configured")
        try:
            return verify(envelope.fields, merchant.keys).key_id
        except SignatureError as exc:
            raise _Refused("bad_signature", f"the envelope's report {exc.reason}") from None

    async def _begin(
        self, report: PaymentReport, give_way: asyncio.Event | None
    ) -> Decided | Locked | Busy | None:
        """Take the lock, or find the outcome; wait a while for another worker's lock, unless
        the message's partition is revoked meanwhile (None: give way to its next owner)."""
        deadline = self.clock.monotonic() + self.lock_wait
        pause = 0.02
        while True:
            if give_way is not None and give_way.is_set():
                return None
            state = await self.store.begin(report.order_key, report.mch_id, record_order(report))
            if not isinstance(state, Busy) or self.clock.monotonic() >= deadline:
                return state
            self.stats["lock_busy"] += 1  # another worker holds the payment's lock: contention
            if give_way is None:
                await self.clock.sleep(pause)
            else:
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(pause):
                        await give_way.wait()
            pause = min(pause * 2, 1.0)

    async def _replay(self, report: PaymentReport, outcome: RecordedOutcome) -> Settlement:
        if self.store.is_published(report.order_key, outcome):
            return Settlement.DUPLICATE
        # Found unpublished: its write's WAIT may have fallen short (or a worker stopped
        # between writing and publishing). Published only once the replicas asked for hold it.
        await self.store.confirm(report.order_key)
        await self._publish(report.order_key, outcome)
        return Settlement.REPUBLISHED

    async def _reconcile(
        self, work: Work, report: PaymentReport, lock: Locked, key_id: str
    ) -> Settlement:
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
            source=source_of(work.envelope.source),
            delivery_ids=(work.envelope.delivery_id,),
            key_id=key_id,
        )
        decision = decide(
            notice,
            queried,
            lock.record,
            policy=self.policy,
            requeries_done=work.requeries,
            schedule=self.schedule,
            transfer_tolerance=self.transfer_tolerance,
        )
        if isinstance(decision, NoOutcome):  # pragma: no cover - paid reports only reach here
            await self.store.release(report.order_key, lock.token)
            return Settlement.NO_OUTCOME
        if isinstance(decision, RequeryLater):
            later = replace(work, requeries=decision.attempt)
            return await self._defer(later, report, lock.token, decision.delay, transient=False)
        return await self._settle(report, lock, decision, work.trace)

    async def _settle(
        self,
        report: PaymentReport,
        lock: Locked,
        outcome: PaymentReconciled,
        trace: TraceParent | None,
    ) -> Settlement:
        now = self.clock.time()
        settles = outcome.type in _SETTLING and not report.repeat and lock.record is not None
        recorded = await self.store.decide(
            report.order_key,
            lock.token,
            event_type=outcome.type,
            event_id=event_id(outcome.type, report.mch_id, report.mch_order),
            event=encode(outcome, time=now, trace=trace),
            decided_at=now,
            settle_record=(report.mch_id, report.mch_order) if settles else None,
        )
        if recorded.type != outcome.type:
            # The lock expired during a pause and another worker decided first: its outcome
            # stands, and is the one published again here.
            self._log.warning(
                "outcome_conflict_refused",
                **order_fields(report.order_key),
                kept=recorded.type,
                refused=outcome.type,
            )
        await self._publish(report.order_key, recorded)
        self.stats[f"outcome:{recorded.type}"] += 1
        self._log.info("payment_settled", **order_fields(report.order_key), outcome=recorded.type)
        return Settlement.PUBLISHED

    async def _publish(self, order_key: str, outcome: RecordedOutcome) -> None:
        await self.events.publish(order_key, outcome.event)
        self.store.note_published(order_key)

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
            **order_fields(report.order_key),
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
        await publish_dead_letter(
            self.dlq, key, reason=reason, detail=detail, origin=work.origin,
            payload=work.envelope.encode(), at=self.clock.time(),
        )  # fmt: skip
        self.stats[f"dead_letter:{reason}"] += 1
        self._log.warning(
            "message_dead_lettered", **order_fields(key), reason=reason, origin=work.origin
        )
        return Settlement.DEAD_LETTERED

    @contextlib.asynccontextmanager
    async def _renewing(self, order_key: str, token: str) -> AsyncIterator[None]:
        """Keep the lock alive while the platform takes its time.

        Most answers come long before the first renewal is due, so the renewer is only a timer
        until then: its task starts when `renew_every` has passed with the query still out (a
        task, its timers and a bounded wait for every query cost ~15 µs each: docs/performance.md,
        section 10). The renewer stops by a flag as well as by cancellation, and is awaited with
        a bound: a cancel that lands while it sits in a Redis call can be lost (seen after a
        10-30 s pause), and an unbounded await then hung the job, renewing its lock for ever.
        """
        loop = asyncio.get_running_loop()
        done = asyncio.Event()
        renewer: asyncio.Task[None] | None = None

        async def renew() -> None:
            while not done.is_set():
                try:
                    async with asyncio.timeout(self.renew_timeout):
                        held = await self.store.renew(order_key, token)
                except _OUTAGES as exc:  # TimeoutError included; the next period tries again
                    self._log.warning(
                        "lock_renew_failed", **order_fields(order_key), error=type(exc).__name__
                    )
                else:
                    if not held:
                        self._log.warning("lock_lost", **order_fields(order_key))
                        return
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(self.renew_every):
                        await done.wait()

        def start() -> None:
            nonlocal renewer
            renewer = loop.create_task(renew(), name=f"renew:{order_key}")

        due = loop.call_later(self.renew_every, start)
        try:
            yield
        finally:
            due.cancel()
            if renewer is not None:
                done.set()
                renewer.cancel()
                finished, _ = await asyncio.wait({renewer}, timeout=self.renew_timeout)
                if not finished:
                    # It stops by the flag at its next step; the job does not wait for it.
                    self.stats["renewer_stuck"] += 1
                    self._log.error("lock_renewer_stuck", **order_fields(order_key))
