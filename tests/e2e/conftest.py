"""The whole pipeline as processes: each e2e module gets a Kafka broker of its own (the project's
topic names are fixed, and a fresh consumer group reads a topic from its start, so modules must
not see each other's messages) and a Redis database of its own on the session's Redis."""

from __future__ import annotations

import itertools
from typing import TYPE_CHECKING

import pytest

from devtools.stack.local import LocalStack, free_port
from devtools.stack.pipeline import Pipeline
from tests.support.redis_db import empty_db, in_db

if TYPE_CHECKING:
    from collections.abc import Iterator
    from pathlib import Path

# Databases 1-11 for pipeline modules (0 is the session's, 12+ are taken by other e2e tests).
_databases = itertools.count(1)


@pytest.fixture(scope="module")
def module_kafka(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    stack = LocalStack(
        state_dir=tmp_path_factory.mktemp("e2e-kafka"), kafka_port=free_port(), redis_port=0
    )
    stack.start_kafka()
    try:
        yield stack.bootstrap_servers
    finally:
        stack.stop_kafka()


@pytest.fixture(scope="module")
async def module_redis(redis_url: str) -> str:
    """A database of the module's own (on a cluster, the cluster, emptied for the module)."""
    url = in_db(redis_url, next(_databases))
    await empty_db(url)
    return url


@pytest.fixture(scope="module")
def pipeline(
    module_kafka: str,
    module_redis: str,
    merchants_file: Path,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Pipeline]:
    """Topics made and the sandbox running; tests start ingress, workers and sweeper."""
    p = Pipeline(
        tmp_path_factory.mktemp("pipeline"),
        {
            "KAFKA_BOOTSTRAP_SERVERS": module_kafka,
            "REDIS_URL": module_redis,
            "PAYNOTIFY_MERCHANTS_FILE": str(merchants_file),
            "PAYNOTIFY_TIME_SCALE": "0.001",
            "PAYNOTIFY_ORDER_RECORDS": "required",
            "PAYNOTIFY_TOPIC_PARTITIONS": "6",
        },
    )
    p.ensure_topics()
    p.start_sandbox("--seed", "7")
    try:
        yield p
    finally:
        logs = {proc.name: proc.tail(1500) for proc in p.processes}
        p.stop_all()
        for name, text in logs.items():
            print(f"----- {name} (tail)\n{text}")  # noqa: T201 - pytest shows it on failure
