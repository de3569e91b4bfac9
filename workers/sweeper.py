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
- Queries start at most `rate` per second, at most `concurrency` at a time. The budget is kept
  for orders that can be settled: an order that cannot be queried (no key for its merchant,
  answer codes such as 101, an unexpected error) is retried rarely and then given up (DLQ), and a
  merchant whose queries keep failing is rested (`MerchantRest`) rather than queried at full rate.
- No single order stops the sweeper: an unexpected error is dead-lettered (`internal_error`) and
  the sweep goes on. Redis and Kafka being away is waited out with capped, jittered backoff.
"""

from __future__ import annotations

import asyncio
import random
import uuid
from collections import Counter
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar

import orjson

from shared import topics
from shared.adapters.order_book import SWEEPER_LEASE_KEY
from shared.adapters.outages import OUTAGES
from shared.adapters.parked import ParkedRecordError, decode_parked
from shared.clock import sleep_unless
from shared.domain.decision import QueryAnswer
from shared.domain.events import encode
from shared.domain.orders import CorruptRecordError, OrderEntry, OrderState
from shared.domain.sweep import (
    CheckAgain,
    ExpireOrder,
    ForwardPaid,
    MerchantRest,
    StopSweeping,
    SweepMark,
    after_answer,
    after_failure,
    after_hopeless,
    hopeless_reason,
    next_slot,
)
from shared.logs import get_logger
from shared.platform.retry import OUTAGE_BACKOFF, wait_out
from shared.protocol.errors import OrderNotFound, PlatformError, UnknownMerchant, clean_msg
from shared.protocol.payment import order_fields
from shared.query_envelope import query_envelope
from shared.service.settle import dead_letter
from shared.trace import HEADER as TRACE_HEADER
from shared.trace import start
from shared.tracing import Spans

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable, Container

    from shared.adapters.parked import ParkedNotifications
    from shared.clock import Clock
    from shared.domain.orders import OrderRecord
    from shared.domain.sweep import SweepSchedule
    from shared.ports import Locks, OrderQuery, Orders, Producer
    from shared.protocol.models import OrderQueryAnswer

_T = TypeVar("_T")
DLQ_ORIGIN = "sweeper"  # the `origin` of the sweeper's dead letters (the workers' name a topic)
Claimed = OrderEntry | CorruptRecordError | None
_PARKED_BATCH = 100  # parked entries asked for per scan step
_PARKED_TRIES = 3  # unexpected failures in a row before a parked entry is dead-lettered
_PARKED_REMEMBERED = 10_000  # parked entries whose failures are counted, at most
_MARK_EVERY = 1.0  # seconds between sweep marks, at least


@dataclass(frozen=True, slots=True)
class SweeperLimits:
    rate: float  # queries started per second, at most (PAYNOTIFY_SWEEP_RATE)
    concurrency: int  # queries in flight, at most (PAYNOTIFY_SWEEP_CONCURRENCY)
    lease_ttl: float = 10.0  # seconds; a dead leader's lease frees itself after this
    claim_hold: float = 120.0  # seconds a claimed order is hidden from other claims
    poll: float = 1.0  # seconds between looks at an empty index, and between lease attempts
    # Seconds the sweeps in flight get to finish when the sweeper stops or loses its lease
    # (say, one waiting out a Redis outage); then they are cancelled and their orders come due
    # again after the claim's hold. Forwarding and expiring are idempotent, so that is safe.
    grace: float = 10.0

    def __post_init__(self) -> None:
        if not self.rate > 0 or self.concurrency < 1:
            raise ValueError("the sweep rate must be positive and the concurrency at least 1")
        if not 0 < self.lease_ttl < self.claim_hold:
            raise ValueError("need 0 < lease_ttl < claim_hold")
        if not (self.poll > 0 and self.grace > 0):
            raise ValueError("poll and grace must be positive")


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
        book: Orders,
        locks: Locks,
        platform: OrderQuery,
        producer: Producer,
        *,
        clock: Clock,
        schedule: SweepSchedule,
        limits: SweeperLimits,
        callbacks_topic: str = topics.CALLBACKS,
        events_topic: str = topics.EVENTS,
        dlq_topic: str = topics.DLQ,
        merchants: Container[str] | None = None,
        new_id: Callable[[], str] = lambda: uuid.uuid4().hex,
        random: Callable[[], float] = random.random,
        name: str = "sweeper",
        answer_sign_includes_envelope: bool = False,
        parked: ParkedNotifications | None = None,
        spans: Spans | None = None,
    ) -> None:
        """`merchants`: the merchant ids the platform client has keys for; an order of any other
        merchant is not queried (it could only fail) and is given up after its hopeless tries.
        None: every order is queried, and the client's `UnknownMerchant` says so instead."""
        self._book = book
        self._locks = locks
        self._platform = platform
        self._producer = producer
        self._clock = clock
        self._schedule = schedule
        self._limits = limits
        self._callbacks_topic = callbacks_topic
        self._events_topic = events_topic
        self._dlq_topic = dlq_topic
        self._merchants = merchants
        self._parked = parked  # None: another process publishes parked notifications
        # Parked entries whose publishing failed unexpectedly, in a row, and the last reason.
        self._parked_failures: Counter[bytes] = Counter()
        self._parked_failed: dict[bytes, str] = {}
        self._spans = spans or Spans.off()
        self._new_id = new_id
        # What the platform's signature covers decides what the forwarded report keeps: the
        # workers verify it again (PAYNOTIFY_ANSWER_SIGN_INCLUDES_ENVELOPE).
        self._answer_sign_includes_envelope = answer_sign_includes_envelope
        self._random = random
        self._pacer = Pacer(clock, limits.rate)
        self._rest = MerchantRest(schedule)
        self._stopping = asyncio.Event()
        self._name = name.replace("/", "-")  # names the lease's holder (`paynotify status`)
        self._log = get_logger("sweeper", instance=name)
        self.stats: Counter[str] = Counter()
        self.leading = False
        self._claim_failures = 0
        self._marked = float("-inf")  # monotonic time of the last sweep mark

    async def stop(self) -> None:
        """Stop claiming, let the queries in flight finish, release the lease, return."""
        self._stopping.set()

    async def run(self) -> None:
        """Wait for the lease, sweep while holding it, wait again if it is lost; until stopped.
        Nothing ends it but `stop()`: Redis being away (or the lease key being unusable) is
        waited out with capped, jittered backoff."""
        lease_ms = int(self._limits.lease_ttl * 1000)
        failures = 0
        while not self._stopping.is_set():
            try:
                token = await self._locks.acquire(SWEEPER_LEASE_KEY, lease_ms, holder=self._name)
            except Exception as exc:  # never exit for the lease: wait, say so
                pause = self._backoff("lease_unreachable", exc, failures)
                failures += 1
                await self._pause(pause)
                continue
            failures = 0
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
                except Exception as exc:  # it expires by itself after lease_ttl
                    self._log.warning("lease_release_failed", error=type(exc).__name__)
                self._log.info("lease_given_up")

    async def _lead(self, token: str) -> None:
        lost, leading_over = asyncio.Event(), asyncio.Event()
        renewer = asyncio.create_task(
            self._renew(token, lost, leading_over), name="sweeper-lease-renew"
        )
        helpers = {renewer}
        if self._parked is not None:
            helpers.add(
                asyncio.create_task(
                    self._release_parked(self._parked, leading_over), name="sweeper-parked"
                )
            )
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
                    task.result()  # `_sweep` handles every Exception; anything else is raised
        finally:
            await self._drain(inflight)
            # The renewer stops by the flag as well as by cancel, and is awaited with a bound: a
            # cancel that lands inside a Redis call can be lost (redis-py), and an unbounded
            # await then kept the lease renewed, and the sweeper from stopping, for ever.
            leading_over.set()
            for helper in helpers:
                helper.cancel()
            _, stuck = await asyncio.wait(helpers, timeout=self._limits.lease_ttl)
            for helper in stuck:  # it ends at its next step, by the flag; nobody waits for it
                renewer_stuck = helper is renewer
                self.stats["renewer_stuck" if renewer_stuck else "parked_stuck"] += 1
                self._log.error("lease_renewer_stuck" if renewer_stuck else "parked_stuck")

    async def _drain(self, inflight: set[asyncio.Task[None]]) -> None:
        """Let the sweeps in flight finish within the grace; cancel the rest (their claims'
        holds bring them back)."""
        if not inflight:
            return
        try:
            async with asyncio.timeout(self._limits.grace):
                await asyncio.gather(*inflight, return_exceptions=True)
        except TimeoutError:  # the gather cancelled them
            self.stats["sweeps_cancelled"] += sum(not task.done() for task in inflight)
            await asyncio.gather(*inflight, return_exceptions=True)

    async def _claim(self, free: int) -> list[tuple[str, Claimed]]:
        if free <= 0:
            return []
        try:
            members = await self._book.claim_due(hold=self._limits.claim_hold, limit=free)
        except Exception as exc:  # the index as a whole: wait, never exit
            await self._pause(self._backoff("claim_failed", exc, self._claim_failures))
            self._claim_failures += 1
            return []
        self._claim_failures = 0
        # Claimed: hidden from every claim for the hold, so an outage now is waited out here
        # (dropping them would leave them unlooked-at for the whole hold).
        try:
            found = await self._io(lambda: self._book.entries(members)) if members else []
        except Exception as exc:  # not an outage (waited out): said; their hold brings them back
            await self._pause(self._backoff("claim_read_failed", exc, self._claim_failures))
            return []
        await self._mark(len(members))
        return found

    async def _mark(self, claimed: int) -> None:
        """Say in Redis who swept last and when (`paynotify status`), at most once a second
        (claims come as often as queries end); never a reason to stop."""
        now = self._clock.monotonic()
        if now - self._marked < _MARK_EVERY:
            return
        self._marked = now
        try:
            await self._book.mark_sweep(SweepMark(self._name, self._clock.time(), claimed))
        except Exception as exc:  # a mark for people: the next look writes it again
            self.stats["mark_failed"] += 1
            self._log.debug("sweep_mark_failed", error=type(exc).__name__)

    async def _renew(self, token: str, lost: asyncio.Event, done: asyncio.Event) -> None:
        """Renew the lease every third of its TTL until `done`. A renewal that fails for an
        outage is tried again at the next beat: the lease is ours until its TTL has run out
        since the last good renewal, so a short Redis blip does not hand the work over."""
        ttl = self._limits.lease_ttl
        renewed = self._clock.monotonic()
        while not done.is_set():
            await self._pause(ttl / 3, done, wake_on_stop=False)
            if done.is_set():
                return
            try:
                held = await self._locks.renew(SWEEPER_LEASE_KEY, token, int(ttl * 1000))
            except OUTAGES as exc:
                self._log.warning("lease_renew_failed", error=type(exc).__name__)
                held = self._clock.monotonic() - renewed < ttl
            except Exception:  # the lease key is unusable: lead no more, `run` waits it out
                self._log.exception("lease_renew_error")
                held = False
            else:
                renewed = self._clock.monotonic() if held else renewed
            if not held:
                self._log.warning("lease_lost")
                lost.set()
                return

    # --- parked notifications ----------------------------------------------------------------

    async def _release_parked(self, parked: ParkedNotifications, over: asyncio.Event) -> None:
        """While leading: publish what the ingress parked (shared.adapters.parked) to the
        callbacks topic, then remove it; a scan every poll. An outage is waited out (a Kafka
        outage is why they were parked: they go once it is back)."""
        failures = 0
        while not (self._stopping.is_set() or over.is_set()):
            cursor = 0
            try:
                while True:
                    cursor, pairs = await parked.batch(cursor, _PARKED_BATCH)
                    for field, raw in pairs:
                        await self._release_one(parked, field, raw)
                    if cursor == 0 or over.is_set():
                        break
            except Exception as exc:  # the scan itself (one entry's failure ends below)
                pause = self._backoff("parked_scan_failed", exc, failures)
                failures += 1
            else:
                pause, failures = self._limits.poll, 0
            await self._pause(pause, over)

    async def _release_one(self, parked: ParkedNotifications, field: bytes, raw: bytes) -> None:
        """One parked entry: published and removed; one that is not a parked notification is
        dead-lettered (`parked_corrupt`) and removed. No entry stops the others: an unexpected
        error is counted and said, and the entry is tried again at the next scan; after
        `_PARKED_TRIES` such failures in a row it is dead-lettered (`parked_unpublishable`)."""
        try:
            try:
                entry = decode_parked(field, raw)
            except ParkedRecordError as exc:
                self.stats["parked_corrupt"] += 1
                self._log.error("parked_corrupt", field=_text(field.decode("ascii", "replace")))
                await self._dead_letter_parked(field, raw, str(exc))
            else:
                if self._parked_failures[field] >= _PARKED_TRIES:
                    await self._dead_letter_parked(
                        field, raw, self._parked_failed.get(field, "?"), "parked_unpublishable"
                    )
                    await self._io(lambda: parked.remove(field))
                    self._forget_parked(field)
                    return
                trace = entry.trace or start()  # parked by an ingress that traced nothing
                await self._io(
                    lambda: self._producer.send_and_wait(
                        self._callbacks_topic,
                        entry.envelope,
                        key=entry.key,
                        headers=[(TRACE_HEADER, trace.encode())],
                    )
                )
                self.stats["parked_released"] += 1
                self._log.info(
                    "parked_released",
                    **order_fields(entry.key),
                    parked_for=round(self._clock.time() - entry.parked_at, 3),
                )
            await self._io(lambda: parked.remove(field))
            self._forget_parked(field)
        except Exception as exc:
            self.stats["parked_error"] += 1
            if len(self._parked_failures) < _PARKED_REMEMBERED:
                self._parked_failures[field] += 1
                self._parked_failed[field] = f"{type(exc).__name__}: {clean_msg(str(exc))}"[:200]
            self._log.exception("parked_release_failed", error=type(exc).__name__)

    def _forget_parked(self, field: bytes) -> None:
        self._parked_failures.pop(field, None)
        self._parked_failed.pop(field, None)

    async def _dead_letter_parked(
        self, field: bytes, raw: bytes, detail: str, reason: str = "parked_corrupt"
    ) -> None:
        key = field.decode("ascii", "replace")[:64]
        now = self._clock.time()
        value = dead_letter(reason, detail, DLQ_ORIGIN, raw, now)
        try:
            await self._io(lambda: self._producer.send_and_wait(self._dlq_topic, value, key=key))
        except Exception:  # refused whole (too large): the reason alone, said
            value = dead_letter(reason, detail, DLQ_ORIGIN, b"", now, omit="refused by the DLQ")
            await self._io(lambda: self._producer.send_and_wait(self._dlq_topic, value, key=key))
        self.stats["dead_lettered"] += 1
        self.stats[f"dead_letter:{reason}"] += 1

    def _backoff(self, event: str, exc: Exception, failures: int) -> float:
        """Log a failed call of the sweep loop and return the pause before the next try: an
        outage is a warning, anything else an error with its traceback (and counted)."""
        pause = OUTAGE_BACKOFF.backoff(failures, self._random)
        if isinstance(exc, OUTAGES):
            self.stats["outage_waits"] += 1
            self._log.warning(event, error=type(exc).__name__, pause=round(pause, 3))
        else:
            self.stats["loop_errors"] += 1
            self._log.exception(event, error=type(exc).__name__, pause=round(pause, 3))
        return pause

    async def _io(self, call: Callable[[], Awaitable[_T]]) -> _T:
        """One Redis or Kafka call of an order's sweep, with an outage waited out."""
        return await wait_out(
            call, errors=OUTAGES, clock=self._clock, random=self._random, on_retry=self._waiting
        )

    def _waiting(self, exc: BaseException, pause: float) -> None:
        self.stats["outage_waits"] += 1
        self._log.warning("service_unavailable", error=type(exc).__name__, pause=round(pause, 3))

    async def _pause(
        self, seconds: float, also: asyncio.Event | None = None, *, wake_on_stop: bool = True
    ) -> None:
        """Sleep on the clock, waking early when stopping (unless not asked to) or `also` is
        set."""
        events = [self._stopping] if wake_on_stop else []
        events += [] if also is None else [also]
        await sleep_unless(self._clock, seconds, *events)

    # --- one order ------------------------------------------------------------------------

    async def _sweep(self, member: str, entry: Claimed) -> None:
        """Sweep one claimed order. Every Exception ends here: outages were waited out below, so
        what arrives is a fault of this order (a bug, a record of the wrong type...): it is
        dead-lettered as `internal_error` and the order is pushed back, and the sweep goes on."""
        try:
            await self._sweep_entry(member, entry)
        except Exception as exc:  # the one place one order's surprise is handled
            await self._internal_error(member, entry, exc)

    async def _sweep_entry(self, member: str, entry: Claimed) -> None:
        bound = self._log.bind(**order_fields(_text(member)))
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
            await self._io(lambda: self._book.drop(member))
            return
        record = entry.record
        now = self._clock.time()
        first = self._schedule.first_due(record.created_at)
        if entry.sweep_attempts == 0 and now < first:
            # Recorded without this schedule (e.g. by a process with another time scale).
            await self._io(lambda: self._book.reschedule(member, first, queried=False, failed=None))
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
            await self._io(lambda: self._book.reschedule(member, due, queried=False, failed=None))
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
            await self._io(
                lambda: self._book.reschedule(member, retry.due, queried=True, failed=True)
            )
            return
        self._rest.answered(record.mch_id)
        decision = after_answer(record, queried, now=self._clock.time(), schedule=self._schedule)
        if isinstance(decision, CheckAgain):
            await self._io(
                lambda: self._book.reschedule(member, decision.due, queried=True, failed=False)
            )
            log.debug("sweep_unpaid", answer=str(queried.status), next_at=decision.due)
        elif isinstance(decision, ForwardPaid):
            if answer is None:  # pragma: no cover - a paid decision needs an answer
                raise ValueError("a paid decision without an answer")
            await self._forward(record, answer)
            await self._io(
                lambda: self._book.reschedule(member, decision.due, queried=True, failed=False)
            )
            log.info("sweep_found_paid", recheck_at=decision.due)
        elif isinstance(decision, ExpireOrder):
            await self._expire(record, decision)

    async def _forward(self, record: OrderRecord, answer: OrderQueryAnswer) -> None:
        """The answer's signed fields (every field its signature covers) enter the normal path."""
        value = query_envelope(
            answer,
            received_at=self._clock.time(),
            delivery_id=self._new_id(),
            answer_sign_includes_envelope=self._answer_sign_includes_envelope,
        ).encode()
        with self._spans.span("sweeper.forward", None) as span:  # nothing upstream: a trace
            span.set("paynotify.order_key", record.order_key)
            headers = [(TRACE_HEADER, span.trace.encode())]
            await self._io(
                lambda: self._producer.send_and_wait(
                    self._callbacks_topic, value, key=record.order_key, headers=headers
                )
            )
        self.stats["forwarded"] += 1

    async def _expire(self, record: OrderRecord, decision: ExpireOrder) -> None:
        step = await self._io(lambda: self._book.begin_expire(record))
        if step == "emit":
            with self._spans.span("sweeper.expire", None) as span:
                span.set("paynotify.order_key", record.order_key)
                value = encode(decision.event, time=self._clock.time(), trace=span.trace)
                await self._io(
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
            await self._io(lambda: self._book.finish_expire(record))

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
            "sweep_hopeless_failure", **order_fields(_text(member)), reason=reason, tries=tries,
            retry_at=step.due,
        )  # fmt: skip
        await self._io(
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
        if not await self._dead_letter(member, entry, reason, detail):
            due = self._clock.time() + self._schedule.max_gap
            await self._io(lambda: self._book.reschedule(member, due, queried=False, failed=None))
            return
        self.stats["stopped"] += 1
        self._log.error("sweep_stopped", **order_fields(_text(member)), reason=reason)
        await self._io(lambda: self._book.stop_sweeping(member, reason))

    async def _internal_error(self, member: str, entry: Claimed, exc: Exception) -> None:
        """An unexpected error while sweeping one order: dead-lettered as `internal_error`
        (every time: each one is a bug to see), counted, and the order pushed back like a
        hopeless failure, so it is not re-picked at full rate and is given up at the bound."""
        self.stats["internal_error"] += 1
        self._log.exception(
            "sweep_internal_error", **order_fields(_text(member)), error=type(exc).__name__
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
            await self._dead_letter(member, entry, "internal_error", detail)
            await self._io(
                lambda: self._book.reschedule(
                    member, step.due, queried=False, failed=None, hopeless=True
                )
            )
        except Exception:  # even pushing it back failed: the claim's hold brings it back
            self.stats["internal_error_unhandled"] += 1
            self._log.exception("sweep_internal_error_unhandled", **order_fields(_text(member)))

    async def _dead_letter(
        self, member: str, entry: OrderEntry | None, reason: str, detail: str
    ) -> bool:
        """A dead letter for an order the sweeper gives up on or failed on: True once on the
        DLQ (a Kafka outage is waited out), False if the DLQ refused it."""
        value = dead_letter(
            reason, detail, DLQ_ORIGIN, _describe(member, entry), self._clock.time()
        )
        try:
            await self._io(
                lambda: self._producer.send_and_wait(self._dlq_topic, value, key=_text(member))
            )
        except Exception:  # a DLQ that refuses a small record: said, not fatal
            self.stats["dead_letter_failed"] += 1
            self._log.exception(
                "sweep_dead_letter_failed", **order_fields(_text(member)), reason=reason
            )
            return False
        self.stats["dead_lettered"] += 1
        self.stats[f"dead_letter:{reason}"] += 1
        return True


def _text(member: str) -> str:
    """A member as printable text (an undecodable one keeps its bytes as surrogate escapes)."""
    return member.encode("utf-8", "surrogateescape").decode("utf-8", "replace")


def _describe(member: str, entry: OrderEntry | None) -> bytes:
    """The dead letter's payload: the order as the book has it (no key or signature in it)."""
    document: dict[str, Any] = {"order": _text(member)}
    if entry is not None:
        record = entry.record
        document |= {
            "mch_id": record.mch_id, "mch_order": record.mch_order, "amt": record.amt,
            "pay_type": record.pay_type, "created_at": record.created_at,
            "state": str(record.state), "sweep_attempts": entry.sweep_attempts,
            "sweep_failures": entry.sweep_failures, "sweep_hopeless": entry.sweep_hopeless,
        }  # fmt: skip
    return orjson.dumps(document)
