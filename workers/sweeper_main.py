"""`paynotify sweeper`: wire the sweeper together and run it until SIGTERM or SIGINT.

The one place that builds the sweeper's collaborators: settings, Redis, the order book, the
lease, the platform client and the producer.
"""

from __future__ import annotations

import asyncio
import sys
from typing import TYPE_CHECKING

from shared.adapters.kafka import start_producer, start_when_available
from shared.adapters.order_book import OrderBook
from shared.adapters.redis_client import connect_redis
from shared.adapters.redis_lock import Locks
from shared.clock import Clock, SystemClock
from shared.domain.sweep import SweepSchedule
from shared.logs import get_logger
from shared.merchants import load_merchants
from shared.platform.client import PlatformClient
from shared.service import serve
from workers.sweeper import Sweeper, SweeperLimits

if TYPE_CHECKING:
    import argparse
    from collections.abc import Container

    from aiokafka import AIOKafkaProducer
    from redis.asyncio import Redis

    from shared.settings import Settings
    from workers.sweeper import OrderQuery, Publisher

LEASE_TTL = 10.0  # seconds: how soon a waiting instance takes over from a dead one
# Beyond one connection per query in flight: the lease, claims, rescheduling.
REDIS_HEADROOM = 8
CLAIM_HOLD = 120.0  # seconds: a query with the client's timeout finishes well within this


def sweeper_limits(settings: Settings) -> SweeperLimits:
    # Looks at the index often enough for the first check (90 s scaled) to be on time.
    poll = min(1.0, max(0.02, settings.scaled(90.0) / 20))
    hold = max(CLAIM_HOLD, 4 * settings.platform_timeout)
    return SweeperLimits(
        rate=settings.sweep_rate,
        concurrency=settings.sweep_concurrency,
        lease_ttl=LEASE_TTL,
        claim_hold=hold,
        poll=poll,
    )


def build_sweeper(
    settings: Settings,
    redis: Redis,
    platform: OrderQuery,
    producer: Publisher,
    *,
    clock: Clock,
    merchants: Container[str] | None = None,
    callbacks_topic: str | None = None,  # default: the deployment's (settings.topics)
    events_topic: str | None = None,
    dlq_topic: str | None = None,
    name: str = "sweeper",
) -> Sweeper:
    """The sweeper on the given connections, with the settings' schedule and limits.
    `merchants`: the ids the platform client has keys for (orders of others are not queried)."""
    schedule = SweepSchedule.scaled(
        time_scale=settings.time_scale, order_expiry=settings.order_expiry
    )
    return Sweeper(
        OrderBook.from_settings(redis, clock, settings),
        Locks(redis),
        platform,
        producer,
        clock=clock,
        schedule=schedule,
        limits=sweeper_limits(settings),
        callbacks_topic=callbacks_topic or settings.topics.callbacks,
        events_topic=events_topic or settings.topics.events,
        dlq_topic=dlq_topic or settings.topics.dlq,
        merchants=merchants,
        name=name,
        answer_sign_includes_envelope=settings.answer_sign_includes_envelope,
    )


async def run_sweeper(settings: Settings, stop: asyncio.Event, clock: Clock | None = None) -> None:
    clock = clock or SystemClock()
    log = get_logger("sweeper")
    merchants = load_merchants(settings.require_merchants_file())
    producer = await _start_producer(settings, stop, clock)
    if producer is None:  # stopped before Kafka answered
        return
    redis = connect_redis(
        settings.redis_url, max_connections=settings.sweep_concurrency + REDIS_HEADROOM
    )
    # The schedule is the sweeper's retry; the client adds none of its own.
    platform = PlatformClient.without_retries(
        settings, merchants, clock=clock, limit=settings.sweep_concurrency
    )
    sweeper = build_sweeper(
        settings, redis, platform, producer, clock=clock, merchants=frozenset(merchants)
    )
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
        await sweeper.stop()
        await task
    finally:
        await platform.close()
        await producer.stop()
        await redis.aclose()
        log.info("sweeper_stopped", **sweeper.stats)


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


def main(args: argparse.Namespace | None = None) -> int:  # noqa: ARG001 - no flags yet
    return serve("sweeper", run_sweeper)


if __name__ == "__main__":
    sys.exit(main())
