"""The worker's consumers: the callbacks topic's strategy on the consumer runtime
(workers.runtime: keyed concurrency, safe commits, rebalance hand-over), and the poller that
brings deferred work back from the Redis retry set through the same runner (`RetryPoller`).

Before any commit the outcomes this process published are marked in Redis, so a redelivery
finds them; a cycle that cannot mark them commits nothing and is tried again at the next one.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
from typing import TYPE_CHECKING

from redis.exceptions import RedisError

from shared.adapters.kafka import CallbackEnvelope, EnvelopeError
from shared.adapters.outages import OUTAGES, REDIS_OUTAGES
from shared.logs import get_logger
from shared.platform.retry import OUTAGE_BACKOFF, wait_out
from shared.protocol.payment import order_key
from shared.service.dead_letters import publish_dead_letter
from shared.service.settle import Settlement, Work
from shared.trace import from_headers as trace_from_headers
from shared.tracing import Spans
from workers.runtime import ConsumerRuntime

if TYPE_CHECKING:
    from collections import Counter
    from collections.abc import Awaitable, Callable

    from aiokafka import AIOKafkaConsumer
    from aiokafka.structs import ConsumerRecord

    from shared.clock import Clock
    from shared.ports import OutcomeLedger, Sink
    from workers.keyed import KeyedRunner


# What the marks, claims and finishes of Redis bookkeeping wait out and try again: any Redis
# error (they touch no item's data), the cluster's own (not all are RedisErrors), sockets.
_REDIS_TROUBLE: tuple[type[Exception], ...] = (RedisError, *REDIS_OUTAGES, OSError)


class SettleCallbacks:
    """The callbacks topic's strategy (workers.runtime): decode the envelope, settle it through
    the use case (`Reconciler.settle`, which returns only once the message is settled), and
    before any commit mark the outcomes published that this process published."""

    def __init__(
        self,
        settle: Callable[[Work], Awaitable[Settlement]],
        *,
        store: OutcomeLedger,
        dlq: Sink,
        clock: Clock,
        stats: Counter[str],
        spans: Spans | None = None,
    ) -> None:
        self._settle = settle
        self._store = store
        self._dlq = dlq
        self._clock = clock
        self._stats = stats
        self._spans = spans or Spans.off()
        self._log = get_logger("worker.consumer")

    def key(self, record: ConsumerRecord, origin: str) -> str:
        return record.key.decode("utf-8", "replace") if record.key else origin

    async def process(self, record: ConsumerRecord, origin: str, give_way: asyncio.Event) -> bool:
        raw: bytes = record.value or b""
        try:
            envelope = CallbackEnvelope.decode(raw)
        except EnvelopeError as exc:
            await self._undecodable(self.key(record, origin), origin, raw, str(exc))
            return True
        # This worker's span: a child of the message's valid `traceparent`, else a trace of its own.
        with self._spans.span("worker.settle", trace_from_headers(record.headers)) as span:
            work = Work(envelope=envelope, origin=origin, give_way=give_way, trace=span.trace)
            span.set("paynotify.order_key", self.key(record, origin))
            settlement = await self._settle(work)
            span.set("paynotify.settlement", settlement.value)
        return settlement is not Settlement.GAVE_WAY

    async def before_commit(self) -> bool:
        """A redelivery after the commit must find the outcomes marked published."""
        try:
            await self._store.flush_published()
        except _REDIS_TROUBLE as exc:
            # Redis away: no commit this cycle (the marks must come first); the next tries.
            self._log.warning("mark_published_failed", error=type(exc).__name__)
            return False
        return True

    async def _undecodable(self, key: str, origin: str, raw: bytes, detail: str) -> None:
        now = self._clock.time()
        await wait_out(
            lambda: publish_dead_letter(
                self._dlq, key, reason="undecodable", detail=detail, origin=origin,
                payload=raw, at=now,
            ),
            errors=OUTAGES, clock=self._clock, random=random.random,
        )  # fmt: skip
        self._stats["dead_lettered"] += 1
        self._stats["dead_letter:undecodable"] += 1


def callbacks_consumer(
    consumer: AIOKafkaConsumer,
    topic: str,
    runner: KeyedRunner,
    settle: Callable[[Work], Awaitable[Settlement]],
    *,
    store: OutcomeLedger,
    dlq: Sink,
    clock: Clock,
    stats: Counter[str],
    commit_interval: float = 0.2,
    revoke_deadline: float = 15.0,
    spans: Spans | None = None,
) -> ConsumerRuntime:
    """The callbacks topic on the consumer runtime, settling each message with `settle`."""
    strategy = SettleCallbacks(settle, store=store, dlq=dlq, clock=clock, stats=stats, spans=spans)
    return ConsumerRuntime(
        consumer, [topic], runner, strategy, clock=clock, stats=stats,
        log_name="worker.consumer", commit_interval=commit_interval,
        revoke_deadline=revoke_deadline,
    )  # fmt: skip


class RetryPoller:
    """Brings deferred work back when due, through the same runner as fresh messages. A member
    of the retry set that does not parse (Redis values are not trusted) is dead-lettered as
    `corrupt_retry_entry` and removed, never allowed to stop the poller."""

    def __init__(
        self,
        store: OutcomeLedger,
        runner: KeyedRunner,
        settle: Callable[[Work], Awaitable[Settlement]],
        *,
        dlq: Sink,
        clock: Clock,
        stats: Counter[str],
        interval: float = 0.25,
        lease: float = 120.0,
        batch: int = 200,
    ) -> None:
        self._store = store
        self._runner = runner
        self._settle = settle
        self._dlq = dlq
        self._clock = clock
        self._stats = stats
        self._interval = interval
        self._lease = lease
        self._batch = batch
        self._log = get_logger("worker.retries")

    async def run(self, stop: asyncio.Event) -> None:
        outages = 0
        while not stop.is_set():
            try:
                members = await self._store.claim_retries(
                    self._clock.time(), self._lease, self._batch
                )
            except _REDIS_TROUBLE as exc:
                delay = OUTAGE_BACKOFF.backoff(outages, random.random)
                outages += 1
                self._log.warning("retry_claim_failed", error=type(exc).__name__)
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(delay):
                        await stop.wait()
                continue
            outages = 0
            for member in members:
                await self._dispatch(member)
            if len(members) < self._batch:
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(self._interval):
                        await stop.wait()

    async def _dispatch(self, member: bytes) -> None:
        try:
            work = Work.from_retry(member)
        except EnvelopeError as exc:
            detail = str(exc)
            await self._runner.submit(repr(member[:64]), lambda: self._corrupt(member, detail))
            return
        key = order_key(work.envelope.fields.get("mch_id", ""), work.envelope.fields["mch_order"])

        async def job() -> None:
            await self._settle(work)
            # Only now: until here a crash leaves the member to come due again after its lease.
            await self._finish(member)

        await self._runner.submit(key, job)

    async def _corrupt(self, member: bytes, detail: str) -> None:
        now = self._clock.time()
        await wait_out(
            lambda: publish_dead_letter(
                self._dlq, "retry-set", reason="corrupt_retry_entry", detail=detail,
                origin="retry-set", payload=member, at=now,
            ),
            errors=OUTAGES, clock=self._clock, random=random.random,
        )  # fmt: skip
        self._stats["dead_lettered"] += 1
        self._stats["dead_letter:corrupt_retry_entry"] += 1
        await self._finish(member)

    async def _finish(self, member: bytes) -> None:
        await wait_out(
            lambda: self._store.finish_retry(member),
            errors=_REDIS_TROUBLE, clock=self._clock, random=random.random,
        )  # fmt: skip
