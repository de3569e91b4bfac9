"""wrk as the load generator: C, one thread, far cheaper per request than the servers it loads.

A small Lua script cycles over pre-signed notification bodies. Closed loop at a number of
connections (peak), or paced (wrk2-style: request k is due at t0 + k / rate, a free connection
waits for the next slot), optionally stopping after `limit` notifications and logging each POST's
send time (for end-to-end latency). wrk's own CPU is read from /proc while it runs.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import orjson

from benchmarks.common import cpu_seconds

if TYPE_CHECKING:
    from collections.abc import Sequence

_WRK_SCRIPT = r"""
local ffi = require("ffi")
ffi.cdef[[
typedef struct { long tv_sec; long tv_nsec; } bench_timespec;
int clock_gettime(int clock, bench_timespec *ts);
]]
local ts = ffi.new("bench_timespec")
local function now()
  ffi.C.clock_gettime(0, ts)
  return tonumber(ts.tv_sec) + tonumber(ts.tv_nsec) * 1e-9
end

local bodies, n, i = {}, 0, 0
local limit = tonumber(os.getenv("BENCH_LIMIT") or "0")
local rate = tonumber(os.getenv("BENCH_RATE") or "0")
local connections = tonumber(os.getenv("BENCH_CONNECTIONS") or "0")
local headers = {["Content-Type"] = "application/x-www-form-urlencoded"}
local sendlog = nil
late, sent, t0, slot = 0, 0, nil, 0
local threads = {}

setup = function(thread) table.insert(threads, thread) end

init = function(args)
  for line in io.lines(os.getenv("BENCH_BODIES")) do n = n + 1; bodies[n] = line end
  local path = os.getenv("BENCH_SENDLOG") or ""
  if path ~= "" then sendlog = io.open(path, "w"); sendlog:setvbuf("line") end
end

request = function()
  i = i + 1
  -- Every connection's first request is a cheap GET: paced runs then do not measure the
  -- opening burst of `connections` requests as queueing, and wrk drops the result of the very
  -- first call (seen: body 0 logged as sent, never received), so that one sends nothing.
  if i <= connections then return wrk.format("GET", "/healthz") end
  -- Past `limit`, cheap GETs until the harness stops wrk: stopping the thread here could
  -- leave a notification half-written on some other connection.
  if limit > 0 and sent >= limit then return wrk.format("GET", "/healthz") end
  sent = sent + 1
  local index = (sent - 1) % n
  if sendlog then sendlog:write(index, " ", string.format("%.6f", now()), "\n") end
  return wrk.format("POST", nil, headers, bodies[index + 1])
end

if rate > 0 then
  -- wrk2-style pacing: each request has a slot at t0 + k / rate; a connection that comes
  -- free waits for the next unclaimed slot. A slot claimed more than 2 ms late is counted.
  delay = function()
    local t = now()
    if t0 == nil then t0 = t end
    slot = slot + 1
    local wait = t0 + slot / rate - t
    if wait < -0.002 then late = late + 1 end
    if wait <= 0 then return 0 end
    return math.floor(wait * 1000 + 0.5)
  end
end

done = function(summary, latency, requests)
  local e = summary.errors
  local late_total, sent_total = 0, 0
  for _, t in ipairs(threads) do
    late_total = late_total + (t:get("late") or 0)
    sent_total = sent_total + (t:get("sent") or 0)
  end
  io.write(string.format(
    '\nBENCH_JSON {"requests":%d,"posts":%d,"late":%d,"duration_us":%d,"bytes":%d,' ..
    '"connect_errors":%d,"read_errors":%d,"write_errors":%d,"status_errors":%d,' ..
    '"timeouts":%d,"p50_us":%d,"p90_us":%d,"p99_us":%d,"p999_us":%d,"max_us":%d,' ..
    '"mean_us":%.1f}\n',
    summary.requests, sent_total, late_total, summary.duration, summary.bytes, e.connect,
    e.read, e.write, e.status, e.timeout, latency:percentile(50), latency:percentile(90),
    latency:percentile(99), latency:percentile(99.9), latency.max, latency.mean))
