"""Watching a chaos run: the workers' committed offsets against the callbacks topic's end, once a
second, and what the processes logged. Recovery times are computed from these (pure functions
below the sampler).

A fault has **recovered** at the first sample, after the fault ended, at which every message that
was on the callbacks topic when the fault began has been settled and committed: the partitions
that stood still are moving again and have caught up with what the fault held back.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import orjson
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient

if TYPE_CHECKING:
    from collections.abc import Iterable, Mapping, Sequence
    from pathlib import Path


@dataclass(frozen=True, slots=True)
class Sample:
    at: float  # Unix time
    committed: Mapping[int, int]  # partition -> the group's committed offset (0: none yet)
    ends: Mapping[int, int]  # partition -> end offset

    @property
    def lags(self) -> dict[int, int]:
        return {p: max(0, end - self.committed.get(p, 0)) for p, end in self.ends.items()}


class OffsetsMonitor:
    """Samples a consumer group's progress on one topic; a broker away only leaves a gap."""

    def __init__(self, bootstrap: str, group: str, topic: str, partitions: int) -> None:
        self._bootstrap = bootstrap
        self._group = group
        self._tps = [TopicPartition(topic, p) for p in range(partitions)]
        self.samples: list[Sample] = []
        self._admin: AIOKafkaAdminClient | None = None
        self._consumer: AIOKafkaConsumer | None = None

    async def run(self, every: float = 1.0) -> None:
        """Until cancelled."""
        try:
            while True:
                await self.sample()
                await asyncio.sleep(every)
        finally:
            await self.close()

    async def sample(self) -> Sample | None:
        try:
            async with asyncio.timeout(5):
                if self._admin is None or self._consumer is None:
                    await self._open()
                assert self._admin is not None
                assert self._consumer is not None
                offsets = await self._admin.list_consumer_group_offsets(self._group)
                ends = await self._consumer.end_offsets(self._tps)
        except Exception:  # a broker away, a coordinator moving: no sample this time
            await self.close()
            return None
        sample = Sample(
            time.time(),  # wall clock, as the fault records and the logs use
            {tp.partition: meta.offset for tp, meta in offsets.items() if tp in self._tps},
            {tp.partition: offset for tp, offset in ends.items()},
        )
        self.samples.append(sample)
        return sample

    async def _open(self) -> None:
        self._admin = AIOKafkaAdminClient(
            bootstrap_servers=self._bootstrap, request_timeout_ms=4000
        )
        self._consumer = AIOKafkaConsumer(
            bootstrap_servers=self._bootstrap, enable_auto_commit=False, request_timeout_ms=4000
        )
        await self._admin.start()
        await self._consumer.start()

    async def close(self) -> None:
        admin, consumer = self._admin, self._consumer
        self._admin = self._consumer = None
        with contextlib.suppress(Exception):
            if consumer is not None:
                await consumer.stop()
        with contextlib.suppress(Exception):
            if admin is not None:
                await admin.close()


def recovered_at(samples: Sequence[Sample], started: float, ended: float) -> float | None:
    """The first sample time, not before `ended`, at which every partition's committed offset
    reached the end offset it had at `started` (the last sample before the fault; the first
    one after it when there is none)."""
    before = [s for s in samples if s.at <= started]
    after = [s for s in samples if s.at > started]
    baseline = before[-1] if before else (after[0] if after else None)
    if baseline is None:
        return None
    for sample in after:
        if sample.at < ended:
            continue
        if all(sample.committed.get(p, 0) >= end for p, end in baseline.ends.items()):
            return sample.at
    return None


def stall_after(
    samples: Sequence[Sample], started: float, ended: float, grace: float = 3.0
) -> float:
    """How long, from the fault's start, a callbacks partition with messages waiting went
    without its committed offset moving, the longest such stall that began before the fault
    ended (or within `grace` after: a kill's effect shows at the next samples): the time until
    the fault's partitions moved again (0: none stood still)."""
    worst = 0.0
    since: dict[int, tuple[float, int]] = {}
    for sample in samples:
        if sample.at < started:
            continue
        for partition, lag in sample.lags.items():
            committed = sample.committed.get(partition, 0)
            start = since.get(partition)
            if lag == 0 or (start is not None and start[1] != committed):
                if start is not None:  # it moved (or caught up) here: the stall ends now
                    worst = max(worst, sample.at - start[0])
                since.pop(partition, None)
                if lag == 0:
                    continue
                start = None
            if start is None:
                if sample.at > ended + grace:
                    continue  # a stall that began after the fault is not its
                since[partition] = start = (sample.at, committed)
            worst = max(worst, sample.at - start[0])
    return worst


def longest_stalls(samples: Sequence[Sample]) -> dict[int, float]:
    """Per partition, the longest time it had messages waiting while its committed offset did
    not move (gaps in sampling, a broker away, count as standing still)."""
    found: dict[int, float] = {}
    since: dict[int, tuple[float, int]] = {}
    for sample in samples:
        for partition, lag in sample.lags.items():
            committed = sample.committed.get(partition, 0)
            if lag == 0:
                since.pop(partition, None)
                continue
            start = since.get(partition)
            if start is None or start[1] != committed:
                since[partition] = start = (sample.at, committed)
            found[partition] = max(found.get(partition, 0.0), sample.at - start[0])
    return found


def log_events(paths: Iterable[Path], names: set[str]) -> list[dict[str, Any]]:
    """Every JSON log line among `paths` whose event is in `names`, with `process` (the file's
    stem) added, oldest first."""
    found: list[dict[str, Any]] = []
    for path in paths:
        if not path.exists():
            continue
        with path.open("rb") as handle:
            for raw in handle:
                if not raw.startswith(b"{"):
                    continue
                try:
                    line = orjson.loads(raw)
                except orjson.JSONDecodeError:
                    continue
                if isinstance(line, dict) and line.get("event") in names:
                    line["process"] = path.stem
                    found.append(line)
    found.sort(key=lambda line: float(line.get("ts", 0)))
    return found
