"""The repair tools' Redis side: read-only figures for `paynotify status`, and a recorded
outcome event for `paynotify replay`.

Figures come through the adapters that own the keys (the order book, the outcome store, the
parked hash), never from key names of our own, so a change of layout is made in one place.
Every call has a deadline (`bound`, seconds).
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import TYPE_CHECKING

from shared.adapters.order_book import SWEEPER_LEASE_KEY, OrderBook, pending_figures
from shared.adapters.outcomes import OutcomeStore, outcome_key, retry_figures
from shared.adapters.parked import PARKED_KEY
from shared.adapters.redis_client import connect_redis
from shared.domain.orders import CorruptRecordError

if TYPE_CHECKING:
    from redis.asyncio import Redis

    from shared.clock import Clock
    from shared.domain.sweep import SweepMark
    from shared.settings import Settings

# The outcome store is only read here; its TTLs are not used.
_UNUSED_TTL = 1
_CONNECTIONS = 4


@dataclass(frozen=True, slots=True)
class Lease:
    """The sweeper's lease as Redis has it: `holder/random` (the holder's host and pid, as the
    sweeper names itself; None for a token without a name) and a prefix of the token, which
    tells two runs of one holder apart."""

    held: bool
    token_prefix: str | None
    expires_in: float | None  # seconds
    holder: str | None = None


@dataclass(frozen=True, slots=True)
class RedisFigures:
    pending: int
    overdue: int  # pending orders whose next look was due before now
    retries: int  # deferred work in the retry set
    retries_due: int
    parked: int  # notifications the ingress parked, not yet published by the sweeper
    lease: Lease
    # The leader's last look at the pending index (`SweepMark`); None: none recorded (no
    # sweeper led within the mark's week); `last_run_error`: a mark that does not read.
    last_run: SweepMark | None = None
    last_run_error: str | None = None


def open_redis(settings: Settings) -> Redis:
    return connect_redis(settings.redis_url, max_connections=_CONNECTIONS)


async def read_figures(redis: Redis, clock: Clock, *, bound: float) -> RedisFigures:
    now = clock.time()
    book = OrderBook(redis, clock)
    store = OutcomeStore(redis, outcome_ttl_seconds=_UNUSED_TTL, lock_ttl_ms=_UNUSED_TTL)
    async with asyncio.timeout(bound):
        pending, overdue = await pending_figures(book, now)
        retries, retries_due = await retry_figures(store, now)
        parked = int(await redis.hlen(PARKED_KEY))
        token = await redis.get(SWEEPER_LEASE_KEY)
        ttl_ms = int(await redis.pttl(SWEEPER_LEASE_KEY))
        try:
            last_run, last_run_error = await book.last_sweep(), None
        except CorruptRecordError as exc:
            last_run, last_run_error = None, str(exc)
    text = None if token is None else _text(token)
    lease = Lease(
        held=text is not None,
        token_prefix=None if text is None else text.rpartition("/")[2][:8],
        expires_in=ttl_ms / 1000 if ttl_ms >= 0 else None,
        holder=text.rpartition("/")[0] or None if text is not None else None,
    )
    return RedisFigures(
        pending, overdue, retries, retries_due, parked, lease, last_run, last_run_error
    )


async def recorded_event(redis: Redis, order: str, *, bound: float) -> bytes | None:
    """The outcome event recorded for a payment (`mch_id:mch_order`): the bytes the workers
    published, kept until the outcome expires (`PAYNOTIFY_OUTCOME_TTL_DAYS`)."""
    async with asyncio.timeout(bound):
        event = await redis.hget(outcome_key(order), "event")
    return event if isinstance(event, bytes) else None


def _text(token: bytes | str) -> str:
    # Printable whatever Redis holds: shown to an operator, never trusted.
    text = token.decode("ascii", "replace") if isinstance(token, bytes) else token
    return "".join(c if c.isprintable() else "?" for c in text[:_SHOWN])


_SHOWN = 120  # characters of a lease token shown, at most
