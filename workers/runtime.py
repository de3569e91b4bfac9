"""The one consumer runtime of the workers: every source of work they take runs on it, the
Kafka topics (callbacks, orders: `ConsumerRuntime`) and the Redis retry set of deferred work
(`RetrySetRuntime`).

A *strategy* says what one message means (`Strategy.process`) and what must be true before a
commit (`Strategy.before_commit`); the runtime does the rest, the same way for every source
(the retry set's "commit" is removing a member once it is settled; a member not settled comes
due again after its lease):

- Messages for different keys run concurrently (a `KeyedRunner`: at most its limit held, which
  is the backpressure on the fetch loop), messages for one key in arrival order.
- An offset is committed only when every message before it in its partition is settled
  (`PartitionOffsets`), so a crash at any point loses nothing: it only redelivers.
- On a rebalance, revoked partitions stop being dispatched; their jobs are told to give way at
  once, the rest get a deadline to finish, and what settled is committed before the partitions
  move. Other partitions' work is not waited for.
- Kafka being away never stops the loop (capped, jittered backoff); a commit cycle whose
  `before_commit` says no, or whose commit fails, is skipped and tried again at the next one.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
from typing import TYPE_CHECKING, Protocol, TypeVar

from aiokafka import ConsumerRebalanceListener, TopicPartition
from aiokafka.errors import CommitFailedError, KafkaError
from aiokafka.structs import OffsetAndMetadata
from redis.exceptions import RedisError

from shared.adapters.outages import REDIS_OUTAGES
from shared.clock import sleep_unless
from shared.logs import get_logger
from shared.platform.retry import OUTAGE_BACKOFF, wait_out
from workers.offsets import PartitionOffsets

ItemT_contra = TypeVar("ItemT_contra", contravariant=True)

if TYPE_CHECKING:
    from collections import Counter
    from collections.abc import Iterable, Sequence

    from aiokafka import AIOKafkaConsumer
    from aiokafka.structs import ConsumerRecord

    from shared.clock import Clock
    from shared.ports import OutcomeLedger
    from workers.keyed import KeyedRunner

# What claims and removals of the retry set wait out and try again: any Redis error (they touch
# no item's data), the cluster's own (not all are RedisErrors), sockets.
REDIS_TROUBLE: tuple[type[Exception], ...] = (RedisError, *REDIS_OUTAGES, OSError)
RETRY_SET = "retry-set"  # the origin of the retry set's work, in logs and dead letters


class Strategy(Protocol[ItemT_contra]):
    """What one source's messages mean (a Kafka record, a retry-set member)."""

    def key(self, record: ItemT_contra, origin: str) -> str:
        """The key whose messages run one at a time, in order (`origin` when it has none)."""
        ...

    async def process(self, record: ItemT_contra, origin: str, give_way: asyncio.Event) -> bool:
        """Handle one message; True once it is settled (its offset may be committed), False
        when it gave way (its partition was revoked or the runtime is stopping: the next owner
        has it). It must handle its own errors: one that escapes stops the runtime."""
        ...

    async def before_commit(self) -> bool:
        """What must reach its store before offsets are committed; False skips this cycle."""
        ...


class _Owned:
    """One assigned partition: its offsets, the gate set when it is revoked (jobs give way),
    and how many of its jobs are queued or running."""

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
    def __init__(self, owner: ConsumerRuntime) -> None:
        self._owner = owner

    async def on_partitions_revoked(self, revoked: Iterable[TopicPartition]) -> None:
        await self._owner.revoke(list(revoked))

    async def on_partitions_assigned(self, assigned: Iterable[TopicPartition]) -> None:
        self._owner.assign(list(assigned))


