"""Sweeping one pending order: the sweeper's use case (workers/sweeper.py runs it on the orders
it claims while it holds the lease).

- An order whose record is gone or no longer pending leaves the index.
- An order of a merchant without a key is not queried (asking could only fail): it is looked
  at again after long, doubling gaps and given up (DLQ) at the bound.
- Queries start at most `rate` per second; a merchant whose queries keep failing is rested
  (`MerchantRest`) rather than queried at full rate.
- A paid answer goes to the callbacks topic as a query-sourced envelope (every field the
  platform's signature covers): the workers settle it like a notification. An order unpaid at
  expiry gets one `order.expired` event (the order book's marker makes it once).
- No single order stops the sweep: an unexpected error is dead-lettered (`internal_error`), the
  order pushed back and, at the bound, given up. Redis and Kafka being away is waited out.
"""

from __future__ import annotations

import math
import random
import uuid
from collections import Counter
from typing import TYPE_CHECKING, Any, TypeVar

import orjson

from shared import topics
from shared.adapters.outages import OUTAGES
from shared.domain.decision import QueryAnswer
from shared.domain.events import encode
from shared.domain.orders import CorruptRecordError, OrderEntry, OrderState
from shared.domain.sweep import (
    CheckAgain,
    ExpireOrder,
    ForwardPaid,
    MerchantRest,
    StopSweeping,
    after_answer,
    after_failure,
    after_hopeless,
    hopeless_reason,
    next_slot,
)
from shared.logs import get_logger
from shared.platform.retry import wait_out
from shared.protocol.errors import OrderNotFound, PlatformError, UnknownMerchant, clean_msg
from shared.protocol.payment import order_fields
from shared.query_envelope import query_envelope
from shared.service.dead_letters import dead_letter
from shared.trace import HEADER as TRACE_HEADER
from shared.tracing import Spans

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable, Container

    from shared.clock import Clock
    from shared.domain.orders import OrderRecord
    from shared.domain.sweep import SweepSchedule
    from shared.ports import OrderQuery, Orders, Producer
    from shared.protocol.models import OrderQueryAnswer
    from shared.trace import TraceParent

_T = TypeVar("_T")
DLQ_ORIGIN = "sweeper"  # the `origin` of the sweeper's dead letters (the workers' name a topic)
Claimed = OrderEntry | CorruptRecordError | None


class Pacer:
    """Spaces query starts `1/rate` seconds apart on the given clock."""

    def __init__(self, clock: Clock, rate: float) -> None:
        if not (math.isfinite(rate) and rate > 0):  # said at start-up, not at the first query
            raise ValueError("the sweep rate must be a positive finite number")
        self._clock = clock
        self._rate = rate
        self._last: float | None = None

    async def wait(self) -> None:
        now = self._clock.monotonic()
        slot = next_slot(self._last, now, self._rate)
        self._last = slot
        if slot > now:
            await self._clock.sleep(slot - now)


