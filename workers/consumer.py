"""The worker's Kafka side: fetch callbacks, run them concurrently per order, commit safely.

- Messages for different orders run concurrently (at most `PAYNOTIFY_WORKER_CONCURRENCY` held),
  messages for one order in arrival order (`KeyedRunner`).
- An offset is committed only when every message before it in its partition is settled
  (`PartitionOffsets`), so a crash at any point loses nothing: it only redelivers, and the
  write-once outcomes make a redelivery publish the same event again at most.
- On a rebalance, revoked partitions stop being dispatched, held work gets a deadline to finish,
  and what settled is committed before the partitions move.
- Deferred work comes back from the Redis retry set through the same runner (`RetryPoller`).
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import TYPE_CHECKING

from aiokafka import ConsumerRebalanceListener, TopicPartition
from aiokafka.errors import CommitFailedError, KafkaError
from aiokafka.structs import OffsetAndMetadata
from redis.exceptions import RedisError

from shared.adapters.kafka import CallbackEnvelope, EnvelopeError
from shared.logs import get_logger
from workers.offsets import PartitionOffsets
from workers.reconcile import Settlement, Work, dead_letter

if TYPE_CHECKING:
    from collections import Counter
    from collections.abc import Awaitable, Callable, Iterable

    from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
    from aiokafka.structs import ConsumerRecord

    from shared.adapters.outcomes import OutcomeStore
    from shared.clock import Clock
    from workers.keyed import KeyedRunner


# CloudEvents' Kafka binding, structured mode: the whole event is the value, announced here.
CLOUDEVENTS_HEADERS = (("content-type", b"application/cloudevents+json; charset=UTF-8"),)


class TopicSink:
    """Publish to one topic and return after the broker's ack (the producer is acks=all)."""

    def __init__(
        self,
        producer: AIOKafkaProducer,
        topic: str,
        headers: tuple[tuple[str, bytes], ...] = (),
    ) -> None:
        self._producer = producer
        self._topic = topic
        self._headers = list(headers) or None

    async def publish(self, key: str, value: bytes) -> None:
        await self._producer.send_and_wait(self._topic, value, key=key, headers=self._headers)


