"""One way to measure a consumer of `paynotify.callbacks`, shared by the worker and peer benchmarks.

For each case: `count` orders are created and paid in the sandbox (whose own notifications are
all dropped), their callbacks envelopes are published to `paynotify.callbacks` before the
consumer starts (its group starts at the topic's end, so it sees only these), then the consumer
process runs until its group committed past them all or a deadline passed. The rate is read
afterwards from the outcome events' Kafka timestamps: settled events over the time from the
first to the last, so the process's start-up and group join are left out.
"""

from __future__ import annotations

import asyncio
import contextlib
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import orjson

from benchmarks import profiling
from benchmarks.common import (
    CpuMonitor,
    SandboxControl,
    Services,
    callback_messages,
    commit_at_end,
    committed,
    end_offsets,
    event_types,
    log,
    memory_mb,
    merchant,
    pipeline_env,
    publish,
    read_from,
    run_id,
    services,
)
from devtools.stack.pipeline import Pipeline, ServiceProcess
from shared import topics

if TYPE_CHECKING:
    from collections.abc import Iterator, Sequence


@dataclass
class Bench:
    svc: Services
    tmp: Path
    cpu: CpuMonitor
    rid: str
    pipeline: Pipeline
    sandbox: SandboxControl
    cases: int = 0  # numbers each case's orders apart

    @classmethod
    @contextlib.contextmanager
    def started(cls, name: str) -> Iterator[Bench]:
        """Services, a temporary directory, CPU watching, topics and the sandbox, for one
        benchmark; everything it started is stopped on the way out."""
        rid = run_id()
        with (
            services() as svc,
            tempfile.TemporaryDirectory(prefix=f"bench-{name}-") as tmp,
            CpuMonitor() as cpu,
        ):
            cpu.watch("kafka", svc.kafka_pid)
            cpu.watch("redis", svc.redis_pid)
            pipeline = Pipeline(Path(tmp), pipeline_env(svc, f"bench-{name}-{rid}"))
            try:
                pipeline.ensure_topics()
                cpu.watch("sandbox", pipeline.start_sandbox().pid)
                yield cls(svc, Path(tmp), cpu, rid, pipeline, SandboxControl(pipeline.sandbox_url))
            finally:
                pipeline.stop_all()


async def prepare(bench: Bench, case: str, count: int) -> tuple[str, str, dict[str, Any]]:
    """Paid orders and their pre-published envelopes; returns (group, key prefix, offsets)."""
    bench.cases += 1
    prefix = f"B{bench.rid}c{bench.cases}x"
    messages = callback_messages(prefix, count)
    names = [key.split(":", 1)[1] for key, _ in messages]
    await bench.sandbox.paid_orders(names)
    group = f"bench-{bench.rid}-{case}"
    await commit_at_end(bench.svc.bootstrap, group, topics.CALLBACKS)
    events_start = await end_offsets(bench.svc.bootstrap, topics.EVENTS)
    await publish(bench.svc.bootstrap, topics.CALLBACKS, messages)
    targets = await end_offsets(bench.svc.bootstrap, topics.CALLBACKS)
    return group, f"{merchant().mch_id}:{prefix}", {"events": events_start, "targets": targets}


def spawn(bench: Bench, case: str, argv: Sequence[str], group: str, **env: str) -> ServiceProcess:
    process = ServiceProcess(
        case,
        argv,
        {**bench.pipeline.env, "PAYNOTIFY_CONSUMER_GROUP": group, **env},
        bench.tmp / "logs" / f"{case}.log",
    ).start()
    bench.pipeline.processes.append(process)
    return process


async def measure(
    bench: Bench,
    case: str,
    argv: Sequence[str],
    count: int,
    deadline: float,
    profile: Path | None = None,
    **env: str,
) -> dict[str, Any]:
    """Run one consumer over `count` pre-published callbacks; its figures as a table row."""
    group, key_prefix, offsets = await prepare(bench, case, count)
    log(f"{case}: {count} callbacks published; starting {' '.join(argv)}")
    process = spawn(bench, case, argv, group, **env)
    bench.cpu.watch(case, process.pid)
    recording = profiling.start(process.pid or 0, deadline + 30, profile) if profile else None
    started = time.monotonic()
    targets: dict[int, int] = offsets["targets"]
    done = False
    while time.monotonic() - started < deadline:
        if not process.alive:
            raise RuntimeError(f"{case} exited:\n{process.tail()}")
        await asyncio.sleep(0.5)
        positions = await committed(bench.svc.bootstrap, group, topics.CALLBACKS)
        if all(positions.get(p, 0) >= end for p, end in targets.items()):
            done = True
            break
    memory = memory_mb(process.pid)
    process.stop()
    bench.pipeline.processes.remove(process)
    if recording is not None:
        profiling.finish(recording)
    events = await read_from(bench.svc.bootstrap, topics.EVENTS, offsets["events"], key_prefix)
    row: dict[str, Any] = {"case": case, "callbacks": count, "settled": len(events)}
    row["all_settled"] = done and len(events) >= count
    if len(events) >= 2:
        first = min(e.timestamp for e in events)
        last = max(e.timestamp for e in events)
        row["seconds"] = round(last - first, 2)
        row["settled_per_s"] = round((len(events) - 1) / max(last - first, 1e-3), 1)
        usage = bench.cpu.usages(first, last)
        row["consumer_cpu_cores"] = usage.get(case)
        row["sandbox_cpu_cores"] = usage.get("sandbox")
        row["kafka_cpu_cores"] = usage.get("kafka")
        row["redis_cpu_cores"] = usage.get("redis")
        row["others_cpu_cores"] = usage.get("others")
    row["consumer_peak_rss_mb"] = memory["peak_rss_mb"]
    row["outcomes"] = event_types(events)
    row["log_warnings"] = warnings(process.log)
    if not events:
        log(f"{case}: nothing settled; its log ends:\n{process.tail(1500)}")
    log(f"{case}: {row.get('settled_per_s')} settled/s ({len(events)}/{count})")
    return row


def warnings(path: Path) -> dict[str, int]:
    """Warning and error lines of a process's JSON log, counted by event (and error type)."""
    counted: dict[str, int] = {}
    if not path.exists():
        return counted
    for line in path.read_text(errors="replace").splitlines():
        try:
            entry = orjson.loads(line)
        except orjson.JSONDecodeError:
            continue
        if isinstance(entry, dict) and entry.get("level") in {"warning", "error", "critical"}:
            name = f"{entry.get('event')}:{entry.get('error', '')}".rstrip(":")
            counted[name] = counted.get(name, 0) + 1
    return counted


COLUMNS = [
    "case", "callbacks", "settled", "seconds", "settled_per_s", "consumer_cpu_cores",
    "sandbox_cpu_cores", "kafka_cpu_cores", "redis_cpu_cores", "others_cpu_cores",
    "consumer_peak_rss_mb",
]  # fmt: skip
