"""Which Kafka requests the benchmarked processes send per second (see sitecustomize.py here):
`environment(folder)` for the processes, `snapshot(folder)` before and after a window, and
`per_second(before, after)` by process role and request type."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
_ROLES = ("ingress", "worker", "sweeper", "sandbox")


def environment(folder: Path) -> dict[str, str]:
    """What to add to a process's environment so it counts its Kafka requests into `folder`."""
    path = os.pathsep.join(filter(None, (str(HERE), os.environ.get("PYTHONPATH"))))
    return {"PYTHONPATH": path, "PAYNOTIFY_BENCH_KAFKA_REQUESTS": str(folder)}


def _role(argv: list[str]) -> str:
    text = " ".join(argv)
    return next((role for role in _ROLES if role in text), "other")


def snapshot(folder: Path) -> dict[int, dict[str, Any]]:
    """Every counting process's latest counts, by pid."""
    found = {}
    for path in folder.glob("*.json"):
        try:
            found[int(path.stem)] = json.loads(path.read_text())
        except (ValueError, OSError):  # being replaced: the next look has it
            continue
    return found


def per_second(
    before: dict[int, dict[str, Any]], after: dict[int, dict[str, Any]]
) -> dict[str, dict[str, float]]:
    """Requests per second between two snapshots, summed by role (every worker process is
    `worker`), by request type."""
    rates: dict[str, dict[str, float]] = {}
    for pid, late in after.items():
        early = before.get(pid, {"at": late["at"], "counts": {}})
        window = late["at"] - early["at"]
        if window <= 0:
            continue
        by_type = rates.setdefault(_role(late["argv"]), {})
        for name, count in late["counts"].items():
            delta = (count - early["counts"].get(name, 0)) / window
            by_type[name] = round(by_type.get(name, 0.0) + delta, 1)
    return rates