async def settle_with_retries(
    handle: Callable[[Work], Awaitable[Settlement]], work: Work, clock: Clock, stats: Counter[str]
) -> Settlement:
    """Run `handle` until it settles the work. Redis or Kafka being away is waited out here (the
    order's later messages wait behind it; other orders go on), never turned into a loss."""
    log = get_logger("worker")
    pause = 0.1
    while True:
        try:
            settlement = await handle(work)
        except (RedisError, KafkaError, OSError) as exc:
            stats["infrastructure_retries"] += 1
            log.warning("settle_retry", origin=work.origin, error=type(exc).__name__, pause=pause)
            await clock.sleep(pause)
            pause = min(pause * 2, 5.0)
        else:
            stats[settlement.value] += 1
            return settlement


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
        handle: Callable[[Work], Awaitable[Settlement]],
        *,
        store: OutcomeStore,
        dlq_producer: AIOKafkaProducer,
        dlq_topic: str,
        clock: Clock,
        stats: Counter[str],
        published: set[str],
        commit_interval: float = 0.2,
        revoke_deadline: float = 15.0,
    ) -> None:
        self._consumer = consumer
        self._topic = topic
        self._runner = runner
        self._handle = handle
        self._store = store
        self._dlq_producer = dlq_producer
        self._dlq_topic = dlq_topic
        self._clock = clock
        self._stats = stats
        self._commit_interval = commit_interval
        self._revoke_deadline = revoke_deadline
        self._offsets: dict[TopicPartition, PartitionOffsets] = {}
        self._log = get_logger("worker.consumer")
        self._published = published  # filled by the reconciler: outcomes to mark published

    def subscribe(self) -> None:
        self._consumer.subscribe([self._topic], listener=_Rebalance(self))

    async def run(self, stop: asyncio.Event) -> None:
        """Fetch and dispatch until `stop` is set or a job failed; then commit what settled."""
        next_commit = self._clock.monotonic() + self._commit_interval
        while not stop.is_set():
            self._raise_if_failed()
            batch = await self._consumer.getmany(timeout_ms=100, max_records=500)
            for tp, records in batch.items():
                for record in records:
                    # A partition revoked while its records waited here is someone else's now.
                    if tp not in self._offsets:
                        break
                    await self._dispatch(tp, record)
            if self._clock.monotonic() >= next_commit:
                await self.commit()
                next_commit = self._clock.monotonic() + self._commit_interval
        await self.drain()

    async def drain(self) -> None:
        """Give held work its deadline, then commit what settled (shutdown and revocation)."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(self._revoke_deadline):
                await self._runner.wait_idle()
        await self.commit()
        self._raise_if_failed()

    def _raise_if_failed(self) -> None:
        if self._runner.failure is not None:
            raise RuntimeError("a reconciliation job failed unexpectedly") from self._runner.failure

    async def _dispatch(self, tp: TopicPartition, record: ConsumerRecord) -> None:
        offsets = self._offsets[tp]
        offsets.take(record.offset)
        origin = f"{tp.topic}/{tp.partition}@{record.offset}"
        key = record.key.decode("utf-8", "replace") if record.key else origin
        raw: bytes = record.value or b""

        async def job() -> None:
            try:
                envelope = CallbackEnvelope.decode(raw)
            except EnvelopeError as exc:
                await self._undecodable(key, origin, raw, str(exc))
            else:
                work = Work(envelope=envelope, origin=origin)
                await settle_with_retries(self._handle, work, self._clock, self._stats)
            offsets.settle(record.offset)

        await self._runner.submit(key, job)

    async def _undecodable(self, key: str, origin: str, raw: bytes, detail: str) -> None:
        value = dead_letter("undecodable", detail, origin, raw, at=self._clock.time())
        pause = 0.1
        while True:
            try:
                await self._dlq_producer.send_and_wait(self._dlq_topic, value, key=key)
            except KafkaError:
                await self._clock.sleep(pause)
                pause = min(pause * 2, 5.0)
            else:
                self._stats["dead_lettered"] += 1
                return

    async def commit(self, only: Iterable[TopicPartition] | None = None) -> None:
        positions: dict[TopicPartition, tuple[PartitionOffsets, int]] = {}
        for tp in only if only is not None else list(self._offsets):
            offsets = self._offsets.get(tp)
            if offsets is None:
                continue
            position = offsets.committable()
            if position is not None:
                positions[tp] = (offsets, position)
        if self._published:
            # Before the commit: a redelivery after it then finds the outcome marked published.
            # Keys leave the set only once Redis has them, so a duplicate arriving meanwhile is
            # still recognised (and not published again).
            keys = list(self._published)
            await self._store.mark_published(keys)
            self._published.difference_update(keys)
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
        for offsets, position in positions.values():
            offsets.committed(position)

    def assign(self, assigned: list[TopicPartition]) -> None:
        for tp in assigned:
            self._offsets.setdefault(tp, PartitionOffsets())
        self._log.info("partitions_assigned", partitions=sorted(tp.partition for tp in assigned))

    async def revoke(self, revoked: list[TopicPartition]) -> None:
        owned = [tp for tp in revoked if tp in self._offsets]
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(self._revoke_deadline):
                await self._runner.wait_idle()
        await self.commit(owned)
        for tp in owned:
            del self._offsets[tp]
        self._log.info("partitions_revoked", partitions=sorted(tp.partition for tp in owned))


class RetryPoller:
    """Brings deferred work back when due, through the same runner as fresh messages."""

    def __init__(
        self,
        store: OutcomeStore,
        runner: KeyedRunner,
        handle: Callable[[Work], Awaitable[Settlement]],
        *,
        clock: Clock,
        stats: Counter[str],
        interval: float = 0.25,
        lease: float = 120.0,
        batch: int = 200,
    ) -> None:
        self._store = store
        self._runner = runner
        self._handle = handle
        self._clock = clock
        self._stats = stats
        self._interval = interval
        self._lease = lease
        self._batch = batch
        self._log = get_logger("worker.retries")

    async def run(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            try:
                members = await self._store.claim_retries(
                    self._clock.time(), self._lease, self._batch
                )
            except RedisError as exc:
                self._log.warning("retry_claim_failed", error=type(exc).__name__)
                members = []
            for member in members:
                await self._dispatch(member)
            if len(members) < self._batch:
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(self._interval):
                        await stop.wait()

    async def _dispatch(self, member: bytes) -> None:
        work = Work.from_retry(member)
        key = (
            f"{work.envelope.fields.get('mch_id', '')}:{work.envelope.fields.get('mch_order', '')}"
        )

        async def job() -> None:
            await settle_with_retries(self._handle, work, self._clock, self._stats)
            # Only now: until here a crash leaves the member to come due again after its lease.
            pause = 0.1
            while True:
                try:
                    await self._store.finish_retry(member)
                except RedisError:
                    await self._clock.sleep(pause)
                    pause = min(pause * 2, 5.0)
                else:
                    return

        await self._runner.submit(key, job)
