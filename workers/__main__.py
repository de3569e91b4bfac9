"""`paynotify worker` / `python -m workers`: wire the worker together and run it.

This is the one place that builds the worker's collaborators (settings, Redis, Kafka, the
platform client, the outcome store) and hands them to the code that uses them.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import sys
from collections import Counter
from typing import TYPE_CHECKING

from aiokafka import AIOKafkaConsumer
from prometheus_client import Gauge

from shared import bootstrap
from shared.adapters.kafka import (
    start_producer,
    start_when_available,
)
from shared.adapters.kafka_readiness import KafkaCheck, TopicSpec, wait_for_topics
from shared.adapters.outcomes import OutcomeStore, retry_figures
from shared.adapters.redis_client import connect_redis
from shared.clock import Clock, SystemClock
from shared.logs import get_logger
from shared.merchants import LiveMerchants
from shared.merchants_reload import watching
from shared.probes import StatsCollector, new_registry, platform_calls, process_probes
from shared.process import serve
from shared.protocol.payment import order_fields
from shared.tracing import Spans
from workers.consumer import callbacks_consumer, retries_consumer
from workers.keyed import KeyedRunner
from workers.orders_consumer import OrdersConsumer

if TYPE_CHECKING:
    import argparse
    from collections.abc import Mapping

    from redis.asyncio import Redis

    from shared.adapters.replication import ReplicatedWrites
    from shared.merchants import Merchant
    from shared.settings import Settings

# Beyond one connection per message in flight: the retry poller, the orders consumer, commits.
REDIS_HEADROOM = 16
STATS_EVERY = 10.0  # seconds between the worker's counters in the log


async def run_worker(settings: Settings, stop: asyncio.Event, clock: Clock | None = None) -> None:
    clock = clock or SystemClock()
    merchants = LiveMerchants(settings.require_merchants_file())
    redis = connect_redis(
        settings.redis_url, max_connections=settings.worker_concurrency + REDIS_HEADROOM
    )
    stats: Counter[str] = Counter()
    runner = KeyedRunner(settings.worker_concurrency)
    consumer = AIOKafkaConsumer(
        bootstrap_servers=settings.kafka_bootstrap_servers,
        group_id=settings.consumer_group,
        client_id="paynotify-worker",
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        session_timeout_ms=10_000,
        heartbeat_interval_ms=3_000,
        max_poll_interval_ms=300_000,
    )
    names = settings.topics
    kafka = KafkaCheck(
        settings, TopicSpec.of(settings, (names.callbacks, names.events, names.dlq, names.orders)),
        clock,
    )  # fmt: skip
    probes = WorkerProbes(settings, clock, redis, consumer, runner, stats)
    try:
        async with (
            watching(merchants, every=settings.merchants_reload, clock=clock),
            probes.serving(kafka),
        ):
            if not await wait_for_topics(kafka, stop=stop, clock=clock, log=get_logger("worker")):
                return  # stopped before the topics were there
            await _run_worker(
                settings, stop, clock, merchants, redis, consumer, runner, stats, probes
            )
    finally:
        await consumer.stop()  # a second stop is nothing; a never-started consumer is closed
        await kafka.close()
        await redis.aclose()


async def _run_worker(  # noqa: PLR0917 - the collaborators run_worker built
    settings: Settings,
    stop: asyncio.Event,
    clock: Clock,
    merchants: Mapping[str, Merchant],
    redis: Redis,
    consumer: AIOKafkaConsumer,
    runner: KeyedRunner,
    stats: Counter[str],
    probes: WorkerProbes,
) -> None:
    log = get_logger("worker")
    # A broker that is away at start-up is waited for, never a reason to exit.
    producer = await start_when_available(
        lambda: start_producer(settings, client_id="paynotify-worker"),
        stop=stop,
        clock=clock,
        log=log,
    )
    if producer is None:  # stopped before Kafka answered
        return
    # The workers retry durably themselves (the retry set), so the client does not retry.
    platform = bootstrap.platform_client(
        settings,
        merchants,
        clock=clock,
        limit=settings.worker_concurrency,
        observe=probes.platform_call,
    )
    store = bootstrap.outcome_ledger(settings, redis)
    reconciler = bootstrap.reconciler(
        settings, redis, producer, platform, merchants, clock=clock, stats=stats, store=store
    )
    probes.writes = store.writes
    callbacks = callbacks_consumer(
        consumer,
        settings.topics.callbacks,
        runner,
        reconciler.settle,
        store=store,
        dlq=reconciler.dlq,
        clock=clock,
        stats=stats,
        spans=Spans.from_env(os.environ, "worker"),
    )
    retries = retries_consumer(
        store,
        runner,
        reconciler.settle,
        dlq=reconciler.dlq,
        clock=clock,
        stats=stats,
        interval=min(0.25, settings.scaled(1.0)),
    )
    # Orders published by merchant systems on paynotify.orders land in the order book here.
    orders = OrdersConsumer(
        settings,
        bootstrap.order_book(settings, redis, clock),
        producer=producer,
        clock=clock,
        merchants=merchants,
    )
    try:
        callbacks.subscribe()
        started = await start_when_available(
            lambda: _started(consumer), stop=stop, clock=clock, log=log
        )
        if started is None:
            return  # stopped before the broker answered
        probes.started = True
        log.info(
            "worker_started", group=settings.consumer_group, concurrency=settings.worker_concurrency
        )
        async with asyncio.TaskGroup() as group:
            group.create_task(retries.run(stop))
            group.create_task(_report(stats, stop, runner, reconciler.attempt_deadline))
            orders_task = group.create_task(orders.run())
            await callbacks.run(stop)
            await orders.stop()
            await orders_task
    finally:
        probes.started = False
        probes.writes = None
        still_running = await runner.cancel()
        if still_running:
            log.error("jobs_not_stopped", jobs=still_running)
        await consumer.stop()
        await platform.close()
        await producer.stop()
        await store.aclose()
        log.info("worker_stopped", **stats)


class WorkerProbes:
    """The worker's /healthz, /readyz and /metrics (`PAYNOTIFY_METRICS_PORT`; none when 0).

    Ready: consuming (started, not stopping), the brokers show the callbacks topic, Redis answers
    a PING, and (with PAYNOTIFY_REDIS_WAIT_REPLICAS) the last outcome write reached its replicas.
    Metrics: the worker's event counters, jobs held, consumer lag per partition, retries
    scheduled and due, and what every process exports (shared.probes.new_registry)."""

    def __init__(  # noqa: PLR0917 - what it reports on
        self,
        settings: Settings,
        clock: Clock,
        redis: Redis,
        consumer: AIOKafkaConsumer,
        runner: KeyedRunner,
        stats: Counter[str],
    ) -> None:
        self.settings, self.clock, self.redis, self.consumer = settings, clock, redis, consumer
        # For the retry set's figures (the TTLs are not used).
        self.store = OutcomeStore(redis, outcome_ttl_seconds=1, lock_ttl_ms=1)
        self.started = False
        self.writes: ReplicatedWrites | None = None  # the running reconciler's waited writes
        self.registry = new_registry("worker")
        self.registry.register(
            StatsCollector("worker", stats, "What the worker did, by event (as in worker_stats).")
        )
        self.platform_call = platform_calls(self.registry)
        Gauge(
            "paynotify_worker_jobs_held",
            "Messages taken from Kafka and not settled yet (running or queued behind their key).",
            registry=self.registry,
        ).set_function(lambda: runner.held)
        self.lag = Gauge(
            "paynotify_worker_consumer_lag",
            "Messages on the partition after the worker's position (last known high watermark).",
            ["topic", "partition"],
            registry=self.registry,
        )
        self.retries = Gauge(
            "paynotify_worker_retries",
            "Messages in the durable retry set, all (scheduled) and due now (due).",
            ["state"],
            registry=self.registry,
        )

    def serving(self, kafka: KafkaCheck) -> contextlib.AbstractAsyncContextManager[None]:
        return process_probes(
            self.settings,
            self.clock,
            self.redis,
            kafka=kafka,
            name="worker",
            running=self._consuming,
            registry=self.registry,
            refresh=self._refresh,
            extra={"redis_replicas": self._replicated}
            if self.settings.redis_wait_replicas
            else None,
        )

    async def _consuming(self) -> tuple[bool, str]:
        return (True, "ok") if self.started else (False, "not consuming (starting or stopping)")

    async def _replicated(self) -> tuple[bool, str]:
        """Unready while outcome writes fall short of their replicas (they are retried, and
        nothing is published for them): the last waited write decides."""
        shortfall = self.writes.last_shortfall if self.writes is not None else None
        return (True, "ok") if shortfall is None else (False, f"outcome writes: {shortfall}")

    async def _refresh(self) -> None:
        self.lag.clear()
        for tp in self.consumer.assignment():
            high = self.consumer.highwater(tp)
            if high is None:
                continue
            with contextlib.suppress(Exception):  # no position yet (just assigned): no figure
                position = await self.consumer.position(tp)
                self.lag.labels(tp.topic, str(tp.partition)).set(max(0, high - position))
        try:
            scheduled, due = await retry_figures(self.store, self.clock.time())
            self.retries.labels("scheduled").set(scheduled)
            self.retries.labels("due").set(due)
        except Exception:
            return


async def _started(consumer: AIOKafkaConsumer) -> bool:
    await consumer.start()
    return True


async def _report(
    stats: Counter[str], stop: asyncio.Event, runner: KeyedRunner, attempt_deadline: float
) -> None:
    """The counters every STATS_EVERY seconds, and the watchdog: a job running longer than its
    attempts can take (each attempt is bounded) is reported with its order and age."""
    log = get_logger("worker.stats")
    bound = attempt_deadline * 3 + 60
    while not stop.is_set():
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(STATS_EVERY):
                await stop.wait()
        overdue = runner.overdue(bound)
        stats["jobs_overdue"] = len(overdue)
        for key, age in overdue[:10]:
            log.error("job_overdue", **order_fields(key), age=round(age, 1), bound=bound)
        log.info("worker_stats", **stats)


def main(args: argparse.Namespace | None = None) -> int:
    return serve("worker", run_worker, args)


if __name__ == "__main__":
    sys.exit(main())
