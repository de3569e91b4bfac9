"""The worker's Kafka side: fetch callbacks, run them concurrently per order, commit safely.

- Messages for different orders run concurrently (at most `PAYNOTIFY_WORKER_CONCURRENCY` held),
  messages for one order in arrival order (`KeyedRunner`).
- An offset is committed only when every message before it in its partition is settled
  (`PartitionOffsets`), so a crash at any point loses nothing: it only redelivers, and the
  write-once outcomes make a redelivery publish the same event again at most.
- On a rebalance, revoked partitions stop being dispatched; their work that waits for another
  worker's lock gives way at once, the rest gets a deadline to finish, and what settled is
  committed before the partitions move. Other partitions' work is not waited for.
- Redis or Kafka being away never stops the loop: a commit cycle that cannot mark outcomes
  published or commit is skipped and tried again at the next one.
- Deferred work comes back from the Redis retry set through the same runner (`RetryPoller`).
"""

from __future__ import annotations

import asyncio
import contextlib
import random
from typing import TYPE_CHECKING

from aiokafka import ConsumerRebalanceListener, TopicPartition
from aiokafka.errors import CommitFailedError, KafkaError
from aiokafka.structs import OffsetAndMetadata
from redis.exceptions import RedisError

from shared.adapters.kafka import CallbackEnvelope, EnvelopeError
from shared.adapters.outages import OUTAGES, REDIS_OUTAGES
from shared.logs import get_logger
from shared.platform.retry import OUTAGE_BACKOFF, wait_out
from shared.protocol.payment import order_key
from shared.service.settle import Settlement, Work, publish_dead_letter
from shared.trace import from_headers as trace_from_headers
from shared.tracing import Spans
from workers.offsets import PartitionOffsets

if TYPE_CHECKING:
    from collections import Counter
    from collections.abc import Awaitable, Callable, Iterable

    from aiokafka import AIOKafkaConsumer
    from aiokafka.structs import ConsumerRecord

    from shared.clock import Clock
    from shared.ports import OutcomeLedger, Sink
    from workers.keyed import KeyedRunner


# What the marks, claims and finishes of Redis bookkeeping wait out and try again: any Redis
# error (they touch no item's data), the cluster's own (not all are RedisErrors), sockets.
_REDIS_TROUBLE: tuple[type[Exception], ...] = (RedisError, *REDIS_OUTAGES, OSError)


class _Owned:
    """One assigned partition: its offsets, the gate set when it is revoked (lock waits give
    way), and how many of its jobs are queued or running."""

    __slots__ = ("_jobs", "give_way", "idle", "offsets")

    def __init__(self) -> None:
        self.offsets = PartitionOffsets()
        self.give_way = asyncio.Event()
        self.idle = asyncio.Event()
        self.idle.set()
        self._jobs = 0

    def job_started(self) -> None:
        self._jobs += 1
        self.idle.clear()

    def job_ended(self) -> None:
        self._jobs -= 1
        if self._jobs == 0:
            self.idle.set()


class _Rebalance(ConsumerRebalanceListener):  # type: ignore[misc]
    def __init__(self, owner: CallbackConsumer) -> None:
        self._owner = owner

    async def on_partitions_revoked(self, revoked: Iterable[TopicPartition]) -> None:
        await self._owner.revoke(list(revoked))

    async def on_partitions_assigned(self, assigned: Iterable[TopicPartition]) -> None:
        self._owner.assign(list(assigned))