end
"""


def write_bodies(bodies: Sequence[bytes], directory: Path) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / "bodies.txt"
    path.write_bytes(b"\n".join(bodies) + b"\n")
    return path


@dataclass(frozen=True)
class WrkResult:
    requests: int  # notifications POSTed
    seconds: float
    rate: float
    errors: int
    late: int  # paced runs: requests sent more than 2 ms after their slot
    latency_ms: dict[str, float]
    generator_cpu: float  # cores used by wrk over the run
    started_at: float  # Unix time wrk started

    def row(self) -> dict[str, Any]:
        return {
            "requests": self.requests,
            "seconds": round(self.seconds, 2),
            "rate_per_s": round(self.rate, 1),
            "errors": self.errors,
            **self.latency_ms,
            "generator_cpu_cores": self.generator_cpu,
        }


def ensure_wrk() -> str:
    found = shutil.which("wrk")
    if found is None:
        raise SystemExit("wrk is not installed: `make bench` installs it (apt-get install wrk)")
    return found


def run_wrk(
    url: str,
    bodies_file: Path,
    *,
    connections: int,
    duration: float,
    limit: int = 0,
    rate: float = 0.0,
    sendlog: Path | None = None,
) -> WrkResult:
    """Load at `connections` for `duration` seconds (or until `limit` notifications): closed
    loop, or paced at `rate` per second. `sendlog` gets "body-index unix-time" per POST."""
    wrk = ensure_wrk()
    with tempfile.TemporaryDirectory(prefix="bench-wrk-") as tmp:
        script = Path(tmp) / "notify.lua"
        script.write_text(_WRK_SCRIPT)
        argv = [
            wrk, "-t1", f"-c{connections}", f"-d{max(1, round(duration))}s",
            "--timeout", "10s", "-s", str(script), url,
        ]  # fmt: skip
        env = {
            **os.environ, "BENCH_BODIES": str(bodies_file), "BENCH_LIMIT": str(limit),
            "BENCH_RATE": str(rate), "BENCH_CONNECTIONS": str(connections),
            "BENCH_SENDLOG": str(sendlog or ""),
        }  # fmt: skip
        started_at = time.time()
        started = time.monotonic()
        process = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env)
        # wrk's own CPU, read while it is alive (it is our child: gone once reaped).
        cpu_start = cpu_seconds(process.pid) or 0.0
        cpu_last = cpu_start
        finished_at: float | None = None
        while process.poll() is None:
            value = cpu_seconds(process.pid)
            cpu_last = value if value is not None else cpu_last
            time.sleep(0.1)
            # wrk runs its whole duration even after `limit`: once the last notification went
            # out, a second for the answers, then SIGINT (wrk stops and still reports).
            if limit and sendlog is not None and finished_at is None and _lines(sendlog) >= limit:
                finished_at = time.monotonic()
            if finished_at is not None and time.monotonic() - finished_at > 1.0:
                process.send_signal(signal.SIGINT)
                finished_at = float("inf")
        elapsed = time.monotonic() - started
        output = process.stdout.read().decode() if process.stdout else ""
    line = next((x for x in output.splitlines() if x.startswith("BENCH_JSON ")), None)
    if line is None:
        raise RuntimeError(f"wrk printed no result:\n{output[-2000:]}")
    data = orjson.loads(line.removeprefix("BENCH_JSON "))
    seconds = data["duration_us"] / 1e6
    posts = min(data["posts"], limit) if limit else data["posts"]
    errors = sum(
        data[k]
        for k in ("connect_errors", "read_errors", "write_errors", "status_errors", "timeouts")
    )
    return WrkResult(
        requests=posts,
        seconds=seconds,
        rate=posts / seconds if seconds else 0.0,
        errors=errors,
        late=data["late"],
        latency_ms={
            "p50_ms": round(data["p50_us"] / 1000, 2),
            "p90_ms": round(data["p90_us"] / 1000, 2),
            "p99_ms": round(data["p99_us"] / 1000, 2),
            "p999_ms": round(data["p999_us"] / 1000, 2),
            "max_ms": round(data["max_us"] / 1000, 2),
        },
        generator_cpu=round((cpu_last - cpu_start) / max(elapsed, 1e-9), 3),
        started_at=started_at,
    )


def _lines(path: Path) -> int:
    try:
        with path.open("rb") as handle:
            return sum(chunk.count(b"\n") for chunk in iter(lambda: handle.read(1 << 16), b""))
    except OSError:
        return 0


def read_sendlog(path: Path) -> dict[int, float]:
    """Body index -> Unix time its POST was written (the first time, if the bodies wrapped)."""
    sent: dict[int, float] = {}
    for line in path.read_text().splitlines():
        index, _, at = line.partition(" ")
        if at:
            sent.setdefault(int(index), float(at))
    return sent


__all__ = ["read_sendlog", "run_wrk", "write_bodies"]
