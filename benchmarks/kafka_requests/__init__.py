"""Which Kafka requests the benchmarked processes send per second, and how long their garbage
collectors paused them (see sitecustomize.py here): `environment(folder)` for the processes,
`snapshot(folder)` before and after a window, `per_second(before, after)` by process role and
request type, and `collector_pauses(before, after)` by process role."""

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


def collector_pauses(
    before: dict[int, dict[str, Any]], after: dict[int, dict[str, Any]]
) -> dict[str, dict[str, Any]]:
    """The garbage collector's work between two snapshots, by role (the processes of one role
    summed, the longest pause the longest of any): collections per generation, milliseconds
    paused in all, the longest pause and how many lasted 50 ms or more."""
    found: dict[str, dict[str, Any]] = {}
    for pid, late in after.items():
        if "collector" not in late:
            continue
        early = before.get(pid, {"at": 0.0, "collector": None})
        start = early["at"]
        was = early["collector"] or {"collections": [0, 0, 0], "seconds": [0.0, 0.0, 0.0]}
        now = late["collector"]
        role = found.setdefault(
            _role(late["argv"]),
            {"collections": [0, 0, 0], "paused_ms": 0.0, "longest_ms": 0.0, "over_50ms": 0},
        )
        for generation in range(3):
            role["collections"][generation] += (
                now["collections"][generation] - was["collections"][generation]
            )
            role["paused_ms"] += 1000 * (now["seconds"][generation] - was["seconds"][generation])
        pauses = [pause for ended, _, pause in now["long"] if start < ended <= late["at"]]
        role["longest_ms"] = max([role["longest_ms"], *(1000 * p for p in pauses)])
        role["over_50ms"] += sum(pause >= 0.05 for pause in pauses)
    for role in found.values():
        role["paused_ms"] = round(role["paused_ms"], 1)
        role["longest_ms"] = round(role["longest_ms"], 1)
    return found
