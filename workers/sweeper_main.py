"""`paynotify sweeper`: wire the sweeper together and run it until SIGTERM or SIGINT.

The one place that builds the sweeper's collaborators: settings, Redis, the order book, the
lease, the platform client and the producer.
"""

from __future__ import annotations

import asyncio
import os
import socket
import sys
from collections import Counter
from typing import TYPE_CHECKING

from prometheus_client import Gauge

from shared import bootstrap
from shared.adapters.kafka import start_producer, start_when_available
from shared.adapters.kafka_readiness import KafkaCheck, TopicSpec, wait_for_topics
from shared.adapters.order_book import OrderBook, pending_figures
from shared.adapters.parked import PARKED_KEY, ParkedNotifications
from shared.adapters.redis_client import connect_redis
from shared.adapters.redis_lock import Locks
from shared.clock import Clock, SystemClock
from shared.logs import get_logger
from shared.merchants import LiveMerchants
from shared.merchants_reload import watching
from shared.probes import StatsCollector, new_registry, platform_calls, process_probes
from shared.process import serve
from workers.sweeper import Sweeper, SweeperLimits

if TYPE_CHECKING:
    import argparse
    from collections.abc import Mapping

    from aiokafka import AIOKafkaProducer
    from redis.asyncio import Redis

    from shared.merchants import Merchant
    from shared.service.sweep import SweepOrder
    from shared.settings import Settings

LEASE_TTL = 10.0  # seconds: how soon a waiting instance takes over from a dead one
# Beyond one connection per query in flight: the lease, claims, rescheduling.
REDIS_HEADROOM = 8
CLAIM_HOLD = 120.0  # seconds: a query with the client's timeout finishes well within this


def sweeper_limits(settings: Settings) -> SweeperLimits:
    # Looks at the index often enough for the first check (90 s scaled) to be on time.
    poll = min(1.0, max(0.02, settings.scaled(90.0) / 20))
    hold = max(CLAIM_HOLD, 4 * settings.platform_timeout)
    return SweeperLimits(
        concurrency=settings.sweep_concurrency,
        lease_ttl=LEASE_TTL,
        claim_hold=hold,
        poll=poll,
    )


def build_sweeper(settings: Settings, redis: Redis, orders: SweepOrder) -> Sweeper:
    """The sweeper's loop on `orders` (`bootstrap.sweep_order`), with the settings' limits, and
    publishing what the ingress parked."""
    return Sweeper(
        orders, Locks(redis), limits=sweeper_limits(settings), parked=ParkedNotifications(redis)
    )


async def run_sweeper(settings: Settings, stop: asyncio.Event, clock: Clock | None = None) -> None:
    clock = clock or SystemClock()
    merchants = LiveMerchants(settings.require_merchants_file())
    redis = connect_redis(
        settings.redis_url, max_connections=settings.sweep_concurrency + REDIS_HEADROOM
    )
    probes = SweeperProbes(clock, redis)
    names = settings.topics
    kafka = KafkaCheck(
        settings, TopicSpec.of(settings, (names.callbacks, names.events, names.dlq)), clock
    )
    try:
        async with (
            watching(merchants, every=settings.merchants_reload, clock=clock),
            process_probes(
                settings,
                clock,
                redis,
                kafka=kafka,
                name="sweeper",
                running=probes.running,
                registry=probes.registry,
                refresh=probes.refresh,
            ),
        ):
            if not await wait_for_topics(kafka, stop=stop, clock=clock, log=get_logger("sweeper")):
                return  # stopped before the topics were there
            await _run_sweeper(settings, stop, clock, merchants, redis, probes)
    finally:
        await kafka.close()
        await redis.aclose()


