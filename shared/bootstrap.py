"""Bootstrap: the collaborators every process builds from its settings, built in one place
(cosmicpython's `bootstrap.py`). The worker, the sweeper, the demo and the benchmarks take
their order book, outcome ledger and settling use case from here, so a setting means the same
in each; the processes then compose them with their runtime (workers/) or app (ingress/).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from shared.adapters.kafka import CLOUDEVENTS_HEADERS, TopicSink
from shared.adapters.order_book import OrderBook
from shared.adapters.outcomes import OutcomeStore
from shared.domain.decision import requery_schedule
from shared.domain.sweep import SweepSchedule
from shared.protocol.catalog import PayTypeCatalog
from shared.service.settle import Reconciler

if TYPE_CHECKING:
    from collections import Counter
    from collections.abc import Mapping

    from redis.asyncio import Redis

    from shared.clock import Clock
    from shared.merchants import Merchant
    from shared.ports import OrderQuery, OutcomeLedger, Producer
    from shared.settings import Settings

LOCK_TTL_MS = 30_000  # a payment's reconciliation lock; renewed while the platform answers


def sweep_schedule(settings: Settings) -> SweepSchedule:
    """When the sweeper looks at a pending order, and when it expires (time-scaled)."""
    return SweepSchedule.scaled(time_scale=settings.time_scale, order_expiry=settings.order_expiry)


def retention_seconds(settings: Settings) -> int:
    """How long order records and outcomes are kept: the order's expiry plus
    `PAYNOTIFY_OUTCOME_TTL_DAYS`. One figure for both: an outcome is decided after its record
    was recorded, so it outlives the record, and a payment once decided stays decided for as
    long as anything about it is kept."""
    return int(sweep_schedule(settings).expiry) + 1 + settings.outcome_ttl_days * 86_400


def order_book(settings: Settings, redis: Redis, clock: Clock) -> OrderBook:
    """The order book: new orders scheduled for the sweeper, records kept `retention_seconds`."""
    return OrderBook(
        redis, clock, schedule=sweep_schedule(settings), record_ttl=retention_seconds(settings)
    )


def outcome_ledger(settings: Settings, redis: Redis) -> OutcomeStore:
    """The outcome ledger on Redis: outcomes kept `retention_seconds`, each write waiting for
    `PAYNOTIFY_REDIS_WAIT_REPLICAS` replicas (docs/scaling.md, "Failover semantics")."""
    return OutcomeStore(
        redis,
        outcome_ttl_seconds=retention_seconds(settings),
        lock_ttl_ms=LOCK_TTL_MS,
        wait_replicas=settings.redis_wait_replicas,
        wait_timeout_ms=settings.redis_wait_timeout_ms,
    )


def reconciler(
    settings: Settings,
    redis: Redis,
    producer: Producer,
    platform: OrderQuery,
    merchants: Mapping[str, Merchant],
    *,
    clock: Clock,
    stats: Counter[str],
    store: OutcomeLedger | None = None,
) -> Reconciler:
    """The settling use case as every worker runs it (the benchmarks' consumers too); `store`:
    the ledger when the caller needs its own hold of it (else `outcome_ledger`)."""
    return Reconciler(
        store=outcome_ledger(settings, redis) if store is None else store,
        platform=platform,
        merchants=merchants,
        events=TopicSink(producer, settings.topics.events, CLOUDEVENTS_HEADERS),
        dlq=TopicSink(producer, settings.topics.dlq),
        pay_types=PayTypeCatalog.documented().with_overrides(settings.pay_type_paths),
        policy=settings.order_records,
        schedule=requery_schedule(settings.time_scale),
        clock=clock,
        min_retry_delay=min(1.0, settings.scaled(1.0)),
        transfer_tolerance=settings.transfer_tolerance_li,
        replay_window=settings.replay_window,
        stats=stats,
    )
