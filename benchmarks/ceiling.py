"""Ceiling benchmark: how fast this broker takes records of the callbacks message's size.

- `kafka-perf (defaults)`: Kafka's own ProducerPerformance (Java, from the broker's jars), acks=all,
  the client's other defaults (idempotent, linger.ms=5, batch.size=16384);
- `kafka-perf (project settings)`: the same tool with the project's producer settings
  (acks=all, idempotence, linger.ms=2);
- `aiokafka (start_producer)`: the project's own producer factory from Python, the same records,
  up to `--window` sends in flight: the most one Python process can hand to Kafka.
All into a topic of the same partition count as paynotify.callbacks, deleted afterwards.

    .venv/bin/python -m benchmarks.ceiling [--records 500000]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

if not __package__:  # run as a script: make the repository root importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from benchmarks.common import (
    CpuMonitor,
    callback_messages,
    finish,
    headline,
    kafka_libs,
    log,
    print_table,
    run_id,
    services,
)
from shared.adapters.kafka import start_producer
from shared.settings import Settings

PARTITIONS = 6
_SUMMARY = re.compile(
    r"(?P<records>\d+) records sent, (?P<rate>[\d.]+) records/sec \((?P<mb>[\d.]+) MB/sec\), "
    r"(?P<avg>[\d.]+) ms avg latency, (?P<max>[\d.]+) ms max latency, (?P<p50>\d+) ms 50th, "
    r"(?P<p95>\d+) ms 95th, (?P<p99>\d+) ms 99th"
)


async def _topic(bootstrap: str, name: str, *, create: bool) -> None:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        if create:
            await admin.create_topics([NewTopic(name, PARTITIONS, 1)])
        else:
            await admin.delete_topics([name])
    finally:
        await admin.close()


def _perf(
    case: str, bootstrap: str, topic: str, records: int, size: int, props: list[str],
    cpu: CpuMonitor,
) -> dict[str, Any]:  # fmt: skip
    argv = [
        "java", "-Xmx512m", "-cp", f"{kafka_libs()}/*",
        "org.apache.kafka.tools.ProducerPerformance", "--topic", topic,
        "--num-records", str(records), "--record-size", str(size), "--throughput", "-1",
        "--producer-props", f"bootstrap.servers={bootstrap}", *props,
    ]  # fmt: skip
    process = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    cpu.watch(case, process.pid)
    started = time.time()
    output, _ = process.communicate(timeout=300)
    ended = time.time()
    text = output.decode(errors="replace")
    found = list(_SUMMARY.finditer(text))
    match = found[-1] if found else None  # the last summary is the whole run's
    if match is None:
        raise RuntimeError(f"ProducerPerformance printed no summary:\n{text[-2000:]}")
    usage = cpu.usages(started, ended)
    log(f"{case}: {float(match['rate']):,.0f} records/s")
    return {
        "case": case,
        "records": int(match["records"]),
        "record_bytes": size,
        "records_per_s": round(float(match["rate"]), 1),
        "mb_per_s": float(match["mb"]),
        "avg_ms": float(match["avg"]),
        "p50_ms": int(match["p50"]),
        "p99_ms": int(match["p99"]),
        "client_cpu_cores": usage.get(case),
        "kafka_cpu_cores": usage.get("kafka"),
        "others_cpu_cores": usage.get("others"),
        "settings": " ".join(props),
    }


async def _aiokafka(
    bootstrap: str, topic: str, messages: list[tuple[str, bytes]], window: int
) -> tuple[float, float]:
    producer = await start_producer(
        Settings(kafka_bootstrap_servers=bootstrap), client_id="bench-ceiling"
    )
    try:
        started = time.time()
        for start in range(0, len(messages), window):
            pending = [
                await producer.send(topic, value, key=key)
                for key, value in messages[start : start + window]
            ]
            await asyncio.gather(*pending)
        return started, time.time()
    finally:
        await producer.stop()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=500_000, help="for ProducerPerformance")
    parser.add_argument("--python-records", type=int, default=60_000, help="for aiokafka")
    parser.add_argument("--window", type=int, default=2000, help="aiokafka sends in flight")
    args = parser.parse_args(argv)

    messages = callback_messages(f"C{run_id()}x", args.python_records)
    size = round(sum(len(v) for _, v in messages) / len(messages))
    topic = f"paynotify.bench.ceiling.{run_id()}"
    with services() as svc, CpuMonitor() as cpu:
        cpu.watch("kafka", svc.kafka_pid)
        cpu.watch("this process", os.getpid())
        asyncio.run(_topic(svc.bootstrap, topic, create=True))
        try:
            rows = [
                _perf("kafka-perf (defaults)", svc.bootstrap, topic, args.records, size,
                      ["acks=all"], cpu),
                _perf("kafka-perf (project settings)", svc.bootstrap, topic, args.records, size,
                      ["acks=all", "enable.idempotence=true", "linger.ms=2"], cpu),
            ]  # fmt: skip
            started, ended = asyncio.run(_aiokafka(svc.bootstrap, topic, messages, args.window))
            usage = cpu.usages(started, ended)
            rows.append(
                {
                    "case": "aiokafka (start_producer)",
                    "records": len(messages),
                    "record_bytes": size,
                    "records_per_s": round(len(messages) / (ended - started), 1),
                    "client_cpu_cores": usage.get("this process"),
                    "kafka_cpu_cores": usage.get("kafka"),
                    "others_cpu_cores": usage.get("others"),
                    "settings": f"acks=all idempotent linger_ms=2, {args.window} in flight",
                }
            )
            log(f"aiokafka: {rows[-1]['records_per_s']:,.0f} records/s")
        finally:
            with contextlib.suppress(Exception):
                asyncio.run(_topic(svc.bootstrap, topic, create=False))

    print_table(
        f"ceiling: records of {size} bytes (a callbacks envelope), acks=all, "
        f"{PARTITIONS} partitions",
        rows,
        ["case", "records", "records_per_s", "mb_per_s", "avg_ms", "p99_ms",
         "client_cpu_cores", "kafka_cpu_cores", "others_cpu_cores"],
    )  # fmt: skip
    finish(
        "ceiling",
        {"services": svc.origin, "record_bytes": size, "partitions": PARTITIONS, "cases": rows},
        headline("broker produce records/s (ProducerPerformance, acks=all)",
                 rows[0]["records_per_s"], "reference only"),
    )  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