class SweepOrder:
    """Sweep one claimed order (`sweep`); `forward`, `expire` and `dead_letter` are its writes.
    `stats` and the log are the sweeper's: one set of figures per process."""

    def __init__(
        self,
        book: Orders,
        platform: OrderQuery,
        producer: Producer,
        *,
        clock: Clock,
        schedule: SweepSchedule,
        rate: float,
        callbacks_topic: str = topics.CALLBACKS,
        events_topic: str = topics.EVENTS,
        dlq_topic: str = topics.DLQ,
        merchants: Container[str] | None = None,
        new_id: Callable[[], str] = lambda: uuid.uuid4().hex,
        random: Callable[[], float] = random.random,
        answer_sign_includes_envelope: bool = False,
        spans: Spans | None = None,
        stats: Counter[str] | None = None,
        name: str = "sweeper",
    ) -> None:
        """`merchants`: the merchant ids the platform client has keys for; an order of any other
        merchant is not queried (it could only fail) and is given up after its hopeless tries.
        None: every order is queried, and the client's `UnknownMerchant` says so instead."""
        self._book = book
        self._platform = platform
        self._producer = producer
        self._clock = clock
        self._schedule = schedule
        self._callbacks_topic = callbacks_topic
        self._events_topic = events_topic
        self._dlq_topic = dlq_topic
        self._merchants = merchants
        self._new_id = new_id
        self._random = random
        # What the platform's signature covers decides what the forwarded report keeps: the
        # workers verify it again (PAYNOTIFY_ANSWER_SIGN_INCLUDES_ENVELOPE).
        self._answer_sign_includes_envelope = answer_sign_includes_envelope
        self._spans = spans or Spans.off()
        self._pacer = Pacer(clock, rate)
        self._rest = MerchantRest(schedule)
        self.stats: Counter[str] = Counter() if stats is None else stats
        self.name = name
        self._log = get_logger("sweeper", instance=name)

    # What the sweeper's loop (workers/sweeper.py: the lease, the claims, the parked
    # notifications) runs on besides `sweep`: one set of collaborators per process.
    @property
    def book(self) -> Orders:
        return self._book

    @property
    def clock(self) -> Clock:
        return self._clock

    def random(self) -> float:
        return self._random()

    async def send_callback(self, key: str, value: bytes, trace: TraceParent) -> None:
        """Put a notification (or a paid answer) on the callbacks topic, for the workers."""
        headers = [(TRACE_HEADER, trace.encode())]
        await self.io(
            lambda: self._producer.send_and_wait(
                self._callbacks_topic, value, key=key, headers=headers
            )
        )

    async def send_dead_letter(self, key: str, value: bytes) -> None:
        await self.io(lambda: self._producer.send_and_wait(self._dlq_topic, value, key=key))

    async def io(self, call: Callable[[], Awaitable[_T]]) -> _T:
        """One Redis or Kafka call of an order's sweep, with an outage waited out."""
        return await wait_out(
            call, errors=OUTAGES, clock=self._clock, random=self._random, on_retry=self._waiting
        )

    def _waiting(self, exc: BaseException, pause: float) -> None:
        self.stats["outage_waits"] += 1
        self._log.warning("service_unavailable", error=type(exc).__name__, pause=round(pause, 3))

    async def sweep(self, member: str, entry: Claimed) -> None:
        """Sweep one claimed order. Every Exception ends here: outages were waited out below, so
        what arrives is a fault of this order (a bug, a record of the wrong type...): it is
        dead-lettered as `internal_error` and the order is pushed back, and the sweep goes on."""
        try:
            await self._sweep_entry(member, entry)
        except Exception as exc:  # the one place one order's surprise is handled
            await self._internal_error(member, entry, exc)

    async def _sweep_entry(self, member: str, entry: Claimed) -> None:
        bound = self._log.bind(**order_fields(printable(member)))
        if isinstance(entry, CorruptRecordError):
            # Retrying cannot repair it, and without the record no answer can be acted on.
            self.stats["corrupt"] += 1
            bound.error("order_record_corrupt", error=str(entry))
            await self._give_up(member, None, "corrupt_order_record", str(entry))
            return
        if entry is None or entry.record.state is not OrderState.PENDING:
            # The record expired or was settled, failed or expired elsewhere: nothing to sweep.
            self.stats["dropped"] += 1
            bound.info("pending_entry_dropped", state=None if entry is None else entry.record.state)
            await self.io(lambda: self._book.drop(member))
            return
        record = entry.record
        now = self._clock.time()
        first = self._schedule.first_due(record.created_at)
        if entry.sweep_attempts == 0 and now < first:
            # Recorded without this schedule (e.g. by a process with another time scale).
            await self.io(lambda: self._book.reschedule(member, first, queried=False, failed=None))
            return
        if self._merchants is not None and record.mch_id not in self._merchants:
            # No key to sign the query with: asking would only fail, so no budget is spent.
            detail = "no key is configured for the order's merchant"
            await self._hopeless(member, entry, "unknown_merchant", detail, queried=False)
            return
        rest_until = self._rest.admit(record.mch_id, now)
        if rest_until is not None:  # the merchant's queries keep failing: wait, unqueried
            self.stats["rested"] += 1
            due = rest_until + self._random() * self._schedule.retry_gap  # spread the return
            await self.io(lambda: self._book.reschedule(member, due, queried=False, failed=None))
            return
        probe = self._rest.probing(record.mch_id)  # this query is the rested merchant's probe
        try:
            await self._query_and_decide(member, entry, record)
        finally:
            if probe:  # a verdict ended the probe already; else let the next order probe
                self._rest.abandoned(record.mch_id)

    async def _query_and_decide(self, member: str, entry: OrderEntry, record: OrderRecord) -> None:
        log = self._log.bind(mch_id=record.mch_id, mch_order=record.mch_order)
        await self._pacer.wait()
        self.stats["queries"] += 1
        answer: OrderQueryAnswer | None = None
        try:
            answer = await self._platform.query_order(record.mch_id, record.mch_order)
            queried = QueryAnswer(report=answer.report, queried_at=int(self._clock.time()))
        except OrderNotFound:
            queried = QueryAnswer(report=None, queried_at=int(self._clock.time()))
        except (PlatformError, UnknownMerchant) as exc:
            self.stats["query_failures"] += 1
            self._rest.failed(record.mch_id, self._clock.time())
            reason = hopeless_reason(exc)
            if reason is not None:
                await self._hopeless(member, entry, reason, str(exc), queried=True)
                return
            retry = after_failure(
                entry.sweep_failures + 1, now=self._clock.time(), schedule=self._schedule
            )
            log.warning("sweep_query_failed", error=type(exc).__name__, retry_at=retry.due)
            await self.io(
                lambda: self._book.reschedule(member, retry.due, queried=True, failed=True)
            )
            return
        self._rest.answered(record.mch_id)
        decision = after_answer(record, queried, now=self._clock.time(), schedule=self._schedule)
        if isinstance(decision, CheckAgain):
            await self.io(
                lambda: self._book.reschedule(member, decision.due, queried=True, failed=False)
            )
            log.debug("sweep_unpaid", answer=str(queried.status), next_at=decision.due)
        elif isinstance(decision, ForwardPaid):
            if answer is None:  # pragma: no cover - a paid decision needs an answer
                raise ValueError("a paid decision without an answer")
            await self.forward(record, answer)
            await self.io(
                lambda: self._book.reschedule(member, decision.due, queried=True, failed=False)
            )
            log.info("sweep_found_paid", recheck_at=decision.due)
        elif isinstance(decision, ExpireOrder):
            await self.expire(record, decision)

    async def forward(self, record: OrderRecord, answer: OrderQueryAnswer) -> None:
        """The answer's signed fields (every field its signature covers) enter the normal path."""
        value = query_envelope(
            answer,
            received_at=self._clock.time(),
            delivery_id=self._new_id(),
            answer_sign_includes_envelope=self._answer_sign_includes_envelope,
        ).encode()
        with self._spans.span("sweeper.forward", None) as span:  # nothing upstream: a trace
            span.set("paynotify.order_key", record.order_key)
            await self.send_callback(record.order_key, value, span.trace)
        self.stats["forwarded"] += 1

    async def expire(self, record: OrderRecord, decision: ExpireOrder) -> None:
        step = await self.io(lambda: self._book.begin_expire(record))
        if step == "emit":
            with self._spans.span("sweeper.expire", None) as span:
                span.set("paynotify.order_key", record.order_key)
                value = encode(decision.event, time=self._clock.time(), trace=span.trace)
                await self.io(
                    lambda: self._producer.send_and_wait(
                        self._events_topic, value, key=record.order_key
                    )
                )
            self.stats["expired"] += 1
            self._log.info(
                "order_expired",
                mch_id=record.mch_id,
                mch_order=record.mch_order,
                answer=str(decision.event.answer),
            )
        if step in {"emit", "done"}:
            await self.io(lambda: self._book.finish_expire(record))

    # --- orders that cannot be settled by asking again ------------------------------------

    async def _hopeless(
        self, member: str, entry: OrderEntry, reason: str, detail: str, *, queried: bool
    ) -> None:
        """A failure that retrying cannot fix: look again after a long, doubling gap (the
        configuration may be corrected meanwhile), and give up at the bound."""
        tries = entry.sweep_hopeless + 1
        step = after_hopeless(tries, reason, now=self._clock.time(), schedule=self._schedule)
        self.stats[f"hopeless_{reason}"] += 1
        if isinstance(step, StopSweeping):
            await self._give_up(member, entry, reason, f"{detail} ({tries} tries)")
            return
        self._log.warning(
            "sweep_hopeless_failure", **order_fields(printable(member)), reason=reason, tries=tries,
            retry_at=step.due,
        )  # fmt: skip
        await self.io(
            lambda: self._book.reschedule(
                member, step.due, queried=queried, failed=True if queried else None, hopeless=True
            )
        )

    async def _give_up(
        self, member: str, entry: OrderEntry | None, reason: str, detail: str
    ) -> None:
        """Stop polling an order: dead-letter it, then take it out of the index (marked on its
        record). Only once the dead letter is on the DLQ: should that fail, it is kept and tried
        again at the widest gap."""
        if not await self.dead_letter(member, entry, reason, detail):
            due = self._clock.time() + self._schedule.max_gap
            await self.io(lambda: self._book.reschedule(member, due, queried=False, failed=None))
            return
        self.stats["stopped"] += 1
        self._log.error("sweep_stopped", **order_fields(printable(member)), reason=reason)
        await self.io(lambda: self._book.stop_sweeping(member, reason))

    async def _internal_error(self, member: str, entry: Claimed, exc: Exception) -> None:
        """An unexpected error while sweeping one order: dead-lettered as `internal_error`
        (every time: each one is a bug to see), counted, and the order pushed back like a
        hopeless failure, so it is not re-picked at full rate and is given up at the bound."""
        self.stats["internal_error"] += 1
        self._log.exception(
            "sweep_internal_error", **order_fields(printable(member)), error=type(exc).__name__
        )
        detail = f"{type(exc).__name__}: {clean_msg(str(exc))}".rstrip(": ")
        try:
            if not isinstance(entry, OrderEntry):
                await self._give_up(member, None, "internal_error", detail)
                return
            tries = entry.sweep_hopeless + 1
            step = after_hopeless(
                tries, "internal_error", now=self._clock.time(), schedule=self._schedule
            )
            if isinstance(step, StopSweeping):
                await self._give_up(member, entry, "internal_error", f"{detail} ({tries} tries)")
                return
            await self.dead_letter(member, entry, "internal_error", detail)
            await self.io(
                lambda: self._book.reschedule(
                    member, step.due, queried=False, failed=None, hopeless=True
                )
            )
        except Exception:  # even pushing it back failed: the claim's hold brings it back
            self.stats["internal_error_unhandled"] += 1
            self._log.exception("sweep_internal_error_unhandled", **order_fields(printable(member)))

    async def dead_letter(
        self, member: str, entry: OrderEntry | None, reason: str, detail: str
    ) -> bool:
        """A dead letter for an order the sweeper gives up on or failed on: True once on the
        DLQ (a Kafka outage is waited out), False if the DLQ refused it."""
        value = dead_letter(
            reason, detail, DLQ_ORIGIN, _describe(member, entry), self._clock.time()
        )
        try:
            await self.send_dead_letter(printable(member), value)
        except Exception:  # a DLQ that refuses a small record: said, not fatal
            self.stats["dead_letter_failed"] += 1
            self._log.exception(
                "sweep_dead_letter_failed", **order_fields(printable(member)), reason=reason
            )
            return False
        self.stats["dead_lettered"] += 1
        self.stats[f"dead_letter:{reason}"] += 1
        return True


def printable(member: str) -> str:
    """A member as printable text (an undecodable one keeps its bytes as surrogate escapes)."""
    return member.encode("utf-8", "surrogateescape").decode("utf-8", "replace")


def _describe(member: str, entry: OrderEntry | None) -> bytes:
    """The dead letter's payload: the order as the book has it (no key or signature in it)."""
    document: dict[str, Any] = {"order": printable(member)}
    if entry is not None:
        record = entry.record
        document |= {
            "mch_id": record.mch_id, "mch_order": record.mch_order, "amt": record.amt,
            "pay_type": record.pay_type, "created_at": record.created_at,
            "state": str(record.state), "sweep_attempts": entry.sweep_attempts,
            "sweep_failures": entry.sweep_failures, "sweep_hopeless": entry.sweep_hopeless,
        }  # fmt: skip
    return orjson.dumps(document)
