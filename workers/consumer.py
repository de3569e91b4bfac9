"""The worker's strategies on the consumer runtime (workers.runtime): the callbacks topic
(`SettleCallbacks`: keyed concurrency, safe commits, rebalance hand-over) and the Redis retry
set of deferred work (`SettleRetries`), both settling through the same use case and runner.

Before any commit the outcomes this process published are marked in Redis, so a redelivery
finds them; a cycle that cannot mark them commits nothing and is tried again at the next one.
"""

from __future__ import annotations

import random
from dataclasses import replace
from typing import TYPE_CHECKING

from shared.adapters.kafka import CallbackEnvelope, EnvelopeError
from shared.adapters.outages import OUTAGES
from shared.logs import get_logger
from shared.platform.retry import wait_out
from shared.protocol.payment import order_key
from shared.service.dead_letters import publish_dead_letter
from shared.service.settle import Settlement, Work
from shared.trace import from_headers as trace_from_headers
from shared.tracing import Spans
from workers.runtime import REDIS_TROUBLE, ConsumerRuntime, RetrySetRuntime

if TYPE_CHECKING:
    import asyncio
    from collections import Counter
    from collections.abc import Awaitable, Callable

    from aiokafka import AIOKafkaConsumer
    from aiokafka.structs import ConsumerRecord

    from shared.clock import Clock
    from shared.ports import OutcomeLedger, Sink
    from workers.keyed import KeyedRunner


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
        except REDIS_TROUBLE as exc:
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


class SettleRetries:
    """The retry set's strategy (workers.runtime.RetrySetRuntime): deferred work settled again
    through the use case. A member that does not parse (Redis values are not trusted) is
    dead-lettered as `corrupt_retry_entry` and removed, never allowed to stop the worker."""

    def __init__(
        self,
        settle: Callable[[Work], Awaitable[Settlement]],
        *,
        dlq: Sink,
        clock: Clock,
        stats: Counter[str],
    ) -> None:
        self._settle = settle
        self._dlq = dlq
        self._clock = clock
        self._stats = stats

    def key(self, record: bytes, origin: str) -> str:  # noqa: ARG002 - members carry their key
        try:
            work = Work.from_retry(record)
        except EnvelopeError:
            return repr(record[:64])
        return order_key(work.envelope.fields.get("mch_id", ""), work.envelope.fields["mch_order"])

    async def process(self, record: bytes, origin: str, give_way: asyncio.Event) -> bool:
        try:
            work = Work.from_retry(record)
        except EnvelopeError as exc:
            await self._corrupt(record, origin, str(exc))
            return True
        # Stopping: a wait for another worker's lock gives way (the member comes due again).
        settled = await self._settle(replace(work, give_way=give_way))
        return settled is not Settlement.GAVE_WAY

    async def before_commit(self) -> bool:
        return True  # a settled member is removed at once (the runtime), nothing to wait for

    async def _corrupt(self, member: bytes, origin: str, detail: str) -> None:
        now = self._clock.time()
        await wait_out(
            lambda: publish_dead_letter(
                self._dlq, origin, reason="corrupt_retry_entry", detail=detail,
                origin=origin, payload=member, at=now,
            ),
            errors=OUTAGES, clock=self._clock, random=random.random,
        )  # fmt: skip
        self._stats["dead_lettered"] += 1
        self._stats["dead_letter:corrupt_retry_entry"] += 1


def retries_consumer(
    store: OutcomeLedger,
    runner: KeyedRunner,
    settle: Callable[[Work], Awaitable[Settlement]],
    *,
    dlq: Sink,
    clock: Clock,
    stats: Counter[str],
    interval: float = 0.25,
) -> RetrySetRuntime:
    """The retry set on the consumer runtime, settling each member again with `settle`."""
    return RetrySetRuntime(
        store, runner, SettleRetries(settle, dlq=dlq, clock=clock, stats=stats),
        clock=clock, stats=stats, log_name="worker.retries", interval=interval,
    )  # fmt: skip
