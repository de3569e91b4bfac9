"""Footprint benchmark: what one payment costs Redis, for the capacity model (docs/scaling.md).

On a redis-server of its own (the local stack's settings: AOF, `appendfsync always`), through the
real adapters (`OrderBook`, `OutcomeStore`) and a real CloudEvent:
- `settled`: each payment's order recorded, then settled as the worker does (`begin`, `decide`
  with the record, the pending index's `ZREM`, `mark_published` per batch), `--concurrency` at once;
- `pending`: orders recorded only (the record and its pending-index member), as before any
  notification.
For each: Redis memory per payment (`used_memory` before and after, divided by the count), the
Redis commands per payment (`INFO commandstats`, scripts' inner calls included), and Redis CPU per
payment (`used_cpu_user` + `used_cpu_sys`): with the workers' round trips per payment, the
figures a Redis shard's capacity is derived from.

    .venv/bin/python -m benchmarks.footprint [--payments 20000] [--concurrency 256]
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

if not __package__:  # run as a script: make the repository root importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.common import ORDER_AMOUNT, PAY_TYPE, finish, headline, log, print_table
from devtools.stack.local import LocalStack, free_port
from shared import bootstrap, trace
from shared.adapters.redis_client import connect_redis
from shared.clock import SystemClock
from shared.domain import events
from shared.domain.orders import OrderRecord
from shared.ports import Locked
from shared.protocol.payment import order_key
from shared.settings import Settings

if TYPE_CHECKING:
    from shared.adapters.order_book import OrderBook
    from shared.adapters.outcomes import OutcomeStore

MCH_ID = "m-bench"
MARK_BATCH = 64  # outcomes marked published at once, about a commit cycle's batch


def _event(mch_order: str, now: float) -> bytes:
    outcome = events.PaymentReconciled(
        type=events.EventType.PAYMENT_SUCCEEDED,
        mch_id=MCH_ID,
        mch_order=mch_order,
        origin_order=None,
        pay_type=PAY_TYPE,
        amt=ORDER_AMOUNT,
        mch_amt=ORDER_AMOUNT,
        amt_type="cny",
        paid_at=int(now),
        source="notification",
        delivery_ids=("2b7c0e6a-5a43-4f0c-9f7e-2d0f3c9a1b11",),
        key_id="k1",
        queried_at=int(now),
        answer=events.AnswerStatus.PAID,
        requeries=0,
    )
    return events.encode(outcome, time=now, trace=trace.start())


async def _info(redis: Any) -> dict[str, float]:
    memory, cpu, stats = await asyncio.gather(
        redis.info("memory"), redis.info("cpu"), redis.info("commandstats")
    )
    calls = sum(int(entry["calls"]) for entry in stats.values())
    return {
        "memory": float(memory["used_memory"]),
        "cpu": float(cpu["used_cpu_user"]) + float(cpu["used_cpu_sys"]),
        "calls": float(calls),
    }


def _per_payment(before: dict[str, float], after: dict[str, float], count: int) -> dict[str, Any]:
    return {
        "payments": count,
        "bytes_per_payment": round((after["memory"] - before["memory"]) / count),
        # minus the INFO calls of the measurement itself (three before, three after)
        "commands_per_payment": round((after["calls"] - before["calls"] - 3) / count, 2),
        "redis_cpu_us_per_payment": round((after["cpu"] - before["cpu"]) / count * 1e6, 1),
    }


async def _settle(store: OutcomeStore, book: OrderBook, mch_order: str) -> str:
    now = time.time()
    await book.record(OrderRecord(MCH_ID, mch_order, ORDER_AMOUNT, PAY_TYPE, int(now)))
    key = order_key(MCH_ID, mch_order)
    began = await store.begin(key, MCH_ID, mch_order)
    if not isinstance(began, Locked):
        raise TypeError(f"{mch_order}: expected the lock, got {began!r}")
    await store.decide(
        key,
        began.token,
        event_type=str(events.EventType.PAYMENT_SUCCEEDED),
        event_id=events.event_id(events.EventType.PAYMENT_SUCCEEDED, MCH_ID, mch_order),
        event=_event(mch_order, now),
        decided_at=now,
        settle_record=(MCH_ID, mch_order),
    )
    return key


async def _run(url: str, payments: int, concurrency: int) -> dict[str, Any]:
    settings = Settings()
    redis = connect_redis(url, max_connections=concurrency + 8)
    try:
        store = bootstrap.outcome_ledger(settings, redis)
        book = bootstrap.order_book(settings, redis, SystemClock())
        gate = asyncio.Semaphore(concurrency)
        decided: list[str] = []

        async def one(i: int) -> None:
            async with gate:
                decided.append(await _settle(store, book, f"S-{i:08d}"))
                if len(decided) >= MARK_BATCH:
                    batch = decided[:]
                    decided.clear()
                    await store.mark_published(batch)

        before = await _info(redis)
        started = time.monotonic()
        await asyncio.gather(*(one(i) for i in range(payments)))
        await store.mark_published(decided)
        settled_s = time.monotonic() - started
        after = await _info(redis)
        settled = _per_payment(before, after, payments) | {
            "case": "settled",
            "per_second": round(payments / settled_s),
        }

        async def pend(i: int) -> None:
            async with gate:
                await book.record(
                    OrderRecord(MCH_ID, f"P-{i:08d}", ORDER_AMOUNT, PAY_TYPE, int(time.time()))
                )

        before = after
        started = time.monotonic()
        await asyncio.gather(*(pend(i) for i in range(payments)))
        pending_s = time.monotonic() - started
        after = await _info(redis)
        pending = _per_payment(before, after, payments) | {
            "case": "pending",
            "per_second": round(payments / pending_s),
        }
        sample = order_key(MCH_ID, "S-00000000")
        keys = {
            "outcome": await redis.memory_usage(f"pn:outcome:{{{sample}}}"),
            "order record (settled)": await redis.memory_usage(f"pn:order:{{{sample}}}"),
        }
        return {"cases": [settled, pending], "key_bytes": keys}
    finally:
        await redis.aclose()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--payments", type=int, default=20_000)
    parser.add_argument("--concurrency", type=int, default=256)
    args = parser.parse_args()
    state = Path(tempfile.mkdtemp(prefix="paynotify-footprint-"))
    stack = LocalStack(state, kafka_port=free_port(), redis_port=free_port())
    try:
        stack.start_redis()
        log(f"{args.payments} payments against redis-server on {stack.redis_url}")
        figures = asyncio.run(_run(stack.redis_url, args.payments, args.concurrency))
    finally:
        stack.stop_redis()
        shutil.rmtree(state, ignore_errors=True)
    columns = (
        "case", "payments", "per_second", "bytes_per_payment", "commands_per_payment",
        "redis_cpu_us_per_payment",
    )  # fmt: skip
    print_table("Redis per payment", figures["cases"], columns)
    for name, size in figures["key_bytes"].items():
        print(f"  MEMORY USAGE of one {name}: {size} bytes")
    settled = figures["cases"][0]
    finish(
        "footprint",
        {"concurrency": args.concurrency, **figures},
        headline("Redis bytes per settled payment", settled["bytes_per_payment"], "reference"),
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
