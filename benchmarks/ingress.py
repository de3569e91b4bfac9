"""Ingress benchmark: the real ingress against a bare aiohttp handler, at the same concurrency.

1. Peak: wrk (one thread, `--connections` keep-alive connections) POSTs pre-signed notifications
   to a bare aiohttp server answering `success`, to the same server publishing each body to
   Kafka before answering (`bare+kafka`: the ingress's producer, no parsing or verifying), then
   to the real ingress (parse, verify the MD5 signature, publish with acks=all, answer after the
   broker's ack). Notifications/s, p50/p99.
2. Paced (wrk2-style: request k is due at t0 + k / rate) at half the ingress's peak rate, and at
   a low rate for the latency floor; late sends are counted.
CPU of every process in each window and the ingress's peak RSS are recorded beside.

With `--processes N` the ingress runs as `paynotify ingress --processes N` (N children on one
port); its CPU and RSS are then the children's, summed (CPU) or each (RSS).

    .venv/bin/python -m benchmarks.ingress [--connections 64] [--duration 10] [--processes 1]
                                           [--profile]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING

if not __package__:  # run as a script: make the repository root importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks import profiling
from benchmarks.common import (
    CpuMonitor,
    finish,
    headline,
    log,
    memory_mb,
    notification_bodies,
    pipeline_env,
    port_free,
    print_table,
    run_id,
    services,
)
from benchmarks.loadgen import run_wrk, write_bodies
from devtools.stack.pipeline import Pipeline, ServiceProcess, wait_for_http
from shared.settings import Settings

if TYPE_CHECKING:
    from collections.abc import Iterable

WARMUP = 2.0  # seconds of load before each measured window (connections, JIT-free warm caches)


def _cores(usage: dict[str, float | None], name: str) -> float | None:
    """A server's cores: its process's, or with --processes the sum of its children's."""
    mine = [
        v for k, v in usage.items() if (k == name or k.startswith(f"{name}-")) and v is not None
    ]
    return round(sum(mine), 3) if mine else None


def _children(pid: int, count: int, deadline: float = 30.0) -> list[int]:
    """The `count` child processes of `pid` (an ingress started with --processes)."""
    end = time.monotonic() + deadline
    found: list[int] = []
    while time.monotonic() < end:
        found = [
            int(child)
            for task in Path(f"/proc/{pid}/task").iterdir()
            for child in (task / "children").read_text().split()
        ]
        if len(found) >= count:
            return found
        time.sleep(0.1)
    raise TimeoutError(f"the ingress started {len(found)} of {count} processes")


def _peak(
    name: str,
    url: str,
    bodies: Path,
    pids: list[int],
    cpu: CpuMonitor,
    args: argparse.Namespace,
) -> dict[str, object]:
    run_wrk(url, bodies, connections=args.connections, duration=WARMUP)
    start = time.time()
    result = run_wrk(url, bodies, connections=args.connections, duration=args.duration)
    end = time.time()
    usage = cpu.usages(start, end)
    log(f"{name}: {result.rate:,.0f}/s p99 {result.latency_ms['p99_ms']} ms")
    return {
        "case": name,
        "connections": args.connections,
        **result.row(),
        "server_cpu_cores": _cores(usage, name),
        "kafka_cpu_cores": usage.get("kafka"),
        "others_cpu_cores": usage.get("others"),
        **{f"server_{k}": _largest(memory_mb(pid)[k] for pid in pids)
           for k in ("rss_mb", "peak_rss_mb")},
    }  # fmt: skip


def _bare(
    name: str,
    extra: list[str],
    bodies: Path,
    cpu: CpuMonitor,
    args: argparse.Namespace,
    tmp: Path,
) -> dict[str, object]:
    """A peak of benchmarks.bare_server (with `extra` arguments), started and stopped here."""
    port = port_free()
    server = ServiceProcess(
        name, ["-m", "benchmarks.bare_server", "--port", str(port), *extra], {},
        tmp / "logs" / f"{name}.log",
    ).start()  # fmt: skip
    try:
        wait_for_http(f"http://127.0.0.1:{port}/healthz", process=server)
        cpu.watch(name, server.pid)
        return _peak(name, f"http://127.0.0.1:{port}/notify", bodies, [server.pid or 0], cpu,
                     args)  # fmt: skip
    finally:
        server.stop()


