"""The sweeper: query pending orders whose notifications never came, on the pure schedule of
`shared.domain.sweep`, and hand what it finds to the normal path.

- One active instance, by a lease in Redis (`pn:sweeper:lease`, `Locks`); others wait on it and
  take over once it is released or expires.
- Due orders are claimed from the pending index with a hold, so even two instances that both
  believe they lead never query one order at the same time; a crashed instance's claims come
  due again after the hold.
- A paid answer goes to `paynotify.callbacks` as a query-sourced envelope: the workers settle it
  with the same dedupe and write-once outcome as a notification. An order unpaid at expiry gets
  one `paynotify.order.expired` event (marker `pn:expired:...`, SET NX).
- Queries start at most `rate` per second, at most `concurrency` at a time.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections import Counter
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

from aiokafka.errors import KafkaError
from redis.exceptions import RedisError

from shared import topics
from shared.adapters.kafka import CallbackEnvelope
from shared.adapters.order_book import SWEEPER_LEASE_KEY, CorruptRecordError, OrderEntry
from shared.domain.decision import QueryAnswer
from shared.domain.events import encode
from shared.domain.orders import OrderState
from shared.domain.sweep import (
    CheckAgain,
    ExpireOrder,
    ForwardPaid,
    after_answer,
    after_failure,
    next_slot,
)
from shared.logs import get_logger
from shared.protocol.errors import OrderNotFound, PlatformError, UnknownMerchant
from shared.protocol.models import ENVELOPE_FIELDS

if TYPE_CHECKING:
    from collections.abc import Callable

    from shared.adapters.order_book import OrderBook
    from shared.adapters.redis_lock import Locks
    from shared.clock import Clock
    from shared.domain.orders import OrderRecord
    from shared.domain.sweep import SweepSchedule
    from shared.protocol.models import OrderQueryAnswer

SOURCE_QUERY = "query"  # the envelope's `source` for reports the sweeper found
# Errors of the services around one order's sweep: logged, and the order tried again later.
_SERVICE_ERRORS = (RedisError, KafkaError, OSError)


class OrderQuery(Protocol):
    async def query_order(self, mch_id: str, mch_order: str) -> OrderQueryAnswer: ...


class Publisher(Protocol):
    """An acks=all producer (shared.adapters.kafka.start_producer): keys as text."""

    async def send_and_wait(self, topic: str, value: bytes, key: str) -> object: ...


@dataclass(frozen=True, slots=True)
class SweeperLimits:
    rate: float  # queries started per second, at most (PAYNOTIFY_SWEEP_RATE)
    concurrency: int  # queries in flight, at most (PAYNOTIFY_SWEEP_CONCURRENCY)
    lease_ttl: float = 10.0  # seconds; a dead leader's lease frees itself after this
    claim_hold: float = 120.0  # seconds a claimed order is hidden from other claims
    poll: float = 1.0  # seconds between looks at an empty index, and between lease attempts

    def __post_init__(self) -> None:
        if not self.rate > 0 or self.concurrency < 1:
            raise ValueError("the sweep rate must be positive and the concurrency at least 1")
        if not 0 < self.lease_ttl < self.claim_hold:
            raise ValueError("need 0 < lease_ttl < claim_hold")
        if not self.poll > 0:
            raise ValueError("poll must be positive")


class Pacer:
    """Spaces query starts `1/rate` seconds apart on the given clock."""

    def __init__(self, clock: Clock, rate: float) -> None:
        self._clock = clock
        self._rate = rate
        self._last: float | None = None

    async def wait(self) -> None:
        now = self._clock.monotonic()
        slot = next_slot(self._last, now, self._rate)
        self._last = slot
        if slot > now:
            await self._clock.sleep(slot - now)


class Sweeper:
    def __init__(
        self,
        book: OrderBook,
        locks: Locks,
        platform: OrderQuery,
        producer: Publisher,
        *,
        clock: Clock,
        schedule: SweepSchedule,
        limits: SweeperLimits,
        callbacks_topic: str = topics.CALLBACKS,
        events_topic: str = topics.EVENTS,
        new_id: Callable[[], str] = lambda: uuid.uuid4().hex,
        name: str = "sweeper",
    ) -> None:
        self._book = book
        self._locks = locks
        self._platform = platform
        self._producer = producer
        self._clock = clock
        self._schedule = schedule
        self._limits = limits
        self._callbacks_topic = callbacks_topic
        self._events_topic = events_topic
        self._new_id = new_id
        self._pacer = Pacer(clock, limits.rate)
        self._stopping = asyncio.Event()
        self._log = get_logger("sweeper", instance=name)
        self.stats: Counter[str] = Counter()
        self.leading = False

    async def stop(self) -> None:
        """Stop claiming, let the queries in flight finish, release the lease, return."""
        self._stopping.set()

    async def run(self) -> None:
        """Wait for the lease, sweep while holding it, wait again if it is lost; until stopped."""
        lease_ms = int(self._limits.lease_ttl * 1000)
        pause = self._limits.poll
        while not self._stopping.is_set():
            try:
                token = await self._locks.acquire(SWEEPER_LEASE_KEY, lease_ms)
            except _SERVICE_ERRORS as exc:
                self._log.warning("lease_unreachable", error=type(exc).__name__, pause=pause)
                await self._pause(pause)
                pause = min(pause * 2, self._limits.lease_ttl)
                continue
            pause = self._limits.poll
            if token is None:
                await self._pause(self._limits.poll)
                continue
            self._log.info("lease_taken")
            self.leading = True
            try:
                await self._lead(token)
            finally:
                self.leading = False
                try:
                    await self._locks.release(SWEEPER_LEASE_KEY, token)
                except _SERVICE_ERRORS as exc:  # it expires by itself after lease_ttl
                    self._log.warning("lease_release_failed", error=type(exc).__name__)
                self._log.info("lease_given_up")

    async def _lead(self, token: str) -> None:
        lost = asyncio.Event()
        renewer = asyncio.create_task(self._renew(token, lost))
        inflight: set[asyncio.Task[None]] = set()
        try:
            while not (self._stopping.is_set() or lost.is_set()):
                claimed = await self._claim(self._limits.concurrency - len(inflight))
                inflight |= {asyncio.create_task(self._sweep(m, e)) for m, e in claimed}
                if not inflight:
                    await self._pause(self._limits.poll, lost)
                    continue
                done, _ = await asyncio.wait(
                    inflight, timeout=self._limits.poll, return_when=asyncio.FIRST_COMPLETED
                )
                inflight -= done
                for task in done:
                    task.result()  # a bug in a sweep is raised here, not lost
        finally:
            if inflight:
                await asyncio.gather(*inflight, return_exceptions=True)
            renewer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await renewer

    async def _claim(self, free: int) -> list[tuple[str, OrderEntry | CorruptRecordError | None]]:
        if free <= 0:
            return []
        try:
            members = await self._book.claim_due(hold=self._limits.claim_hold, limit=free)
            return await self._book.entries(members) if members else []
        except _SERVICE_ERRORS as exc:
            self._log.warning("claim_failed", error=type(exc).__name__)
            await self._pause(self._limits.poll)
            return []

    async def _renew(self, token: str, lost: asyncio.Event) -> None:
        ttl_ms = int(self._limits.lease_ttl * 1000)
        while True:
            await self._clock.sleep(self._limits.lease_ttl / 3)
            try:
                held = await self._locks.renew(SWEEPER_LEASE_KEY, token, ttl_ms)
            except _SERVICE_ERRORS as exc:
                self._log.warning("lease_renew_failed", error=type(exc).__name__)
                held = False
            if not held:
                self._log.warning("lease_lost")
                lost.set()
                return

    async def _pause(self, seconds: float, also: asyncio.Event | None = None) -> None:
        """Sleep on the clock, waking early when stopping (or `also` is set)."""
        events = [self._stopping] if also is None else [self._stopping, also]
        waits: list[asyncio.Task[object]] = [asyncio.create_task(self._sleep(seconds))]
        waits += [asyncio.create_task(_wait(event)) for event in events]
        try:
            await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in waits:
                task.cancel()
            await asyncio.gather(*waits, return_exceptions=True)

    async def _sleep(self, seconds: float) -> object:
        await self._clock.sleep(seconds)
        return None

    # --- one order ------------------------------------------------------------------------

    async def _sweep(self, member: str, entry: OrderEntry | CorruptRecordError | None) -> None:
        log = self._log.bind(order=member)
        try:
            await self._sweep_entry(member, entry)
        except (*_SERVICE_ERRORS, ValueError) as exc:
            # Handled, not swallowed: the order stays pending and is tried again; if even the
            # reschedule fails, the claim's hold brings it back.
            self.stats["errors"] += 1
            log.exception("sweep_failed", error=type(exc).__name__)
            failures = entry.sweep_failures + 1 if isinstance(entry, OrderEntry) else 1
            retry = after_failure(failures, now=self._clock.time(), schedule=self._schedule)
            with contextlib.suppress(*_SERVICE_ERRORS):
                await self._book.reschedule(member, retry.due, queried=False, failed=True)

    async def _sweep_entry(
        self, member: str, entry: OrderEntry | CorruptRecordError | None
    ) -> None:
        bound = self._log.bind(order=member)
        if isinstance(entry, CorruptRecordError):
            self.stats["corrupt"] += 1
            bound.error("order_record_corrupt", error=str(entry))
            due = self._clock.time() + self._schedule.max_gap
            await self._book.reschedule(member, due, queried=False, failed=None)
            return
        if entry is None or entry.record.state is not OrderState.PENDING:
            # The record expired or was settled, failed or expired elsewhere: nothing to sweep.
            self.stats["dropped"] += 1
            bound.info("pending_entry_dropped", state=None if entry is None else entry.record.state)
            await self._book.drop(member)
            return
        record = entry.record
        first = self._schedule.first_due(record.created_at)
        if entry.sweep_attempts == 0 and self._clock.time() < first:
            # Recorded without this schedule (e.g. by a process with another time scale).
            await self._book.reschedule(member, first, queried=False, failed=None)
            return
        await self._query_and_decide(member, entry, record)

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
            retry = after_failure(
                entry.sweep_failures + 1, now=self._clock.time(), schedule=self._schedule
            )
            log.warning("sweep_query_failed", error=type(exc).__name__, retry_at=retry.due)
            await self._book.reschedule(member, retry.due, queried=True, failed=True)
            return
        decision = after_answer(record, queried, now=self._clock.time(), schedule=self._schedule)
        if isinstance(decision, CheckAgain):
            await self._book.reschedule(member, decision.due, queried=True, failed=False)
            log.debug("sweep_unpaid", answer=str(queried.status), next_at=decision.due)
        elif isinstance(decision, ForwardPaid):
            if answer is None:  # pragma: no cover - a paid decision needs an answer
                raise ValueError("a paid decision without an answer")
            await self._forward(record, answer)
            await self._book.reschedule(member, decision.due, queried=True, failed=False)
            log.info("sweep_found_paid", recheck_at=decision.due)
        elif isinstance(decision, ExpireOrder):
            await self._expire(record, decision)

    async def _forward(self, record: OrderRecord, answer: OrderQueryAnswer) -> None:
        """The answer's signed fields (as the report was parsed from them) enter the normal path."""
        envelope = CallbackEnvelope(
            fields={k: v for k, v in answer.raw.items() if k not in ENVELOPE_FIELDS},
            key_id=answer.key_id,
            received_at=self._clock.time(),
            peer=None,
            delivery_id=self._new_id(),
            source=SOURCE_QUERY,
        )
        await self._producer.send_and_wait(
            self._callbacks_topic, envelope.encode(), key=record.order_key
        )
        self.stats["forwarded"] += 1

    async def _expire(self, record: OrderRecord, decision: ExpireOrder) -> None:
        step = await self._book.begin_expire(record)
        if step == "emit":
            value = encode(decision.event, time=self._clock.time())
            await self._producer.send_and_wait(self._events_topic, value, key=record.order_key)
            self.stats["expired"] += 1
            self._log.info(
                "order_expired",
                mch_id=record.mch_id,
                mch_order=record.mch_order,
                answer=str(decision.event.answer),
            )
        if step in {"emit", "done"}:
            await self._book.finish_expire(record)


async def _wait(event: asyncio.Event) -> object:
    return await event.wait()
