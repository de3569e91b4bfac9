"""What `PAYNOTIFY_REDIS_WAIT_REPLICAS=1` costs an outcome write (docs/scaling.md, Failover
semantics).

On a primary and a replica of its own (`devtools.stack.redis_pair`, the stack's `appendfsync
always` on both), each payment takes the outcome store's two steps of a settled notification
(`begin`, then `decide` with its CloudEvent), `--concurrency` payments at once, first without
waiting, then waiting for the replica; the two alternate `--rounds` times, so that whatever else
loads the machine loads both. Per run: payments per second, and the latency of `decide` (the
write WAIT follows) at the median and the 99th percentile. The summary gives each setting's
median over the rounds, with the lowest and highest.

    .venv/bin/python -m benchmarks.wait_cost [--payments 3000] [--concurrency 64] [--rounds 3]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
from pathlib import Path

if not __package__:  # run as a script: make the repository root importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from devtools.stack.redis_pair import LocalRedisPair
from devtools.stats import percentile
from shared.adapters.outcomes import Locked, OutcomeStore
from shared.adapters.redis_client import connect_redis

EVENT = b'{"specversion":"1.0","type":"paynotify.payment.succeeded"}' + b" " * 900  # ~1 kB
TIMEOUT_MS = 100


async def one_run(url: str, replicas: int, payments: int, concurrency: int, tag: str) -> dict:
    redis = connect_redis(url, max_connections=concurrency + 8)
    store = OutcomeStore(
        redis, outcome_ttl_seconds=3600, lock_ttl_ms=10_000, wait_replicas=replicas,
        wait_timeout_ms=TIMEOUT_MS,
    )  # fmt: skip
    latencies: list[float] = []
    gate = asyncio.Semaphore(concurrency)

    async def pay(i: int) -> None:
        key = f"m-wait:{tag}-{i}"
        async with gate:
            state = await store.begin(key, "m-wait", f"{tag}-{i}")
            assert isinstance(state, Locked)
            started = time.perf_counter()
            await store.decide(
                key, state.token, event_type="paynotify.payment.succeeded", event_id=key,
                event=EVENT, decided_at=time.time(), settle_record=None,
            )  # fmt: skip
            latencies.append(time.perf_counter() - started)

    try:
        started = time.perf_counter()
        await asyncio.gather(*(pay(i) for i in range(payments)))
        elapsed = time.perf_counter() - started
    finally:
        await store.aclose()
        await redis.aclose()
    latencies.sort()
    return {
        "replicas": replicas,
        "rate": payments / elapsed,
        "p50_ms": percentile(latencies, 0.50) * 1000,
        "p99_ms": percentile(latencies, 0.99) * 1000,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.wait_cost", description=__doc__)
    parser.add_argument("--payments", type=int, default=3000)
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args(argv)
    runs: list[dict] = []
    with (
        tempfile.TemporaryDirectory(prefix="paynotify-wait-") as home,
        LocalRedisPair(Path(home)) as pair,
    ):
        asyncio.run(one_run(pair.primary_url, 0, 300, args.concurrency, "warm"))
        for round_ in range(args.rounds):
            for replicas in (0, 1):
                run = asyncio.run(
                    one_run(
                        pair.primary_url, replicas, args.payments, args.concurrency,
                        f"r{round_}w{replicas}",
                    )
                )  # fmt: skip
                runs.append(run)
                sys.stdout.write(
                    f"round {round_ + 1} WAIT {replicas}: {run['rate']:,.0f} payments/s, "
                    f"decide p50 {run['p50_ms']:.2f} ms p99 {run['p99_ms']:.2f} ms\n"
                )
                sys.stdout.flush()
    for replicas in (0, 1):
        mine = [r for r in runs if r["replicas"] == replicas]
        figures = []
        for name in ("rate", "p50_ms", "p99_ms"):
            values = [r[name] for r in mine]
            figures.append(
                f"{name} {statistics.median(values):,.2f} ({min(values):,.2f}-{max(values):,.2f})"
            )
        sys.stdout.write(
            f"WAIT {replicas}, concurrency {args.concurrency}: " + ", ".join(figures) + "\n"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
