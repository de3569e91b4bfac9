"""The worker's logic under other consumers, for comparison with `python -m workers`.

Each settles a callbacks message exactly as the worker's job does (decode the envelope, run
`Reconciler.handle` until settled, mark the outcome published) with the same collaborators
(Redis outcome store, platform client, acks=all producer); only the consuming differs:

- `sequential`: the straightforward consumer: take one message, settle it, commit, take the next.
- `faststream`: a FastStream Kafka subscriber as its documentation suggests for at-least-once:
  `ack_policy=AckPolicy.ACK` (commit after the handler returned) and `max_workers` consumers in
  the group (FastStream's concurrency "between partitions"; one message at a time in each).

    python -m benchmarks.consumers sequential|faststream [--max-workers N]

Configuration comes from the same environment variables as the worker (shared.settings).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal
import sys
from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING, Any

if not __package__:  # run as a script: make the repository root importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.structs import OffsetAndMetadata

from shared import bootstrap, topics
from shared.adapters.kafka import CallbackEnvelope, start_producer
from shared.adapters.redis_client import connect_redis
from shared.clock import SystemClock
from shared.logs import configure_logging
from shared.merchants import load_merchants
from shared.service.settle import Work
from shared.settings import Settings
from workers.__main__ import REDIS_HEADROOM

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Awaitable, Callable


@contextlib.asynccontextmanager
async def settler(settings: Settings) -> AsyncIterator[Callable[[bytes, str], Awaitable[None]]]:
    """`settle(raw, origin)`, wired as `workers.__main__.run_worker` wires the worker."""
    clock = SystemClock()
    merchants = load_merchants(settings.require_merchants_file())
    redis = connect_redis(
        settings.redis_url, max_connections=settings.worker_concurrency + REDIS_HEADROOM
    )
    producer = await start_producer(settings, client_id="bench-peer")
    platform = bootstrap.platform_client(
        settings, merchants, clock=clock, limit=settings.worker_concurrency
    )
    stats: Counter[str] = Counter()
    reconciler = bootstrap.reconciler(
        settings, redis, producer, platform, merchants, clock=clock, stats=stats
    )
    store = reconciler.store

    async def settle(raw: bytes, origin: str) -> None:
        work = Work(envelope=CallbackEnvelope.decode(raw), origin=origin)
        await reconciler.settle(work)
        await store.flush_published()  # as the worker does before it commits

    try:
        yield settle
    finally:
        await platform.close()
        await producer.stop()
        await redis.aclose()


async def run_sequential(settings: Settings, stop: asyncio.Event) -> None:
    consumer = AIOKafkaConsumer(
        topics.CALLBACKS,
        bootstrap_servers=settings.kafka_bootstrap_servers,
        group_id=settings.consumer_group,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
    )
    async with settler(settings) as settle:
        await consumer.start()
        try:
            while not stop.is_set():
                batch = await consumer.getmany(timeout_ms=200, max_records=1)
                for tp, records in batch.items():
                    for record in records:
                        await settle(record.value or b"", f"{tp.topic}/{tp.partition}")
                        await consumer.commit(
                            {TopicPartition(tp.topic, tp.partition): OffsetAndMetadata(
                                record.offset + 1, "")}
                        )  # fmt: skip
        finally:
            await consumer.stop()


async def run_faststream(settings: Settings, stop: asyncio.Event, max_workers: int) -> None:
    from faststream import AckPolicy  # noqa: PLC0415 - installed by `make bench` only
    from faststream.kafka import KafkaBroker  # noqa: PLC0415

    # FastStream resolves the handler's annotations at run time, so this is a runtime import.
    from faststream.kafka.annotations import KafkaMessage  # noqa: PLC0415, TC002

    async with settler(settings) as settle:
        broker = KafkaBroker(settings.kafka_bootstrap_servers)
        options: dict[str, Any] = {"max_workers": max_workers} if max_workers > 1 else {}

        @broker.subscriber(
            topics.CALLBACKS,
            group_id=settings.consumer_group,
            auto_offset_reset="earliest",
            ack_policy=AckPolicy.ACK,
            **options,
        )
        async def on_callback(message: KafkaMessage) -> None:
            # The raw value, as the worker decodes it (FastStream would make a dict of it).
            await settle(message.body, topics.CALLBACKS)

        await broker.start()
        try:
            await stop.wait()
        finally:
            await broker.stop()


async def _main(args: argparse.Namespace) -> None:
    settings = Settings.from_env()
    configure_logging(settings.log_level, settings.log_format)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    if args.kind == "sequential":
        await run_sequential(settings, stop)
    else:
        await run_faststream(settings, stop, args.max_workers)


def main() -> int:
    parser = argparse.ArgumentParser(description="the worker's logic under another consumer")
    parser.add_argument("kind", choices=("sequential", "faststream"))
    parser.add_argument("--max-workers", type=int, default=1)
    asyncio.run(_main(parser.parse_args()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
