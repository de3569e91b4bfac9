"""CPU per order query in the worker's platform client, in process (docs/performance.md).

`--queries` paid orders are created in the sandbox (no added latency), then queried through
`PlatformClient.query_order` as the worker builds it (`shared.bootstrap.platform_client`),
`--concurrency` at once, `--rounds` times after a warm-up round; each round's CPU time of this
process (`time.process_time`: the request, the answer's decoding, its signature check and its
parsing; not the sandbox's) is divided by the queries. Prints each round and the median.

    .venv/bin/python -m benchmarks.query_cost [--queries 3000] [--concurrency 64] [--rounds 5]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time
from pathlib import Path

if not __package__:  # run as a script: make the repository root importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.common import merchant
from benchmarks.settling import Bench
from shared import bootstrap
from shared.clock import SystemClock
from shared.settings import Settings


async def _rounds(bench: Bench, args: argparse.Namespace) -> list[float]:
    names = [f"Q{bench.rid}x{i}" for i in range(args.queries)]
    await bench.sandbox.paid_orders(names)
    owner = merchant()
    client = bootstrap.platform_client(
        Settings.from_env(bench.pipeline.env), {owner.mch_id: owner}, clock=SystemClock(),
        limit=max(args.concurrency, 1),
    )  # fmt: skip
    gate = asyncio.Semaphore(args.concurrency)

    async def query(name: str) -> None:
        async with gate:
            await client.query_order(owner.mch_id, name)

    try:
        await asyncio.gather(*(query(name) for name in names))  # warm-up: connections, caches
        found = []
        for _ in range(args.rounds):
            began = time.process_time()
            await asyncio.gather(*(query(name) for name in names))
            found.append((time.process_time() - began) / args.queries * 1e6)
        return found
    finally:
        await client.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--queries", type=int, default=3_000)
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args(argv)
    with Bench.started("query-cost") as bench:
        found = asyncio.run(_rounds(bench, args))
    print("µs CPU per query, by round:", ", ".join(f"{value:.0f}" for value in found))
    median, low, high = statistics.median(found), min(found), max(found)
    print(f"median {median:.0f} µs (lowest {low:.0f}, highest {high:.0f})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
