"""`paynotify requery MCH_ID MCH_ORDER`: ask the platform about one order now and, if it says
paid, settle it through the normal path (the manual 补单).

The platform's signed answer goes to the callbacks topic as a query-sourced envelope, built as
the sweeper builds its forwards (`shared.query_envelope`), keyed by the order: the workers
verify its signature with the merchant's keys and settle it with the usual dedupe, write-once
outcome and event. Nothing is decided here. An order already decided is only republished by the
workers (the same event id); an unpaid or unknown order is reported and nothing is sent.
"""

from __future__ import annotations

import asyncio
import uuid
from typing import TYPE_CHECKING

from shared import bootstrap
from shared.adapters.order_book import OrderBook
from shared.merchants import load_merchants
from shared.ops.kafka_io import Kafka
from shared.ops.redis_state import open_redis, recorded_event
from shared.ops.render import safe, summary
from shared.ops.tool import EXIT_FAILED, EXIT_OK, Console, UsageError, run_tool
from shared.protocol.errors import OrderNotFound, PlatformError, UnknownMerchant
from shared.protocol.fields import FieldError, check_text
from shared.protocol.payment import order_key
from shared.query_envelope import query_envelope

if TYPE_CHECKING:
    import argparse
    from collections.abc import Callable, Mapping

    from shared.merchants import Merchant
    from shared.protocol.models import OrderQueryAnswer
    from shared.settings import Settings


async def _what_redis_knows(
    settings: Settings, console: Console, mch_id: str, mch_order: str, *, bound: float
) -> None:
    """Say what the order book and the outcomes hold for the order (context for the
    operator; nothing depends on it)."""
    redis = open_redis(settings)
    try:
        async with asyncio.timeout(bound):
            record = await OrderBook(redis, console.clock).get(mch_id, mch_order)
        decided = await recorded_event(redis, order_key(mch_id, mch_order), bound=bound)
    except Exception as exc:  # context only: the requery goes on without it, and says so
        console.note(f"order book not read: {type(exc).__name__}")
        return
    finally:
        await redis.aclose()
    state = "no record" if record is None else f"{record.state}"
    console.say(f"order book: {state}; outcome recorded: {'yes' if decided else 'no'}")


async def query(
    settings: Settings,
    merchants: Mapping[str, Merchant],
    console: Console,
    mch_id: str,
    mch_order: str,
    *,
    bound: float,
) -> OrderQueryAnswer:
    """One order query, without the client's retries (an operator runs it again), bounded."""
    platform = bootstrap.platform_client(settings, merchants, clock=console.clock, limit=1)
    try:
        async with asyncio.timeout(bound):
            return await platform.query_order(mch_id, mch_order)
    finally:
        await platform.close()


async def run_requery(
    settings: Settings,
    console: Console,
    args: argparse.Namespace,
    new_id: Callable[[], str] = lambda: uuid.uuid4().hex,
) -> int:
    mch_id, mch_order = args.mch_id, args.mch_order
    for name, value in (("mch_id", mch_id), ("mch_order", mch_order)):
        try:
            check_text(name, value)
        except FieldError as exc:
            raise UsageError(str(exc)) from None
    merchants = load_merchants(settings.require_merchants_file())
    order = order_key(mch_id, mch_order)
    await _what_redis_knows(settings, console, mch_id, mch_order, bound=args.timeout)
    bound = max(args.timeout, settings.platform_timeout + 1.0)
    try:
        answer = await query(settings, merchants, console, mch_id, mch_order, bound=bound)
    except OrderNotFound:
        line = f"requery: {safe(order)}: the platform does not know the order (103); nothing sent"
        console.say(line + (" (dry run: nothing changed)" if args.dry_run else ""))
        return EXIT_FAILED
    except (PlatformError, UnknownMerchant) as exc:
        console.say(f"requery: {safe(order)}: the query failed: {safe(exc)}")
        return EXIT_FAILED
    report = answer.report
    if not report.paid:
        line = f"requery: {safe(order)}: the platform says unpaid; nothing sent"
        console.say(line + (" (dry run: nothing changed)" if args.dry_run else ""))
        return EXIT_OK
    envelope = query_envelope(
        answer,
        received_at=console.clock.time(),
        delivery_id=new_id(),
        answer_sign_includes_envelope=settings.answer_sign_includes_envelope,
    )
    topic = settings.topics.callbacks
    what = (
        f"{safe(order)}: paid ({report.amt} li of {report.mch_amt}"
        f"{', repeat payment ' + safe(report.mch_order) if report.repeat else ''})"
    )
    if args.dry_run:
        console.say(f"would send {what} to {topic} as delivery {envelope.delivery_id}")
        console.say(summary("requery", [("would send", 1)], dry_run=True))
        return EXIT_OK
    async with await Kafka.open(settings, bound=args.timeout, clock=console.clock.monotonic) as k:
        if topic not in await k.partitions():
            raise UsageError(f"the callbacks topic {topic} does not exist")
        sent = await k.publish(topic, envelope.encode(), order.encode())
    console.say(f"sent {what} to {sent} as delivery {envelope.delivery_id}")
    console.say(summary("requery", [("sent", 1)]))
    return EXIT_OK


def main(args: argparse.Namespace) -> int:
    return run_tool("requery", lambda settings, console: run_requery(settings, console, args))
