"""Peer benchmark: the worker against the same logic under FastStream's Kafka subscriber.

Same load for every case: N pre-published callbacks for paid orders, order query latency 50 ms.
- `worker`: `python -m workers` as shipped;
- `faststream-pN`: FastStream 0.7, `ack_policy=AckPolicy.ACK` (commit after the handler
  returned: at-least-once), `max_workers` = the topic's partition count, its concurrency "between
  partitions" (one message at a time per partition);
- `faststream-1`: the same with FastStream's default single consumer.
The handler calls the same `Reconciler.handle` as the worker (benchmarks/consumers.py).

    .venv/bin/python -m benchmarks.peer [--callbacks 3000] [--latency 0.05]
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from pathlib import Path

if not __package__:  # run as a script: make the repository root importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.common import (
    finish,
    headline,
    partitions,
    print_table,
)
from benchmarks.settling import COLUMNS, Bench, measure
from shared import topics

FASTSTREAM = ["-m", "benchmarks.consumers", "faststream"]


async def _cases(bench: Bench, args: argparse.Namespace) -> list[dict[str, object]]:
    await bench.sandbox.chaos(args.latency)
    count = len(await partitions(bench.svc.bootstrap, topics.CALLBACKS))
    n, deadline = args.callbacks, args.deadline
    return [
        await measure(bench, "worker", ["-m", "workers"], n, deadline),
        await measure(
            bench, f"faststream-p{count}", [*FASTSTREAM, "--max-workers", str(count)], n,
            deadline,
        ),
        await measure(bench, "faststream-1", FASTSTREAM, n, args.single_deadline),
    ]  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--callbacks", type=int, default=3000, help="per case")
    parser.add_argument("--latency", type=float, default=0.05, help="sandbox query latency, s")
    parser.add_argument("--deadline", type=float, default=45.0, help="seconds per case, at most")
    parser.add_argument("--single-deadline", type=float, default=15.0)
    args = parser.parse_args(argv)
    try:
        import faststream  # noqa: F401, PLC0415
    except ImportError:
        raise SystemExit(
            "FastStream is not installed: `make bench` installs faststream[kafka]"
        ) from None

    with Bench.started("peer") as bench:
        rows = asyncio.run(_cases(bench, args))

    print_table(f"peer: same load, order query latency {args.latency * 1000:.0f} ms", rows,
                COLUMNS)  # fmt: skip
    ours, peer, single = (rows[i].get("settled_per_s") for i in (0, 1, 2))
    ratio = round(ours / peer, 2) if ours and peer else None
    single_ratio = round(ours / single, 2) if ours and single else None
    print(
        f"\nworker / {rows[1]['case']} = {ratio} (target >= 4); "
        f"worker / {rows[2]['case']} = {single_ratio}"
    )
    finish(
        "peer",
        {
            "services": bench.svc.origin,
            "query_latency_s": args.latency,
            "cases": rows,
            "worker_over_faststream": ratio,
            "worker_over_faststream_single": single_ratio,
            "faststream_settings": {
                "ack_policy": "AckPolicy.ACK",
                "max_workers": rows[1]["case"],
                "auto_offset_reset": "earliest",
            },
            "targets": {"worker_over_faststream": ">= 4"},
        },
        headline("worker / FastStream settled notifications per second", ratio, ">= 4"),
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
