"""Counts the Kafka requests a process sends, by type, and times its garbage collector's pauses
(benchmarks only).

A benchmark puts this folder first on the `PYTHONPATH` of the processes it starts and names a
folder in `PAYNOTIFY_BENCH_KAFKA_REQUESTS`; each Python process then counts every request its
aiokafka connections send (Fetch, Produce, OffsetCommit, Metadata, Heartbeat...), notes every
collection the cyclic garbage collector makes (its generation, its pause), and writes its
cumulative counts and pauses to `<folder>/<pid>.json` every half second, so a benchmark can tell
which requests the brokers serve per second in a window and how long the processes stood still
collecting (benchmarks/kafka_requests/__init__.py). Without the variable it does nothing.
Production never imports it.
"""

from __future__ import annotations

import gc
import json
import os
import sys
import threading
import time
from pathlib import Path
from typing import Any

LONG_PAUSE_S = 0.005  # pauses this long or longer are kept one by one (with when they ended)
KEPT_PAUSES = 2_000  # at most this many of them (the latest), so memory stays bounded


def _collector_pauses() -> dict[str, list[Any]]:
    """Per generation: collections, seconds paused in all; and the long pauses as (end, gen, s)."""
    pauses: dict[str, list[Any]] = {
        "collections": [0, 0, 0],
        "seconds": [0.0, 0.0, 0.0],
        "long": [],
    }
    began = [0.0]

    def timed(phase: str, info: dict[str, int]) -> None:
        now = time.perf_counter()
        if phase == "start":
            began[0] = now
            return
        generation, pause = info["generation"], now - began[0]
        pauses["collections"][generation] += 1
        pauses["seconds"][generation] += pause
        if pause >= LONG_PAUSE_S:
            pauses["long"].append((time.time(), generation, pause))
            del pauses["long"][:-KEPT_PAUSES]

    gc.callbacks.append(timed)
    return pauses


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
    pauses = _collector_pauses()
    path = Path(folder) / f"{os.getpid()}.json"
    partial = path.with_suffix(".tmp")

    def dump() -> None:
        while True:
            time.sleep(0.5)
            snapshot = {
                "at": time.time(), "argv": sys.argv, "counts": dict(counts),
                "collector": {k: list(v) for k, v in pauses.items()},
            }  # fmt: skip
            partial.write_text(json.dumps(snapshot))
            partial.replace(path)

    threading.Thread(target=dump, name="kafka-request-counts", daemon=True).start()


if os.environ.get("PAYNOTIFY_BENCH_KAFKA_REQUESTS"):
    _install(os.environ["PAYNOTIFY_BENCH_KAFKA_REQUESTS"])