class ConsumerRuntime:
    def __init__(
        self,
        consumer: AIOKafkaConsumer,
        topics: Sequence[str],
        runner: KeyedRunner,
        strategy: Strategy[ConsumerRecord],
        *,
        clock: Clock,
        stats: Counter[str],
        log_name: str,
        event_prefix: str = "",
        commit_interval: float = 0.2,
        revoke_deadline: float = 15.0,
        max_records: int = 500,
    ) -> None:
        """`event_prefix` goes before the runtime's log events (`orders_` for the orders topic),
        so a worker's `partitions_assigned` and `partitions_revoked` stay its callbacks'."""
        self._consumer = consumer
        self._topics = list(topics)
        self._runner = runner
        self._strategy = strategy
        self._clock = clock
        self._stats = stats
        self._commit_interval = commit_interval
        self._revoke_deadline = revoke_deadline
        self._max_records = max_records
        self._owned: dict[TopicPartition, _Owned] = {}
        self._log = get_logger(log_name)
        self._prefix = event_prefix

    def subscribe(self) -> None:
        self._consumer.subscribe(self._topics, listener=_Rebalance(self))

    async def run(self, stop: asyncio.Event) -> None:
        """Fetch and dispatch until `stop` is set or a job failed; then commit what settled."""
        next_commit = self._clock.monotonic() + self._commit_interval
        outages = 0
        while not stop.is_set():
            self._raise_if_failed()
            try:
                batch = await self._consumer.getmany(timeout_ms=100, max_records=self._max_records)
            except KafkaError as exc:  # the broker away: wait it out, never exit for it
                delay = OUTAGE_BACKOFF.backoff(outages, random.random)
                outages += 1
                self._log.warning(
                    self._prefix + "fetch_failed", error=type(exc).__name__, pause=round(delay, 3)
                )
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
        """Tell held work to give way, give it the deadline, then commit what settled."""
        for owned in self._owned.values():
            owned.give_way.set()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(self._revoke_deadline):
                await self._runner.wait_idle()
        await self.commit()
        self._raise_if_failed()

    def _raise_if_failed(self) -> None:
        if self._runner.failure is not None:
            raise RuntimeError("a message's job failed unexpectedly") from self._runner.failure

    async def _dispatch(self, tp: TopicPartition, record: ConsumerRecord) -> None:
        owned = self._owned[tp]
        offsets, give_way = owned.offsets, owned.give_way
        offsets.take(record.offset)
        origin = f"{tp.topic}/{tp.partition}@{record.offset}"
        owned.job_started()

        async def job() -> None:
            try:
                if give_way.is_set():  # revoked while queued: the next owner has it
                    return
                if await self._strategy.process(record, origin, give_way):
                    offsets.settle(record.offset)
            finally:
                owned.job_ended()

        await self._runner.submit(self._strategy.key(record, origin), job)

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
        if not await self._strategy.before_commit():
            self._stats["commit_skipped"] += 1
            return
        if not positions:
            return
        try:
            await self._consumer.commit(
                {tp: OffsetAndMetadata(position, "") for tp, (_, position) in positions.items()}
            )
        except CommitFailedError as exc:
            # The group moved on: the new owner redelivers from its last commit; handling is
            # idempotent (write-once outcomes, recorded orders), so that only repeats work.
            self._log.warning(self._prefix + "commit_failed", error=str(exc))
            return
        except KafkaError as exc:
            # The broker away: the same positions are committed at the next cycle.
            self._stats["commit_skipped"] += 1
            self._log.warning(self._prefix + "commit_failed", error=type(exc).__name__)
            return
        for offsets, position in positions.values():
            offsets.committed(position)

    def assign(self, assigned: list[TopicPartition]) -> None:
        for tp in assigned:
            self._owned.setdefault(tp, _Owned())
        self._log.info(
            self._prefix + "partitions_assigned", partitions=sorted(tp.partition for tp in assigned)
        )

    async def revoke(self, revoked: list[TopicPartition]) -> None:
        """Hand revoked partitions over quickly: their jobs are told to give way at once, the
        others get the deadline; only then is what settled committed. Jobs of partitions kept
        run on, unwaited (waiting for all froze the whole group for a dead worker's lock)."""
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
            self._prefix + "partitions_revoked",
            partitions=sorted(tp.partition for tp in owned),
            seconds=round(self._clock.monotonic() - started, 3),
        )


class RetrySetRuntime:
    """The retry set (deferred work in Redis) as a source: members due are claimed with a lease
    (hidden from other workers meanwhile), run through the same runner as fresh messages, and
    removed once settled; one not settled (the worker stopped, crashed, or gave way) comes due
    again when its lease runs out. Redis being away is waited out."""

    def __init__(
        self,
        store: OutcomeLedger,
        runner: KeyedRunner,
        strategy: Strategy[bytes],
        *,
        clock: Clock,
        stats: Counter[str],
        log_name: str,
        interval: float = 0.25,
        lease: float = 120.0,
        batch: int = 200,
    ) -> None:
        self._store = store
        self._runner = runner
        self._strategy = strategy
        self._clock = clock
        self._stats = stats
        self._interval = interval
        self._lease = lease
        self._batch = batch
        self._log = get_logger(log_name)

    async def run(self, stop: asyncio.Event) -> None:
        outages = 0
        while not stop.is_set():
            try:
                members = await self._store.claim_retries(
                    self._clock.time(), self._lease, self._batch
                )
            except REDIS_TROUBLE as exc:
                delay = OUTAGE_BACKOFF.backoff(outages, random.random)
                outages += 1
                self._log.warning("retry_claim_failed", error=type(exc).__name__)
                await sleep_unless(self._clock, delay, stop)
                continue
            outages = 0
            for member in members:
                await self._dispatch(member, stop)
            if len(members) < self._batch:
                await sleep_unless(self._clock, self._interval, stop)

    async def _dispatch(self, member: bytes, stop: asyncio.Event) -> None:
        async def job() -> None:
            if await self._strategy.process(member, RETRY_SET, stop):
                # Only now: until here a crash leaves the member to come due after its lease.
                await wait_out(
                    lambda: self._store.finish_retry(member),
                    errors=REDIS_TROUBLE, clock=self._clock, random=random.random,
                )  # fmt: skip

        await self._runner.submit(self._strategy.key(member, RETRY_SET), job)
