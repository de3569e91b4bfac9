"""The sweeper: query pending orders whose notifications never came, on the pure schedule of
`shared.domain.sweep`, and hand what it finds to the normal path. This module is the process's
loop (the lease, the claims, the parked notifications); one order's sweep is the use case
`shared.service.sweep.SweepOrder`.

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
from collections import Counter
from dataclasses import dataclass
from typing import TYPE_CHECKING

from shared.adapters.order_book import SWEEPER_LEASE_KEY
from shared.adapters.outages import OUTAGES
from shared.adapters.parked import ParkedRecordError, decode_parked
from shared.clock import sleep_unless
from shared.domain.sweep import (
    SweepMark,
)
from shared.logs import get_logger
from shared.platform.retry import OUTAGE_BACKOFF
from shared.protocol.errors import clean_msg
from shared.protocol.payment import order_fields
from shared.service.dead_letters import dead_letter
from shared.service.sweep import DLQ_ORIGIN, Claimed, SweepOrder, printable
from shared.trace import start

if TYPE_CHECKING:
    from shared.adapters.parked import ParkedNotifications
    from shared.ports import Locks

_PARKED_BATCH = 100  # parked entries asked for per scan step
_PARKED_TRIES = 3  # unexpected failures in a row before a parked entry is dead-lettered
_PARKED_REMEMBERED = 10_000  # parked entries whose failures are counted, at most
_MARK_EVERY = 1.0  # seconds between sweep marks, at least


@dataclass(frozen=True, slots=True)
class SweeperLimits:
    """The loop's limits; the query rate (PAYNOTIFY_SWEEP_RATE) is the use case's own pacing
    (`SweepOrder`'s `rate`)."""

    concurrency: int  # queries in flight, at most (PAYNOTIFY_SWEEP_CONCURRENCY)
    lease_ttl: float = 10.0  # seconds; a dead leader's lease frees itself after this
    claim_hold: float = 120.0  # seconds a claimed order is hidden from other claims
    poll: float = 1.0  # seconds between looks at an empty index, and between lease attempts
    # Seconds the sweeps in flight get to finish when the sweeper stops or loses its lease
    # (say, one waiting out a Redis outage); then they are cancelled and their orders come due
    # again after the claim's hold. Forwarding and expiring are idempotent, so that is safe.
    grace: float = 10.0

    def __post_init__(self) -> None:
        if self.concurrency < 1:
            raise ValueError("the sweep concurrency must be at least 1")
        if not 0 < self.lease_ttl < self.claim_hold:
            raise ValueError("need 0 < lease_ttl < claim_hold")
        if not (self.poll > 0 and self.grace > 0):
            raise ValueError("poll and grace must be positive")


class Sweeper:
    """The sweeper's process loop around the use case `orders` (one claimed order's sweep): the
    lease, the claims, the parked notifications. `orders` brings the order book, clock, producer
    and figures the loop works with too, so the process has one set of them."""

    def __init__(
        self,
        orders: SweepOrder,
        locks: Locks,
        *,
        limits: SweeperLimits,
        parked: ParkedNotifications | None = None,
    ) -> None:
        """`parked`: the ingress's parked notifications, published while leading; None when
        another process publishes them."""
        self._orders = orders
        self._book = orders.book
        self._locks = locks
        self._clock = orders.clock
        self._limits = limits
        self._parked = parked
        # Parked entries whose publishing failed unexpectedly, in a row, and the last reason.
        self._parked_failures: Counter[bytes] = Counter()
        self._parked_failed: dict[bytes, str] = {}
        self._stopping = asyncio.Event()
        self._name = orders.name.replace("/", "-")  # names the lease's holder (`paynotify status`)
        self._log = get_logger("sweeper", instance=orders.name)
        self.stats = orders.stats  # one set of figures per process
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
                inflight |= {asyncio.create_task(self._orders.sweep(m, e)) for m, e in claimed}
                if not inflight:
                    await self._pause(self._limits.poll, lost)
                    continue
                done, _ = await asyncio.wait(
                    inflight, timeout=self._limits.poll, return_when=asyncio.FIRST_COMPLETED
                )
                inflight -= done
                for task in done:
                    task.result()  # `sweep` handles every Exception; anything else is raised
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
            found = await self._orders.io(lambda: self._book.entries(members)) if members else []
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
                self._log.error("parked_corrupt", field=printable(field.decode("ascii", "replace")))
                await self._dead_letter_parked(field, raw, str(exc))
            else:
                if self._parked_failures[field] >= _PARKED_TRIES:
                    await self._dead_letter_parked(
                        field, raw, self._parked_failed.get(field, "?"), "parked_unpublishable"
                    )
                    await self._orders.io(lambda: parked.remove(field))
                    self._forget_parked(field)
                    return
                trace = entry.trace or start()  # parked by an ingress that traced nothing
                await self._orders.send_callback(entry.key, entry.envelope, trace)
                self.stats["parked_released"] += 1
                self._log.info(
                    "parked_released",
                    **order_fields(entry.key),
                    parked_for=round(self._clock.time() - entry.parked_at, 3),
                )
            await self._orders.io(lambda: parked.remove(field))
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
            await self._orders.send_dead_letter(key, value)
        except Exception:  # refused whole (too large): the reason alone, said
            value = dead_letter(reason, detail, DLQ_ORIGIN, b"", now, omit="refused by the DLQ")
            await self._orders.send_dead_letter(key, value)
        self.stats["dead_lettered"] += 1
        self.stats[f"dead_letter:{reason}"] += 1

    def _backoff(self, event: str, exc: Exception, failures: int) -> float:
        """Log a failed call of the sweep loop and return the pause before the next try: an
        outage is a warning, anything else an error with its traceback (and counted)."""
        pause = OUTAGE_BACKOFF.backoff(failures, self._orders.random)
        if isinstance(exc, OUTAGES):
            self.stats["outage_waits"] += 1
            self._log.warning(event, error=type(exc).__name__, pause=round(pause, 3))
        else:
            self.stats["loop_errors"] += 1
            self._log.exception(event, error=type(exc).__name__, pause=round(pause, 3))
        return pause

    async def _pause(
        self, seconds: float, also: asyncio.Event | None = None, *, wake_on_stop: bool = True
    ) -> None:
        """Sleep on the clock, waking early when stopping (unless not asked to) or `also` is
        set."""
        events = [self._stopping] if wake_on_stop else []
        events += [] if also is None else [also]
        await sleep_unless(self._clock, seconds, *events)
