"""Sampling profiles of a running process with py-spy, summarised by function and by area.

`py-spy record --nonblocking` reads the target's stacks from outside (no pause, no code change);
idle samples are left out, so the shares are of the CPU time the process really used.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

_FRAME = re.compile(r"^(?P<func>.*) \((?P<path>[^():]*)(?::\d+)?\)$")

# Where a frame's code lives decides its area; the first match wins.
_AREAS = (
    ("aiohttp/web_protocol", "aiohttp server (HTTP protocol, handler dispatch)"),
    ("aiohttp/web", "aiohttp server (HTTP protocol, handler dispatch)"),
    ("aiohttp/http_", "aiohttp HTTP parser/writer"),
    ("aiohttp/client", "aiohttp client (platform queries)"),
    ("aiohttp/connector", "aiohttp client (platform queries)"),
    ("aiohttp/", "aiohttp other"),
    ("multidict", "aiohttp other"),
    ("yarl", "aiohttp other"),
    ("aiokafka/producer", "aiokafka producer"),
    ("aiokafka/record", "aiokafka record encoding"),
    ("aiokafka/consumer", "aiokafka consumer"),
    ("aiokafka/", "aiokafka client (network, protocol)"),
    ("redis/", "redis-py"),
    ("faststream/", "faststream"),
    ("fast_depends/", "faststream"),
    ("asyncio/", "asyncio event loop"),
    ("shared/logs", "paynotify logging"),
    ("logging/", "stdlib logging"),
    ("ingress/forms", "paynotify ingress: form parsing"),
    ("ingress/verification", "paynotify ingress: verification"),
    ("shared/protocol/signing", "paynotify signing (MD5)"),
    ("shared/protocol", "paynotify protocol models"),
    ("ingress/", "paynotify ingress: handler, publisher"),
    ("workers/", "paynotify worker: consumer, reconciler"),
    ("shared/adapters", "paynotify adapters (Kafka, Redis)"),
    ("shared/platform", "paynotify platform client"),
    ("shared/domain", "paynotify domain (decision, events)"),
    ("shared/", "paynotify other"),
    ("benchmarks/", "benchmark harness"),
)


def available() -> bool:
    return shutil.which("py-spy") is not None or _venv_py_spy() is not None


def _venv_py_spy() -> str | None:
    candidate = Path(sys.executable).parent / "py-spy"
    return str(candidate) if candidate.exists() else None


def start(pid: int, seconds: float, out: Path, rate: int = 200) -> subprocess.Popen[bytes]:
    """Start recording `pid` for `seconds` into `out` (collapsed stacks); wait() the result."""
    exe = _venv_py_spy() or shutil.which("py-spy") or "py-spy"
    return subprocess.Popen(
        [
            exe, "record", "--nonblocking", "-p", str(pid), "-d", str(max(1, round(seconds))),
            "-r", str(rate), "--format", "raw", "-o", str(out),
        ],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip


def finish(recording: subprocess.Popen[bytes], timeout: float = 60) -> None:
    try:
        recording.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        recording.terminate()
        recording.wait()
    time.sleep(0.1)


def _area(path: str) -> str:
    for marker, name in _AREAS:
        if marker in path:
            return name
    return "python stdlib / other" if "python3" in path else f"other ({path.rsplit('/', 1)[-1]})"


def _short(frame: str) -> str:
    match = _FRAME.match(frame)
    if not match:
        return frame
    path = match["path"]
    for root in ("site-packages/", "/work/main/", "python3.11/"):
        if root in path:
            path = path.split(root, 1)[1]
    return f"{match['func']} ({path})"


def summarize(raw: Path, top: int = 15) -> dict[str, Any]:
    """Shares of samples: by area (where the leaf frame is) and by function (self, inclusive)."""
    total = 0
    by_area: Counter[str] = Counter()
    by_self: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    for line in raw.read_text().splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        frames = stack.split(";")
        total += count
        leaf = frames[-1]
        match = _FRAME.match(leaf)
        by_area[_area(match["path"] if match else leaf)] += count
        by_self[_short(leaf)] += count
        for name in {_short(f) for f in frames}:
            if any(m in name for m in ("ingress/", "workers/", "shared/", "benchmarks/")):
                inclusive[name] += count

    def share(counter: Counter[str], n: int) -> list[list[Any]]:
        return [[name, round(100 * c / total, 1)] for name, c in counter.most_common(n)]

    return {
        "samples": total,
        "by_area_pct": share(by_area, 30) if total else [],
        "top_self_pct": share(by_self, top) if total else [],
        "project_inclusive_pct": share(inclusive, top) if total else [],
    }


def print_summary(title: str, summary: dict[str, Any]) -> None:
    print(f"\nprofile: {title} ({summary['samples']} samples, CPU time only)")
    print("  by area (leaf frame):")
    for name, pct in summary["by_area_pct"]:
        print(f"    {pct:5.1f}%  {name}")
    print("  top functions (self):")
    for name, pct in summary["top_self_pct"]:
        print(f"    {pct:5.1f}%  {name}")
    print("  project functions (inclusive):")
    for name, pct in summary["project_inclusive_pct"]:
        print(f"    {pct:5.1f}%  {name}")
