"""The repair tools' Kafka side: read a topic as it stands, fetch one record by its position,
list topics and consumer groups, publish exactly the bytes given.

Every await on the network has a deadline (`bound`, seconds): a broker that stops answering
ends the tool with `TimeoutError` instead of a hang. Topics are listed by an all-topics metadata
request, never by name (naming one could auto-create it), and a record is only ever read from a
topic that exists.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Self

from aiokafka import AIOKafkaConsumer, TopicPartition

from shared.adapters.kafka import start_admin, start_producer
from shared.ops.records import Position

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Callable, Iterable

    from aiokafka.admin import AIOKafkaAdminClient

    from shared.adapters.renewing_producer import RenewingProducer
    from shared.ops.render import Progress
    from shared.settings import Settings

CLIENT_ID = "paynotify-ops"
_POLL_MS = 200  # one fetch's wait; the deadline is on progress, not on one fetch
_GROUPS_AT_ONCE = 8  # consumer groups whose offsets are asked for at a time


@dataclass(frozen=True, slots=True)
class Record:
    """One record as read: what a redrive or replay republishes, untouched."""

    at: Position
    key: bytes | None
    value: bytes | None
    headers: tuple[tuple[str, bytes], ...]
    timestamp_ms: int


class Kafka:
    """An admin client, a group-less consumer (it commits nothing and joins no group) and,
    when asked for, a producer; all bounded by `timeout`. Use `async with Kafka.open(...)`."""

    def __init__(
        self,
        settings: Settings,
        admin: AIOKafkaAdminClient,
        consumer: AIOKafkaConsumer,
        *,
        timeout: float,
        clock: Callable[[], float],
    ) -> None:
        self._settings = settings
        self._admin = admin
        self._consumer = consumer
        self._timeout = timeout
        self._clock = clock
        self._producer: RenewingProducer | None = None

    @classmethod
    async def open(cls, settings: Settings, *, bound: float, clock: Callable[[], float]) -> Kafka:
        async with asyncio.timeout(bound):
            admin = await start_admin(settings, client_id=CLIENT_ID)
        consumer = AIOKafkaConsumer(
            bootstrap_servers=settings.kafka_bootstrap_servers,
            client_id=CLIENT_ID,
            group_id=None,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
        )
        try:
            async with asyncio.timeout(bound):
                await consumer.start()
        except BaseException:
            await admin.close()
            await consumer.stop()
            raise
        return cls(settings, admin, consumer, timeout=bound, clock=clock)

    async def close(self) -> None:
        # Closing waits on the network too: bounded, and every client is closed regardless.
        for close in (
            self._consumer.stop,
            self._admin.close,
            *([self._producer.stop] if self._producer is not None else []),
        ):
            try:
                async with asyncio.timeout(self._timeout):
                    await close()
            except TimeoutError:
                continue

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # --- metadata -----------------------------------------------------------------------------

    async def partitions(self) -> dict[str, int]:
        """Every topic the brokers know, with its partition count."""
        async with asyncio.timeout(self._timeout):
            described: list[dict[str, Any]] = await self._admin.describe_topics()
        return {
            entry["topic"]: len(entry.get("partitions") or [])
            for entry in described
            if entry.get("error_code", 0) == 0
        }

    async def bounds(self, tps: Iterable[TopicPartition]) -> dict[TopicPartition, tuple[int, int]]:
        """(first offset still kept, next offset to be written) of each partition."""
        wanted = list(tps)
        if not wanted:
            return {}
        async with asyncio.timeout(self._timeout):
            begins = await self._consumer.beginning_offsets(wanted)
            ends = await self._consumer.end_offsets(wanted)
        return {tp: (begins[tp], ends[tp]) for tp in wanted}

    async def group_offsets(self, topics: Iterable[str]) -> dict[str, dict[TopicPartition, int]]:
        """Each consumer group's committed offsets on `topics` (groups with none left out)."""
        names = set(topics)
        async with asyncio.timeout(self._timeout):
            listed = await self._admin.list_consumer_groups()
        groups = sorted({str(entry[0]) for entry in listed})
        gate = asyncio.Semaphore(_GROUPS_AT_ONCE)

        async def offsets(group: str) -> tuple[str, dict[TopicPartition, int]]:
            async with gate, asyncio.timeout(self._timeout):
                found = await self._admin.list_consumer_group_offsets(group)
            kept = {tp: meta.offset for tp, meta in found.items() if tp.topic in names}
            return group, {tp: offset for tp, offset in kept.items() if offset >= 0}

        answered = await asyncio.gather(*(offsets(group) for group in groups))
        return {group: found for group, found in answered if found}

    # --- reading ------------------------------------------------------------------------------

    async def scan(
        self, topic: str, partitions: int, *, progress: Progress | None = None
    ) -> AsyncIterator[Record]:
        """Every record of `topic` from its first kept offset up to the end it had when the scan
        began (later records are left for the next run), partition by partition in turn.
        `progress` is told how many records to expect, then advanced by each one read.
        Raises TimeoutError when no record arrives for `timeout` seconds while some are due."""
        tps = [TopicPartition(topic, p) for p in range(partitions)]
        bounds = await self.bounds(tps)
        ends = {tp: end for tp, (begin, end) in bounds.items() if end > begin}
        if progress is not None:
            progress.expect(sum(bounds[tp][1] - bounds[tp][0] for tp in ends))
        self._consumer.assign(list(ends))
        for tp in ends:
            self._consumer.seek(tp, bounds[tp][0])
        waiting = dict(ends)
        watch = _Stall(self._clock, self._timeout, topic)
        while waiting:
            batch = await self._poll(list(waiting))
            for tp, records in batch.items():
                for record in records:
                    if record.offset >= ends[tp]:
                        break
                    if progress is not None:
                        progress.advance()
                    yield _record(tp, record)
            for tp in list(waiting):
                position = await self._position(tp)
                watch.saw(tp, position)
                if position >= waiting[tp]:
                    del waiting[tp]
            watch.check()
        self._consumer.assign([])

    async def fetch(self, at: Position) -> Record | None:
        """The record at `at`, or None when the topic no longer keeps it (retention, compaction)
        or never had it."""
        tp = TopicPartition(at.topic, at.partition)
        begin, end = (await self.bounds([tp]))[tp]
        if not begin <= at.offset < end:
            return None
        self._consumer.assign([tp])
        self._consumer.seek(tp, at.offset)
        watch = _Stall(self._clock, self._timeout, at.topic)
        try:
            while True:
                for record in (await self._poll([tp])).get(tp, []):
                    if record.offset == at.offset:
                        return _record(tp, record)
                    if record.offset > at.offset:
                        return None  # compacted away
                position = await self._position(tp)
                if position > at.offset:
                    return None
                watch.saw(tp, position)
                watch.check()
        finally:
            self._consumer.assign([])

    async def _poll(self, tps: list[TopicPartition]) -> dict[TopicPartition, list[Any]]:
        async with asyncio.timeout(self._timeout):
            batch: dict[TopicPartition, list[Any]] = await self._consumer.getmany(
                *tps, timeout_ms=_POLL_MS, max_records=500
            )
        return batch

    async def _position(self, tp: TopicPartition) -> int:
        async with asyncio.timeout(self._timeout):
            position: int = await self._consumer.position(tp)
        return position

    # --- writing ------------------------------------------------------------------------------

    async def publish(
        self,
        topic: str,
        value: bytes,
        key: bytes | None,
        headers: tuple[tuple[str, bytes], ...] = (),
    ) -> Position:
        """Publish `value` and `key` byte for byte (acks=all, idempotent); the new position."""
        if self._producer is None:
            async with asyncio.timeout(self._timeout):
                self._producer = await start_producer(self._settings, client_id=CLIENT_ID)
        async with asyncio.timeout(self._timeout):
            sent = await self._producer.send_and_wait(
                topic, value, key=key, headers=list(headers) or None
            )
        return Position(topic, sent.partition, sent.offset)


def _record(tp: TopicPartition, record: Any) -> Record:
    headers = tuple((str(name), bytes(value)) for name, value in (record.headers or ()))
    return Record(
        at=Position(tp.topic, tp.partition, record.offset),
        key=record.key,
        value=record.value,
        headers=headers,
        timestamp_ms=int(record.timestamp),
    )


class _Stall:
    """Raises TimeoutError once no partition's position moved for `timeout` seconds: each
    fetch is bounded, and so is a read that keeps getting nothing."""

    def __init__(self, clock: Callable[[], float], timeout: float, topic: str) -> None:
        self._clock = clock
        self._timeout = timeout
        self._topic = topic
        self._positions: dict[TopicPartition, int] = {}
        self._moved = clock()

    def saw(self, tp: TopicPartition, position: int) -> None:
        if self._positions.get(tp) != position:
            self._positions[tp] = position
            self._moved = self._clock()

    def check(self) -> None:
        if self._clock() - self._moved > self._timeout:
            raise TimeoutError(f"reading {self._topic} made no progress for {self._timeout} s")
