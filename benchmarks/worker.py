"""Worker benchmark: settled notifications/s of one worker process at 50 ms order-query latency.

Cases, in the same run against the same sandbox, Kafka and Redis:
- `worker`: `python -m workers` (concurrent across orders, `PAYNOTIFY_WORKER_CONCURRENCY` in
  flight, commits the settled prefix);
- `sequential`: the same `Reconciler.handle` under a consumer that takes one message, settles it,
  commits, and takes the next (benchmarks/consumers.py);
- the bound: in-flight limit / query latency (256 / 0.05 s = 5,120/s), computed.
Every callback is for a paid order the sandbox confirms, so each settles as
`paynotify.payment.succeeded` through the full path (Redis lock and write-once outcome, signed
order query, decision, event published with acks=all, offsets committed).

    .venv/bin/python -m benchmarks.worker [--callbacks 10000] [--latency 0.05] [--profile]
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from pathlib import Path

if not __package__:  # run as a script: make the repository root importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks import profiling
from benchmarks.common import (
    finish,
    headline,
    print_table,
)
from benchmarks.settling import COLUMNS, Bench, measure
from shared.settings import Settings


async def _cases(bench: Bench, args: argparse.Namespace) -> dict[str, object]:
    await bench.sandbox.chaos(args.latency)
    rows = [
        await measure(bench, "worker", ["-m", "workers"], args.callbacks, args.deadline),
        await measure(
            bench, "sequential", ["-m", "benchmarks.consumers", "sequential"],
            args.sequential_callbacks, args.deadline,
        ),
    ]  # fmt: skip
    profile = None
    if args.profile:
        raw = bench.tmp / "worker.collapsed"
        # A case of its own: py-spy's sampling costs the profiled process a little.
        await measure(
            bench, "worker-profiled", ["-m", "workers"], args.callbacks, args.deadline, raw
        )
        profile = profiling.summarize(raw)
    return {"rows": rows, "profile": profile}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--callbacks", type=int, default=10_000, help="for the worker")
    parser.add_argument("--sequential-callbacks", type=int, default=300)
    parser.add_argument("--latency", type=float, default=0.05, help="sandbox query latency, s")
    parser.add_argument("--deadline", type=float, default=90.0, help="seconds per case, at most")
    parser.add_argument("--profile", action="store_true", help="also profile the worker")
    args = parser.parse_args(argv)

    concurrency = Settings().worker_concurrency
    with Bench.started("worker") as bench:
        found = asyncio.run(_cases(bench, args))

    rows = found["rows"]
    bound = concurrency / args.latency
    ours, sequential = rows[0].get("settled_per_s"), rows[1].get("settled_per_s")
    rows.append({"case": "bound (in-flight / latency)", "settled_per_s": bound})
    print_table(f"worker: one process, order query latency {args.latency * 1000:.0f} ms", rows,
                COLUMNS)  # fmt: skip
    over_sequential = round(ours / sequential, 1) if ours and sequential else None
    of_bound = round(ours / bound, 3) if ours else None
    print(
        f"\nworker / sequential = {over_sequential} (target >= 50); worker / bound = {of_bound}; "
        f"worker peak RSS {rows[0].get('consumer_peak_rss_mb')} MB (target <= 150)"
    )
    if found["profile"] is not None:
        profiling.print_summary("worker (one process, all callbacks)", found["profile"])
    finish(
        "worker",
        {
            "services": bench.svc.origin,
            "query_latency_s": args.latency,
            "worker_concurrency": concurrency,
            "cases": rows,
            "worker_over_sequential": over_sequential,
            "worker_over_bound": of_bound,
            "profile": found["profile"],
            "targets": {
                "worker_settled_per_s": ">= 1000",
                "worker_over_sequential": ">= 50",
                "worker_rss_mb": "<= 150",
            },
        },
        headline("settled notifications/s, one worker, 50 ms query latency", ours, ">= 1000"),
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
