"""End-to-end benchmark: notifications -> ingress -> Kafka -> 2 worker processes -> events.

The sandbox holds the paid orders (its own deliveries all dropped) and answers the workers'
order queries with `--latency` added; wrk plays the platform, POSTing each order's pre-signed
notification to the real ingress and logging when it sent it.
1. Sustained: `--notifications` POSTs at `--connections` (closed loop). Sustained throughput =
   notifications settled / (last event's Kafka timestamp - first send): a backlog the workers
   have not caught up with when the load stops lengthens the window, so it counts against it.
2. Half that rate, paced: latency of each notification from its send to its outcome event's
   Kafka timestamp (the worker's produce time), p50/p99.

    .venv/bin/python -m benchmarks.e2e [--notifications 10000] [--latency 0.05]
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

import orjson

from benchmarks import kafka_requests
from benchmarks.common import (
    CpuMonitor,
    SandboxControl,
    commit_at_end,
    committed,
    end_offsets,
    event_types,
    finish,
    headline,
    latency_summary_ms,
    log,
    memory_mb,
    merchant,
    notification_bodies,
    pipeline_env,
    print_table,
    read_from,
    run_id,
    services,
)
from benchmarks.loadgen import read_sendlog, run_wrk, write_bodies
from benchmarks.settling import warnings
from devtools.stack.pipeline import Pipeline, ServiceProcess
from shared import topics

WORKERS = 2


def _assigned(process: ServiceProcess) -> list[int] | None:
    """The partitions a worker's log says it holds now (None before its first assignment)."""
    held: list[int] | None = None
    if not process.log.exists():
        return None
    for line in process.log.read_text(errors="replace").splitlines():
        if "partitions_" not in line:
            continue
        entry = orjson.loads(line)
        if entry.get("event") == "partitions_assigned":
            held = sorted({*(held or []), *entry.get("partitions", [])})
        elif entry.get("event") == "partitions_revoked":
            held = sorted(set(held or []) - set(entry.get("partitions", [])))
    return held


def wait_group(workers: list[ServiceProcess], partitions: int, deadline: float = 60.0) -> None:
    end = time.monotonic() + deadline
    while time.monotonic() < end:
        held = [_assigned(w) for w in workers]
        if all(held) and sum(len(h or []) for h in held) == partitions:
            return
        for w in workers:
            if not w.alive:
                raise RuntimeError(f"{w.name} exited:\n{w.tail()}")
        time.sleep(0.2)
    raise TimeoutError(f"the workers did not share the {partitions} partitions in {deadline}s")


async def wait_settled(
    bootstrap: str, group: str, targets: dict[int, int], deadline: float
) -> bool:
    end = time.monotonic() + deadline
    while time.monotonic() < end:
        positions = await committed(bootstrap, group, topics.CALLBACKS)
        if all(positions.get(p, 0) >= o for p, o in targets.items()):
            return True
        await asyncio.sleep(0.5)
    return False


