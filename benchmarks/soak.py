"""Soak: the pipeline paced at a steady rate for minutes; does memory grow?

The e2e benchmark's pipeline (sandbox with 50 ms order queries, the ingress, two worker
processes) under wrk paced at `--rate` for `--minutes`, in one-minute slices of fresh paid orders.
Resident memory (VmRSS) of the ingress and each worker is printed when they start, after the
first slice (warm: imports, pools and caches filled) and after every slice; the figure is the
growth from warm to the end, against the target of at most 5% (issue 14). Every notification
must be settled by the end, else the run says so.

    .venv/bin/python -m benchmarks.soak [--minutes 10] [--rate 400]
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

if not __package__:  # run as a script: make the repository root importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.common import (
    SandboxControl,
    commit_at_end,
    end_offsets,
    finish,
    headline,
    log,
    memory_mb,
    notification_bodies,
    pipeline_env,
    print_table,
    run_id,
    services,
)
from benchmarks.e2e import WORKERS, wait_group, wait_settled
from benchmarks.loadgen import run_wrk, write_bodies
from devtools.stack.pipeline import Pipeline, ServiceProcess
from shared import topics

SLICE_S = 60.0  # seconds of load between two looks at memory
GROWTH_TARGET_PCT = 5.0


def _rss(processes: dict[str, ServiceProcess]) -> dict[str, float | None]:
    return {name: memory_mb(process.pid)["rss_mb"] for name, process in processes.items()}


def _growth(warm: dict[str, float | None], end: dict[str, float | None]) -> dict[str, float]:
    return {
        name: round(100.0 * (end[name] - start) / start, 1)  # type: ignore[operator]
        for name, start in warm.items()
        if start and end.get(name)
    }


def _slice(pipeline: Pipeline, tmp: Path, index: int, rid: str, rate: float) -> dict[str, Any]:
    """One slice: `rate` x SLICE_S fresh paid orders, their notifications paced at `rate`."""
    names, bodies = notification_bodies(f"S{rid}x{index}x", int(rate * SLICE_S))
    asyncio.run(SandboxControl(pipeline.sandbox_url).paid_orders(names))
    result = run_wrk(
        pipeline.notify_url, write_bodies(bodies, tmp / f"slice-{index}"), connections=64,
        duration=SLICE_S + 2, limit=len(bodies), rate=rate,
    )  # fmt: skip
    return {"sent": len(bodies), "http_errors": result.errors, "late_sends": result.late}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=int, default=10, help="of paced load (1 or more)")
    parser.add_argument("--rate", type=float, default=400.0, help="notifications per second")
    parser.add_argument("--latency", type=float, default=0.05, help="sandbox query latency, s")
    args = parser.parse_args(argv)
    if args.minutes < 1 or not args.rate > 0:
        parser.error("--minutes must be 1 or more and --rate positive")

    rid = run_id()
    group = f"bench-soak-{rid}"
    with services() as svc, tempfile.TemporaryDirectory(prefix="bench-soak-") as tmp:
        pipeline = Pipeline(Path(tmp), pipeline_env(svc, group))
        try:
            pipeline.ensure_topics()
            pipeline.start_sandbox()
            asyncio.run(SandboxControl(pipeline.sandbox_url).chaos(args.latency))
            processes = {"ingress": pipeline.start_ingress()}
            targets = asyncio.run(commit_at_end(svc.bootstrap, group, topics.CALLBACKS))
            workers = [pipeline.start_worker(i) for i in range(WORKERS)]
            processes |= {w.name: w for w in workers}
            wait_group(workers, len(targets))
            rows = [{"after": "start", **_rss(processes)}]
            slices = []
            started = time.monotonic()
            for index in range(args.minutes):
                slices.append(_slice(pipeline, Path(tmp), index, rid, args.rate))
                rows.append({"after": f"minute {index + 1}", **_rss(processes)})
                log(f"soak: minute {index + 1}: {rows[-1]}")
            ends = asyncio.run(end_offsets(svc.bootstrap, topics.CALLBACKS))
            settled = asyncio.run(wait_settled(svc.bootstrap, group, ends, 120.0))
            elapsed = time.monotonic() - started
            peaks = {name: memory_mb(p.pid)["peak_rss_mb"] for name, p in processes.items()}
        finally:
            pipeline.stop_all()

    warm, end = rows[1], rows[-1]
    growth = _growth({k: v for k, v in warm.items() if k != "after"}, end)
    print_table(f"soak: {args.rate:.0f}/s for {args.minutes} min, RSS in MB", rows, list(rows[0]))
    print(f"growth from warm (after minute 1) to the end, %: {growth}; peak RSS MB: {peaks}")
    print(f"every notification settled: {settled}")
    worst = max(growth.values(), default=None)
    finish(
        "soak",
        {
            "services": svc.origin,
            "rate_per_s": args.rate,
            "minutes": args.minutes,
            "elapsed_s": round(elapsed, 1),
            "query_latency_s": args.latency,
            "rss_mb": rows,
            "peak_rss_mb": peaks,
            "growth_pct_from_warm": growth,
            "slices": slices,
            "all_settled": settled,
            "targets": {"growth_pct": f"<= {GROWTH_TARGET_PCT}"},
        },
        headline("largest RSS growth %, warm to end of soak", worst, f"<= {GROWTH_TARGET_PCT}"),
    )
    return 0 if settled else 1


if __name__ == "__main__":
    sys.exit(main())