async def _run_sweeper(  # noqa: PLR0917 - the collaborators run_sweeper built
    settings: Settings,
    stop: asyncio.Event,
    clock: Clock,
    merchants: Mapping[str, Merchant],
    redis: Redis,
    probes: SweeperProbes,
) -> None:
    log = get_logger("sweeper")
    producer = await _start_producer(settings, stop, clock)
    if producer is None:  # stopped before Kafka answered
        return
    # The schedule is the sweeper's retry; the client adds none of its own.
    platform = bootstrap.platform_client(
        settings,
        merchants,
        clock=clock,
        limit=settings.sweep_concurrency,
        observe=probes.platform_call,
    )
    # Who holds the lease, in `paynotify status`: the pod's (or machine's) name and the pid.
    instance = f"{socket.gethostname()}:{os.getpid()}"
    orders = bootstrap.sweep_order(
        settings, redis, platform, producer, clock=clock, merchants=merchants, name=instance
    )
    sweeper = build_sweeper(settings, redis, orders)
    probes.sweeper = sweeper
    try:
        log.info(
            "sweeper_started",
            rate=settings.sweep_rate,
            concurrency=settings.sweep_concurrency,
            expiry=settings.scaled(settings.order_expiry),
        )
        task = asyncio.create_task(sweeper.run())
        stopped = asyncio.create_task(stop.wait())
        # A sweeper that fails ends the process (with its error) rather than idling unseen.
        await asyncio.wait({task, stopped}, return_when=asyncio.FIRST_COMPLETED)
        stopped.cancel()
        probes.sweeper = None
        await sweeper.stop()
        await task
    finally:
        probes.sweeper = None
        await platform.close()
        await producer.stop()
        log.info("sweeper_stopped", **sweeper.stats)


class SweeperProbes:
    """What the sweeper's /metrics and /readyz report (shared.probes.process_probes): its event
    counters, whether this instance holds the lease, and the pending orders, all and overdue
    (due before now: a growing figure means the sweep does not keep up). Ready: sweeping or
    waiting for the lease, the brokers show the callbacks topic, Redis answers."""

    def __init__(self, clock: Clock, redis: Redis) -> None:
        self.clock, self.redis = clock, redis
        self.book = OrderBook(redis, clock)  # for the index's figures
        self.sweeper: Sweeper | None = None
        self.stats: Counter[str] = Counter()  # the sweeper's, once it runs
        self.registry = new_registry("sweeper")
        self.registry.register(
            StatsCollector("sweeper", self.stats, "What the sweeper did, by event.")
        )
        self.platform_call = platform_calls(self.registry)
        Gauge(
            "paynotify_sweeper_leading",
            "1 while this instance holds the sweeper's lease (one instance sweeps at a time).",
            registry=self.registry,
        ).set_function(lambda: 1 if self.sweeper is not None and self.sweeper.leading else 0)
        self.pending = Gauge(
            "paynotify_sweeper_pending_orders",
            "Orders in the sweeper's index, all (pending) and due before now (overdue).",
            ["state"],
            registry=self.registry,
        )
        self.parked = Gauge(
            "paynotify_sweeper_parked_notifications",
            "Notifications the ingress parked because Kafka did not take them, not yet "
            "published by the sweeper (shared.adapters.parked).",
            registry=self.registry,
        )

    async def running(self) -> tuple[bool, str]:
        if self.sweeper is None:
            return False, "not sweeping (starting or stopping)"
        return True, "ok"

    async def refresh(self) -> None:
        if self.sweeper is not None:
            self.stats.clear()
            self.stats.update(self.sweeper.stats)
        try:
            pending, overdue = await pending_figures(self.book, self.clock.time())
            self.pending.labels("pending").set(pending)
            self.pending.labels("overdue").set(overdue)
            self.parked.set(await self.redis.hlen(PARKED_KEY))
        except Exception:  # Redis away: the last figures stay; /readyz says why
            return


async def _start_producer(
    settings: Settings, stop: asyncio.Event, clock: Clock
) -> AIOKafkaProducer | None:
    """The producer, once the broker answers (None when stopped meanwhile)."""
    return await start_when_available(
        lambda: start_producer(settings, client_id="paynotify-sweeper"),
        stop=stop,
        clock=clock,
        log=get_logger("sweeper"),
    )


def main(args: argparse.Namespace | None = None) -> int:
    return serve("sweeper", run_sweeper, args)


if __name__ == "__main__":
    sys.exit(main())