def _phase(
    name: str,
    env: dict[str, Any],
    *,
    count: int,
    rate: float,
    args: argparse.Namespace,
) -> dict[str, Any]:
    """Send `count` notifications (closed loop, or paced at `rate`); figures once settled."""
    pipeline: Pipeline = env["pipeline"]
    cpu: CpuMonitor = env["cpu"]
    bootstrap = env["bootstrap"]
    prefix = f"E{env['rid']}{name}x"
    names, bodies = notification_bodies(prefix, count)
    asyncio.run(SandboxControl(pipeline.sandbox_url).paid_orders(names))
    tmp = Path(env["tmp"])
    bodies_file = write_bodies(bodies, tmp / name)
    sendlog = tmp / name / "sent.txt"
    events_start = asyncio.run(end_offsets(bootstrap, topics.EVENTS))
    requests_before = kafka_requests.snapshot(env["requests"])
    duration = args.max_seconds if rate == 0 else count / rate + 2
    result = run_wrk(
        pipeline.notify_url, bodies_file, connections=args.connections, duration=duration,
        limit=count, rate=rate, sendlog=sendlog,
    )  # fmt: skip
    targets = asyncio.run(end_offsets(bootstrap, topics.CALLBACKS))
    settled_all = asyncio.run(wait_settled(bootstrap, env["group"], targets, args.drain_deadline))
    requests_after = kafka_requests.snapshot(env["requests"])
    requests = kafka_requests.per_second(requests_before, requests_after)
    pauses = kafka_requests.collector_pauses(requests_before, requests_after)
    key_prefix = f"{merchant().mch_id}:{prefix}"
    events = asyncio.run(read_from(bootstrap, topics.EVENTS, events_start, key_prefix))
    sent = read_sendlog(sendlog)
    by_name = {names[i]: at for i, at in sent.items()}
    delays = [e.timestamp - by_name[e.key.split(":", 1)[1]] for e in events
              if e.key.split(":", 1)[1] in by_name]  # fmt: skip
    # Latency by when it was sent: a tail that grows through the phase is a backlog building.
    buckets: dict[int, list[float]] = {}
    start_send = min(sent.values()) if sent else 0.0
    for e in events:
        at = by_name.get(e.key.split(":", 1)[1])
        if at is not None:
            buckets.setdefault(int((at - start_send) // 2), []).append(e.timestamp - at)
    over_time = [
        {"sent_from_s": 2 * k, "count": len(v), "p50_ms": latency_summary_ms(v)["p50_ms"],
         "p99_ms": latency_summary_ms(v)["p99_ms"]}
        for k, v in sorted(buckets.items())
    ]  # fmt: skip
    first_send = min(sent.values()) if sent else result.started_at
    last_send = max(sent.values()) if sent else first_send
    last_event = max((e.timestamp for e in events), default=first_send)
    usage = cpu.usages(first_send, last_event)
    row: dict[str, Any] = {
        "phase": name,
        "rate_asked_per_s": round(rate, 1) if rate else "max",
        "sent": len(sent),
        "http_errors": result.errors,
        "ingress_per_s": round((len(sent) - 1) / max(last_send - first_send, 1e-3), 1),
        "http_p50_ms": result.latency_ms["p50_ms"],
        "http_p99_ms": result.latency_ms["p99_ms"],
        "settled": len(events),
        "all_settled": settled_all and len(events) >= count,
        "sustained_per_s": round(len(events) / max(last_event - first_send, 1e-3), 1),
        "drain_s": round(last_event - last_send, 2),
        "e2e": latency_summary_ms(delays),
        "e2e_by_send_time": over_time,
        "late_sends": result.late,
        "generator_cpu_cores": result.generator_cpu,
        "cpu_cores": usage,
        # What the processes asked of the brokers, from the phase's start until all settled.
        "kafka_requests_per_s": requests,
        # Each role's garbage-collector pauses over the same span (shared.event_loop).
        "collector_pauses": pauses,
        "outcomes": event_types(events),
        "unsettled": sorted(set(by_name) - {e.key.split(":", 1)[1] for e in events})[:10],
    }
    log(f"e2e {name}: {row['sustained_per_s']}/s settled, e2e p99 {row['e2e']['p99_ms']} ms")
    log(f"e2e {name}: Kafka requests per second {orjson.dumps(requests).decode()}")
    log(f"e2e {name}: collector pauses {orjson.dumps(pauses).decode()}")
    return row


def _config(
    name: str, concurrency: int | None, env: dict[str, Any], args: argparse.Namespace
) -> dict[str, Any]:
    """Two fresh workers in a group of their own, then both phases."""
    pipeline: Pipeline = env["pipeline"]
    group = f"bench-e2e-{env['rid']}-{name}"
    extra = {"PAYNOTIFY_CONSUMER_GROUP": group}
    if concurrency:
        extra["PAYNOTIFY_WORKER_CONCURRENCY"] = str(concurrency)
    targets = asyncio.run(commit_at_end(env["bootstrap"], group, topics.CALLBACKS))
    first = env.setdefault("workers_started", 0)
    workers = [pipeline.start_worker(first + i, **extra) for i in range(WORKERS)]
    env["workers_started"] = first + WORKERS
    try:
        for i, w in enumerate(workers):
            env["cpu"].watch(f"worker-{i}", w.pid)
        wait_group(workers, len(targets))
        env = {**env, "group": group}
        sustained = _phase(f"{name}s", env, count=args.notifications, rate=0, args=args)
        half_rate = sustained["sustained_per_s"] / 2
        half = _phase(
            f"{name}h", env, count=max(100, int(half_rate * args.half_seconds)), rate=half_rate,
            args=args,
        )  # fmt: skip
        memory = {w.name: memory_mb(w.pid) for w in workers}
    finally:
        for w in workers:
            w.stop()
            pipeline.processes.remove(w)
    sustained["phase"], half["phase"] = f"{name}: sustained", f"{name}: half rate"
    return {
        "config": name,
        "worker_concurrency": concurrency or "default (256)",
        "phases": [sustained, half],
        "memory_mb": memory,
        "worker_warnings": {w.name: warnings(w.log) for w in workers},
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--notifications", type=int, default=10_000, help="sustained phase")
    parser.add_argument("--connections", type=int, default=64)
    parser.add_argument("--latency", type=float, default=0.05, help="sandbox query latency, s")
    parser.add_argument("--half-seconds", type=float, default=15.0, help="paced phase length")
    parser.add_argument("--max-seconds", type=float, default=60.0, help="sustained phase cap")
    parser.add_argument("--drain-deadline", type=float, default=90.0)
    parser.add_argument(
        "--small-concurrency", type=int, default=0,
        help="also run with this PAYNOTIFY_WORKER_CONCURRENCY (0: skip)",
    )  # fmt: skip
    args = parser.parse_args(argv)

    rid = run_id()
    with (
        services() as svc,
        tempfile.TemporaryDirectory(prefix="bench-e2e-") as tmp,
        CpuMonitor() as cpu,
    ):
        cpu.watch("kafka", svc.kafka_pid)
        cpu.watch("redis", svc.redis_pid)
        requests = Path(tmp) / "kafka-requests"
        requests.mkdir()
        pipeline = Pipeline(
            Path(tmp),
            pipeline_env(svc, f"bench-e2e-{rid}", **kafka_requests.environment(requests)),
        )
        env = {"pipeline": pipeline, "cpu": cpu, "bootstrap": svc.bootstrap, "rid": rid,
               "tmp": tmp, "requests": requests}  # fmt: skip
        try:
            pipeline.ensure_topics()
            cpu.watch("sandbox", pipeline.start_sandbox().pid)
            asyncio.run(SandboxControl(pipeline.sandbox_url).chaos(args.latency))
            ingress = pipeline.start_ingress()
            cpu.watch("ingress", ingress.pid)
            configs = [_config("default", None, env, args)]
            if args.small_concurrency:
                configs.append(
                    _config(f"c{args.small_concurrency}", args.small_concurrency, env, args)
                )
            ingress_memory = memory_mb(ingress.pid)
        finally:
            pipeline.stop_all()

    table = [
        {**{k: r[k] for k in ("phase", "rate_asked_per_s", "sent", "http_errors",
                              "ingress_per_s", "settled", "sustained_per_s", "drain_s")},
         "e2e_p50_ms": r["e2e"]["p50_ms"], "e2e_p99_ms": r["e2e"]["p99_ms"],
         "ingress_cpu": r["cpu_cores"].get("ingress"),
         "workers_cpu": round(sum(r["cpu_cores"].get(f"worker-{i}") or 0 for i in
                                  range(WORKERS)), 2),
         "kafka_cpu": r["cpu_cores"].get("kafka"), "sandbox_cpu": r["cpu_cores"].get("sandbox"),
         "others_cpu": r["cpu_cores"].get("others")}
        for c in configs for r in c["phases"]
    ]  # fmt: skip
    print_table(
        f"e2e: ingress -> Kafka -> {WORKERS} workers -> events, query latency "
        f"{args.latency * 1000:.0f} ms",
        table,
        list(table[0]),
    )
    for c in configs:
        print(f"{c['config']}: memory {c['memory_mb']}; worker warnings {c['worker_warnings']}")
    print(f"ingress memory {ingress_memory}")
    value = configs[0]["phases"][0]["sustained_per_s"]
    finish(
        "e2e",
        {
            "services": svc.origin,
            "query_latency_s": args.latency,
            "workers": WORKERS,
            "configs": configs,
            "ingress_memory_mb": ingress_memory,
            "targets": {"sustained_per_s": ">= 800", "e2e_p99_ms_at_half": "<= 150"},
        },
        headline("sustained notifications/s end to end, 2 workers", value, ">= 800"),
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
