"""The worker as shipped, except that its Redis client's pool holds as many connections as it has
jobs in flight: what sizing the pool would give (docs/performance.md, "the Redis pool").

Benchmark-only: the project's code is not changed; this process swaps the `Redis` class the
worker's wiring uses for one whose `from_url` passes `max_connections`, then runs the worker.

    python -m benchmarks.pool_sized_worker     (same environment as `python -m workers`)
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

if not __package__:  # run as a script: make the repository root importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from redis.asyncio import Redis

import workers.__main__ as worker_main
from shared.settings import Settings

HEADROOM = 32  # the retry poller, the orders consumer and mark_published share the client


class PoolSizedRedis(Redis):
    @classmethod
    def from_url(cls, url: str, **kwargs: Any) -> Redis:
        kwargs.setdefault("max_connections", Settings.from_env().worker_concurrency + HEADROOM)
        return Redis.from_url(url, **kwargs)


def main() -> int:
    worker_main.Redis = PoolSizedRedis  # type: ignore[misc]
    return worker_main.main()


if __name__ == "__main__":
    sys.exit(main())
