"""A running `docker compose up` of this repository, as the services `make test` and `make run` use.

docker-compose.yml publishes Kafka and Redis on 127.0.0.1 (Kafka advertising that address to
clients on the host), so a machine with Docker and without Java can use them. This module only
asks `docker compose ps` which of them run and where; it needs nothing beyond the standard library
(the Makefile runs it with the system's Python, before `.venv` exists).

`python -m devtools.stack.compose` prints `KAFKA_BOOTSTRAP_SERVERS REDIS_URL` on one line when both
run, else nothing (exit 1).
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from collections.abc import Callable
    from pathlib import Path

KAFKA_PORT = 9092  # the port inside the container whose listener advertises 127.0.0.1
REDIS_PORT = 6379
_TIMEOUT = 10.0


@dataclass(frozen=True)
class ComposeServices:
    kafka_bootstrap: str
    redis_url: str


def _docker_ps(argv: list[str], cwd: Path | None) -> str | None:
    """`docker compose ps` output, or None where there is no docker or it fails."""
    if shutil.which(argv[0]) is None:
        return None
    try:
        done = subprocess.run(
            argv, cwd=cwd, capture_output=True, text=True, timeout=_TIMEOUT, check=False
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    return done.stdout if done.returncode == 0 else None


def parse_ps(output: str) -> ComposeServices | None:
    """Kafka and Redis from `docker compose ps --format json` (one object a line, or, from older
    versions, one array), when both run and are published on a host address."""
    text = output.strip()
    if not text:
        return None
    try:
        rows: list[Any] = (
            json.loads(text)
            if text.startswith("[")
            else [json.loads(line) for line in text.splitlines() if line.strip()]
        )
    except ValueError:
        return None
    kafka = _published(rows, "kafka", KAFKA_PORT)
    redis = _published(rows, "redis", REDIS_PORT)
    if kafka is None or redis is None:
        return None
    return ComposeServices(kafka_bootstrap=kafka, redis_url=f"redis://{redis}/0")


def _published(rows: list[Any], service: str, target: int) -> str | None:
    for row in rows:
        if not isinstance(row, dict) or row.get("Service") != service:
            continue
        if row.get("State") != "running":
            return None
        for port in row.get("Publishers") or ():
            if port.get("TargetPort") == target and port.get("PublishedPort"):
                host = port.get("URL") or "127.0.0.1"
                host = "127.0.0.1" if host in {"0.0.0.0", "::"} else host  # noqa: S104
                return f"{host}:{port['PublishedPort']}"
    return None


def running(
    cwd: Path | None = None,
    run: Callable[[list[str], Path | None], str | None] = _docker_ps,
) -> ComposeServices | None:
    """The compose stack's Kafka and Redis, if `docker compose up` runs them (from `cwd`)."""
    output = run(["docker", "compose", "ps", "--format", "json"], cwd)
    return None if output is None else parse_ps(output)


def main() -> int:
    found = running()
    if found is None:
        return 1
    print(found.kafka_bootstrap, found.redis_url)  # read by the Makefile
    return 0


if __name__ == "__main__":
    sys.exit(main())