def _largest(values: Iterable[float | None]) -> float | None:
    known = [v for v in values if v is not None]
    return max(known) if known else None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--connections", type=int, default=64)
    parser.add_argument("--duration", type=float, default=10.0, help="seconds per peak window")
    parser.add_argument("--half-duration", type=float, default=15.0)
    parser.add_argument("--low-rate", type=float, default=200.0, help="for the latency floor")
    parser.add_argument("--bodies", type=int, default=20_000, help="distinct signed bodies")
    parser.add_argument("--processes", type=int, default=1, help="paynotify ingress --processes")
    parser.add_argument("--profile", action="store_true", help="also profile the ingress")
    args = parser.parse_args(argv)

    rid = run_id()
    with (
        services() as svc,
        tempfile.TemporaryDirectory(prefix="bench-ingress-") as tmp,
        CpuMonitor() as cpu,
    ):
        cpu.watch("kafka", svc.kafka_pid)
        _, bodies = notification_bodies(f"BI{rid}", args.bodies)
        bodies_file = write_bodies(bodies, Path(tmp))
        pipeline = Pipeline(Path(tmp), pipeline_env(svc, f"bench-ingress-{rid}"))
        rows = []
        try:
            # 1a. The bare handler; 1b. the same, publishing each body to Kafka first.
            pipeline.ensure_topics()
            callbacks = Settings.from_env(pipeline.env).topics.callbacks
            rows.append(_bare("bare", [], bodies_file, cpu, args, Path(tmp)))
            rows.append(
                _bare("bare+kafka", ["--kafka", svc.bootstrap, "--topic", callbacks],
                      bodies_file, cpu, args, Path(tmp))
            )  # fmt: skip
            # 1c. The real ingress.
            ingress = pipeline.start_ingress(args.processes)
            cpu.watch("ingress", ingress.pid)
            servers = [ingress.pid or 0]
            if args.processes > 1:
                servers = _children(ingress.pid or 0, args.processes)
                for i, child in enumerate(servers):
                    cpu.watch(f"ingress-{i}", child)
            rows.append(_peak("ingress", pipeline.notify_url, bodies_file, servers, cpu,
                              args))  # fmt: skip
            ingress_rss = (
                memory_mb(servers[0])
                if len(servers) == 1
                else {f"process-{i}": memory_mb(pid) for i, pid in enumerate(servers)}
            )
            # 2. Half the ingress's peak rate, paced (wrk2-style: each request has its slot),
            # and a low rate for the latency floor (linger, broker ack, HTTP).
            half_rate = rows[2]["rate_per_s"] / 2  # type: ignore[operator]
            paced_rows = [
                _paced("half peak", half_rate, pipeline.notify_url, bodies_file, cpu, args),
                _paced("low rate", args.low_rate, pipeline.notify_url, bodies_file, cpu, args),
            ]
            half = paced_rows[0]
            profile = None
            if args.profile:
                profile = _profile(pipeline.notify_url, bodies_file, servers[0], args, tmp)
        finally:
            pipeline.stop_all()

    bare, floor, real = (row["rate_per_s"] for row in rows)
    ratio = round(real / bare, 3)  # type: ignore[operator]
    floor_ratio = round(floor / bare, 3)  # type: ignore[operator]
    over_floor = round(real / floor, 3)  # type: ignore[operator]
    columns = [
        "case", "connections", "requests", "rate_per_s", "errors", "p50_ms", "p99_ms",
        "server_cpu_cores", "kafka_cpu_cores", "generator_cpu_cores", "others_cpu_cores",
        "server_peak_rss_mb",
    ]  # fmt: skip
    print_table("ingress: peak, closed loop (wrk)", rows, columns)
    print_table(
        "ingress: paced (wrk2-style), half the peak rate and a low rate",
        paced_rows,
        ["case", "rate_asked_per_s", "rate_per_s", "requests", "late_sends", "errors", "p50_ms",
         "p99_ms", "p999_ms", "ingress_cpu_cores", "kafka_cpu_cores", "generator_cpu_cores",
         "others_cpu_cores"],
    )  # fmt: skip
    print(
        f"\ningress / bare = {ratio} (target >= 0.5); ingress RSS {ingress_rss} (target <= 100 MB)"
        f"\nbare+kafka / bare = {floor_ratio} (the floor aiohttp + aiokafka set); "
        f"ingress / bare+kafka = {over_floor}"
    )
    if profile is not None:
        profiling.print_summary("ingress at peak", profile)
    finish(
        "ingress",
        {
            "services": svc.origin,
            "ingress_processes": args.processes,
            "peak": rows,
            "ingress_over_bare": ratio,
            "bare_kafka_over_bare": floor_ratio,
            "ingress_over_bare_kafka": over_floor,
            "half_peak": half,
            "low_rate": paced_rows[1],
            "ingress_memory_after_peak": ingress_rss,
            "profile": profile,
            "targets": {
                "ingress_over_bare": ">= 0.5",
                "p99_at_half_peak_ms": "< 20",
                "ingress_rss_mb": "<= 100",
            },
        },
        headline("ingress / bare notifications per second", ratio, ">= 0.5"),
    )
    return 0


def _paced(
    case: str, rate: float, url: str, bodies: Path, cpu: CpuMonitor, args: argparse.Namespace
) -> dict[str, object]:
    paced = run_wrk(url, bodies, connections=args.connections, duration=args.half_duration,
                    rate=rate)  # fmt: skip
    usage = cpu.usages(paced.started_at, paced.started_at + paced.seconds)
    log(f"ingress {case}: {paced.rate:,.0f}/s p99 {paced.latency_ms['p99_ms']} ms")
    return {
        "case": case,
        "rate_asked_per_s": round(rate, 1),
        **paced.row(),
        "late_sends": paced.late,
        "ingress_cpu_cores": _cores(usage, "ingress"),
        "kafka_cpu_cores": usage.get("kafka"),
        "others_cpu_cores": usage.get("others"),
    }


def _profile(
    url: str, bodies: Path, pid: int, args: argparse.Namespace, tmp: str
) -> dict[str, object]:
    raw = Path(tmp) / "ingress.collapsed"
    recording = profiling.start(pid, args.duration, raw)
    run_wrk(url, bodies, connections=args.connections, duration=args.duration)
    profiling.finish(recording)
    return profiling.summarize(raw)


if __name__ == "__main__":
    sys.exit(main())
