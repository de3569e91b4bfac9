"""Counts the Kafka requests a process sends, by type (benchmarks only).

A benchmark puts this folder first on the `PYTHONPATH` of the processes it starts and names a
folder in `PAYNOTIFY_BENCH_KAFKA_REQUESTS`; each Python process then counts every request its
aiokafka connections send (Fetch, Produce, OffsetCommit, Metadata, Heartbeat...) and writes its
cumulative counts to `<folder>/<pid>.json` every half second, so a benchmark can tell which
requests the brokers serve per second in a window (benchmarks/kafka_requests/__init__.py).
Without the variable it does nothing. Production never imports it.
"""

from __future__ import annotations

import json
import os
import sys
import threading
import time
from pathlib import Path


def _install(folder: str) -> None:
    # Only in a process asked to count: every Python process started with this folder on its
    # path runs this module, and most (wrk's helpers, the sandbox) need no aiokafka.
    from aiokafka import conn  # noqa: PLC0415

    counts: dict[str, int] = {}
    send = conn.AIOKafkaConnection.send

    def counting_send(self, request, expect_response=True):  # type: ignore[no-untyped-def]
        name = type(request).__name__.partition("_v")[0]  # FetchRequest_v4 -> FetchRequest
        counts[name] = counts.get(name, 0) + 1
        return send(self, request, expect_response)

    conn.AIOKafkaConnection.send = counting_send  # type: ignore[method-assign]
    path = Path(folder) / f"{os.getpid()}.json"
    partial = path.with_suffix(".tmp")

    def dump() -> None:
        while True:
            time.sleep(0.5)
            snapshot = {"at": time.time(), "argv": sys.argv, "counts": dict(counts)}
            partial.write_text(json.dumps(snapshot))
            partial.replace(path)

    threading.Thread(target=dump, name="kafka-request-counts", daemon=True).start()


if os.environ.get("PAYNOTIFY_BENCH_KAFKA_REQUESTS"):
    _install(os.environ["PAYNOTIFY_BENCH_KAFKA_REQUESTS"])