class CallbackConsumer:
    def __init__(
        self,
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
    ) -> None:
        self._consumer = consumer
        self._spans = spans or Spans.off()
        self._topic = topic
        self._runner = runner
        self._settle = settle  # Reconciler.settle: returns only once the message is settled
        self._store = store
        self._dlq = dlq
        self._clock = clock
        self._stats = stats
        self._commit_interval = commit_interval
        self._revoke_deadline = revoke_deadline
        self._owned: dict[TopicPartition, _Owned] = {}
        self._log = get_logger("worker.consumer")

    def subscribe(self) -> None:
        self._consumer.subscribe([self._topic], listener=_Rebalance(self))

    async def run(self, stop: asyncio.Event) -> None:
        """Fetch and dispatch until `stop` is set or a job failed; then commit what settled."""
        next_commit = self._clock.monotonic() + self._commit_interval
        outages = 0
        while not stop.is_set():
            self._raise_if_failed()
            try:
                batch = await self._consumer.getmany(timeout_ms=100, max_records=500)
            except KafkaError as exc:  # the broker away: wait it out, never exit for it
                delay = OUTAGE_BACKOFF.backoff(outages, random.random)
                outages += 1
                self._log.warning("fetch_failed", error=type(exc).__name__, pause=round(delay, 3))
                await self._clock.sleep(delay)
                continue
            outages = 0
            for tp, records in batch.items():
                for record in records:
                    # A partition revoked while its records waited here is someone else's now.
                    if tp not in self._owned:
                        break
                    await self._dispatch(tp, record)
            if self._clock.monotonic() >= next_commit:
                await self.commit()
                next_commit = self._clock.monotonic() + self._commit_interval
        await self.drain()

    async def drain(self) -> None:
        """Give held work its deadline, then commit what settled (shutdown). Work waiting for
        another worker's lock gives way at once: the group's next owner handles it."""
        for owned in self._owned.values():
            owned.give_way.set()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(self._revoke_deadline):
                await self._runner.wait_idle()
        await self.commit()
        self._raise_if_failed()

    def _raise_if_failed(self) -> None:
        if self._runner.failure is not None:
            raise RuntimeError("a reconciliation job failed unexpectedly") from self._runner.failure

    async def _dispatch(self, tp: TopicPartition, record: ConsumerRecord) -> None:
        owned = self._owned[tp]
        offsets, give_way = owned.offsets, owned.give_way
        offsets.take(record.offset)
        origin = f"{tp.topic}/{tp.partition}@{record.offset}"
        key = record.key.decode("utf-8", "replace") if record.key else origin
        raw: bytes = record.value or b""
        # This worker's span: a child of the message's valid `traceparent`, else a trace of its own.
        incoming = trace_from_headers(record.headers)
        owned.job_started()

        async def job() -> None:
            try:
                if give_way.is_set():  # revoked while queued: the next owner has it
                    return
                try:
                    envelope = CallbackEnvelope.decode(raw)
                except EnvelopeError as exc:
                    await self._undecodable(key, origin, raw, str(exc))
                else:
                    with self._spans.span("worker.settle", incoming) as span:
                        work = Work(
                            envelope=envelope, origin=origin, give_way=give_way, trace=span.trace
                        )
                        span.set("paynotify.order_key", key)
                        settlement = await self._settle(work)
                        span.set("paynotify.settlement", settlement.value)
                    if settlement is Settlement.GAVE_WAY:
                        return
                offsets.settle(record.offset)
            finally:
                owned.job_ended()

        await self._runner.submit(key, job)

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

    async def commit(self, only: Iterable[TopicPartition] | None = None) -> None:
        positions: dict[TopicPartition, tuple[PartitionOffsets, int]] = {}
        for tp in only if only is not None else list(self._owned):
            owned = self._owned.get(tp)
            if owned is None:
                continue
            offsets = owned.offsets
            position = offsets.committable()
            if position is not None:
                positions[tp] = (offsets, position)
        # Before the commit: a redelivery after it then finds the outcomes marked published.
        try:
            await self._store.flush_published()
        except _REDIS_TROUBLE as exc:
            # Redis away: no commit this cycle (the marks must come first); the next tries.
            self._stats["commit_skipped"] += 1
            self._log.warning("mark_published_failed", error=type(exc).__name__)
            return
        if not positions:
            return
        try:
            await self._consumer.commit(
                {tp: OffsetAndMetadata(position, "") for tp, (_, position) in positions.items()}
            )
        except CommitFailedError as exc:
            # The group moved on: the new owner redelivers from its last commit; outcomes are
            # written once, so that only republishes the same events.
            self._log.warning("commit_failed", error=str(exc))
            return
        except KafkaError as exc:
            # The broker away: the same positions are committed at the next cycle.
            self._stats["commit_skipped"] += 1
            self._log.warning("commit_failed", error=type(exc).__name__)
            return
        for offsets, position in positions.values():
            offsets.committed(position)

    def assign(self, assigned: list[TopicPartition]) -> None:
        for tp in assigned:
            self._owned.setdefault(tp, _Owned())
        self._log.info("partitions_assigned", partitions=sorted(tp.partition for tp in assigned))

    async def revoke(self, revoked: list[TopicPartition]) -> None:
        """Hand revoked partitions over quickly: their jobs waiting for a lock give way at once,
        the others get the deadline; only then is what settled committed. Jobs of partitions
        kept run on, unwaited (waiting for all froze the whole group for a dead worker's lock)."""
        owned = [tp for tp in revoked if tp in self._owned]
        started = self._clock.monotonic()
        for tp in owned:
            self._owned[tp].give_way.set()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(self._revoke_deadline):
                for tp in owned:
                    await self._owned[tp].idle.wait()
        await self.commit(owned)
        for tp in owned:
            del self._owned[tp]
        self._log.info(
            "partitions_revoked",
            partitions=sorted(tp.partition for tp in owned),
            seconds=round(self._clock.monotonic() - started, 3),
        )


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
