"""Bootstrap: the collaborators every process builds from its settings, built in one place
(cosmicpython's `bootstrap.py`). The ingress, the worker, the sweeper, the demo and the
benchmarks take their pay types, order book, outcome ledger and use cases from here, so a
setting means the same in each; the processes then compose them with their runtime (workers/)
or app (ingress/).
"""

from __future__ import annotations

import os
import random
from typing import TYPE_CHECKING

from shared.adapters.kafka import CLOUDEVENTS_HEADERS, TopicSink
from shared.adapters.order_book import OrderBook
from shared.adapters.outcomes import OutcomeStore
from shared.domain.decision import requery_schedule
from shared.domain.sweep import SweepSchedule
from shared.platform.client import ClientConfig, PlatformClient
from shared.platform.retry import RetryPolicy
from shared.protocol.catalog import PayTypeCatalog
from shared.service.settle import Reconciler
from shared.service.sweep import SweepOrder
from shared.tracing import Spans

if TYPE_CHECKING:
    from collections import Counter
    from collections.abc import Container, Mapping

    from redis.asyncio import Redis

    from shared.clock import Clock
    from shared.merchants import Merchant
    from shared.platform.client import CallObserver
    from shared.ports import OrderQuery, OutcomeLedger, Producer
    from shared.settings import Settings

LOCK_TTL_MS = 30_000  # a payment's reconciliation lock; renewed while the platform answers


def pay_types(settings: Settings) -> PayTypeCatalog:
    """The documented pay types with `PAYNOTIFY_PAY_TYPE_PATHS`' overrides: what the ingress
    accepts, the workers settle and the platform client asks for."""
    return PayTypeCatalog.documented().with_overrides(settings.pay_type_paths)


def platform_config(settings: Settings, *, retry: RetryPolicy | None = None) -> ClientConfig:
    """How the platform client talks to `PAYNOTIFY_PLATFORM_URL`; `retry`: its own retries of
    a failed call (default: the client's policy)."""
    return ClientConfig(
        base_url=settings.platform_url,
        pay_types=pay_types(settings),
        timeout=settings.platform_timeout,
        answer_sign_includes_envelope=settings.answer_sign_includes_envelope,
        retry=RetryPolicy() if retry is None else retry,
    )


def platform_client(
    settings: Settings,
    merchants: Mapping[str, Merchant],
    *,
    clock: Clock,
    limit: int,
    observe: CallObserver | None = None,
) -> PlatformClient:
    """The platform client of the processes that retry durably on their own schedule (worker,
    sweeper, `paynotify requery`): one try per call, so a slow platform never holds their work
    in a hidden retry loop. Closed by `close()`."""
    return PlatformClient.open(
        platform_config(settings, retry=RetryPolicy(retries=0)),
        merchants,
        clock=clock,
        random=random.random,
        limit=limit,
        observe=observe,
    )


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
        pay_types=pay_types(settings),
        policy=settings.order_records,
        schedule=requery_schedule(settings.time_scale),
        clock=clock,
        min_retry_delay=min(1.0, settings.scaled(1.0)),
        transfer_tolerance=settings.transfer_tolerance_li,
        replay_window=settings.replay_window,
        stats=stats,
    )


def sweep_order(
    settings: Settings,
    redis: Redis,
    platform: OrderQuery,
    producer: Producer,
    *,
    clock: Clock,
    merchants: Container[str] | None = None,
    callbacks_topic: str | None = None,  # default: the deployment's (settings.topics)
    events_topic: str | None = None,
    dlq_topic: str | None = None,
    name: str = "sweeper",
) -> SweepOrder:
    """The sweeping use case as the sweeper runs it: the settings' schedule and query rate
    (`PAYNOTIFY_SWEEP_RATE`), the order book on `redis`. `merchants`: the ids the platform
    client has keys for (orders of others are not queried)."""
    return SweepOrder(
        order_book(settings, redis, clock),
        platform,
        producer,
        clock=clock,
        schedule=sweep_schedule(settings),
        rate=settings.sweep_rate,
        callbacks_topic=callbacks_topic or settings.topics.callbacks,
        events_topic=events_topic or settings.topics.events,
        dlq_topic=dlq_topic or settings.topics.dlq,
        merchants=merchants,
        answer_sign_includes_envelope=settings.answer_sign_includes_envelope,
        spans=Spans.from_env(os.environ, "sweeper"),
        name=name,
    )
