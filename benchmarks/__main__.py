"""`python -m benchmarks [names] [--profile]`: run the benchmarks against one stack (`make bench`).

Kafka and Redis come from KAFKA_BOOTSTRAP_SERVERS/REDIS_URL, else a local stack is started on
free ports for the whole run and stopped at the end. Each benchmark runs as its own process,
prints its table and its headline; the headlines are repeated at the end.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

if not __package__:  # run as a script: make the repository root importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.common import ROOT, in_db, log, services

ALL = ("ingress", "worker", "peer", "e2e", "ceiling", "soak")
PROFILED = {"ingress", "worker"}
DEADLINE = 600.0  # seconds for any one benchmark
DEADLINES = {"soak": 1_200.0}  # ten minutes of load, then the drain


def main() -> int:
    parser = argparse.ArgumentParser(description="run the benchmarks")
    parser.add_argument("names", nargs="*", help=f"some of {', '.join(ALL)} (default: all)")
    parser.add_argument("--profile", action="store_true", help="profile ingress and worker")
    args = parser.parse_args()
    names = args.names or list(ALL)
    unknown = sorted(set(names) - set(ALL))
    if unknown:
        parser.error(f"unknown benchmarks: {', '.join(unknown)}")
    headlines: list[str] = []
    failed: list[str] = []
    started = time.monotonic()
    with services() as svc:
        env = {
            **os.environ,
            "KAFKA_BOOTSTRAP_SERVERS": svc.bootstrap,
            "REDIS_URL": in_db(svc.redis_url, 0),
        }
        for name in names:
            log(f"benchmark {name}")
            argv = [sys.executable, "-m", f"benchmarks.{name}"]
            if args.profile and name in PROFILED:
                argv.append("--profile")
            lines: list[str] = []
            with subprocess.Popen(
                argv, cwd=ROOT, env=env, stdout=subprocess.PIPE, text=True
            ) as process:
                # Every benchmark bounds its own phases; this is the last resort.
                timer = threading.Timer(DEADLINES.get(name, DEADLINE), process.terminate)
                timer.daemon = True
                timer.start()
                try:
                    assert process.stdout is not None
                    for line in process.stdout:
                        sys.stdout.write(line)
                        lines.append(line.rstrip("\n"))
                    code = process.wait()
                finally:
                    timer.cancel()
            if code != 0:
                failed.append(name)
            elif lines and lines[-1].startswith("HEADLINE"):
                headlines.append(lines[-1])
    print(f"\nall benchmarks ({time.monotonic() - started:.0f} s):")
    for line in headlines:
        print(f"  {line}")
    if failed:
        print(f"FAILED: {', '.join(failed)}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
