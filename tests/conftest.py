"""Session fixtures that give tests real Kafka and Redis endpoints.

Where they come from, in order:
1. `KAFKA_BOOTSTRAP_SERVERS` and `REDIS_URL`, when both are set (a stack somebody already runs);
   else a running `docker compose up` of this repository (devtools.stack.compose), as `make` finds;
2. the local stack (`devtools.stack.local`) started on free ports in a temporary state directory,
   when Java, Maven and redis-server are present;
3. testcontainers, when a Docker engine answers;
otherwise every test that needs a service **fails** with a message naming what is missing. They are
never skipped: a green run means the services were really there.

Tests that start, pause or kill servers of their own (the outage tests, the e2e tier's brokers, the
chaos run: their fixtures below, or the `own_stack` marker) need the local stack's programs. On a
machine without them that uses services from outside (a Docker-only user's compose stack), they
are deselected, and the run's last lines say how many and why; CI has the programs and runs all.

`PAYNOTIFY_TEST_REDIS_CLUSTER=1` runs the session's Redis as a local three-primary Redis Cluster
(devtools.stack.redis_cluster) instead of one server: `make test-cluster` runs the integration and
e2e tiers that way. Modules that stop and start a Redis of their own keep a single server.
"""

from __future__ import annotations

import os
import shutil
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
from hypothesis import settings

from devtools.stack import compose
from devtools.stack.local import LocalStack, free_port
from devtools.stack.redis_cluster import LocalRedisCluster

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Awaitable, Callable, Iterator

# The document's example merchant and key, plus a second key to exercise rotation.
TEST_MCH_ID = "t9awtvk6dn"
TEST_KEY = "25e72d96d0ffe0bb74373344d986df3c"
TEST_OLD_KEY = "0a1b2c3d4e5f60718293a4b5c6d7e8f9"
OTHER_MCH_ID = "m2otherco"
OTHER_KEY = "f00dfeedf00dfeedf00dfeedf00dfeed"


# Hypothesis: CI replays the same examples on every run (a failure there can be replayed exactly
# from the printed blob); local runs keep exploring new ones. `HYPOTHESIS_PROFILE` overrides.
settings.register_profile("ci", derandomize=True, print_blob=True)
settings.register_profile("dev", print_blob=True)
settings.load_profile(
    os.environ.get("HYPOTHESIS_PROFILE") or ("ci" if os.environ.get("CI") else "dev")
)


@dataclass(frozen=True)
class Services:
    kafka_bootstrap: str
    redis_url: str
    origin: str  # "environment", "local stack" or "testcontainers"


def _missing_for_local_stack() -> list[str]:
    missing = [tool for tool in ("java", "mvn") if shutil.which(tool) is None]
    if shutil.which("redis-server") is None and not Path("/usr/bin/redis-server").exists():
        missing.append("redis-server")
    return missing


def _docker_answers() -> bool:
    try:
        import docker  # noqa: PLC0415 - only when there is no other way

        docker.from_env().ping()
    except Exception:  # any failure means: no engine to use
        return False
    return True


def _outside_services() -> Services | None:
    kafka, redis = os.environ.get("KAFKA_BOOTSTRAP_SERVERS"), os.environ.get("REDIS_URL")
    if kafka and redis:
        return Services(kafka, redis, "environment")
    found = compose.running(Path(__file__).resolve().parents[1])
    if found is not None:
        return Services(found.kafka_bootstrap, found.redis_url, "docker compose")
    return None


# Fixtures that start, pause or kill servers of their own with the local stack's programs.
_OWN_SERVERS = frozenset({"kafka_stack", "own_redis", "module_kafka", "cluster"})
_NOT_RUN = pytest.StashKey[tuple[int, list[str]]]()


def _needs_own_servers(item: pytest.Item) -> bool:
    fixtures = set(getattr(item, "fixturenames", ()))
    markers = {m.name for m in item.iter_markers()}
    return bool(fixtures & _OWN_SERVERS or markers & {"own_stack", "chaos"})


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    missing = _missing_for_local_stack()
    if not missing or all(item.get_closest_marker("unit") for item in items):
        return
    if _outside_services() is None:
        return  # the tests fail, naming what is missing: nothing is left out silently
    own = [item for item in items if _needs_own_servers(item)]
    if own:
        config.hook.pytest_deselected(items=own)
        items[:] = [item for item in items if not _needs_own_servers(item)]
        config.stash[_NOT_RUN] = (len(own), missing)


def pytest_terminal_summary(
    terminalreporter: pytest.TerminalReporter, config: pytest.Config
) -> None:
    if _NOT_RUN in config.stash:
        count, missing = config.stash[_NOT_RUN]
        terminalreporter.write_line(
            f"paynotify: {count} tests NOT RUN: they start servers of their own, which needs "
            f"{', '.join(missing)} (README, 'Docker only')",
            yellow=True,
        )


@pytest.fixture(scope="session")
def services(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Services]:
    outside = _outside_services()
    if outside is not None:
        yield outside
        return
    missing = _missing_for_local_stack()
    if not missing and redis_cluster_wanted():
        yield from _with_cluster(tmp_path_factory)
        return
    if not missing:
        stack = LocalStack(
            state_dir=tmp_path_factory.mktemp("stack"),
            kafka_port=free_port(),
            redis_port=free_port(),
        )
        stack.up()
        try:
            yield Services(stack.bootstrap_servers, stack.redis_url, "local stack")
        finally:
            stack.down()
        return
    if _docker_answers():
        from testcontainers.kafka import KafkaContainer  # noqa: PLC0415
        from testcontainers.redis import RedisContainer  # noqa: PLC0415

        with KafkaContainer("apache/kafka:4.1.1") as k, RedisContainer("redis:7") as r:
            host, port = r.get_container_host_ip(), r.get_exposed_port(6379)
            yield Services(k.get_bootstrap_server(), f"redis://{host}:{port}/0", "testcontainers")
        return
    pytest.fail(
        "no Kafka/Redis for integration tests: set KAFKA_BOOTSTRAP_SERVERS and REDIS_URL, or "
        f"install {', '.join(missing)} for the local stack, or run a Docker engine"
    )


def redis_cluster_wanted() -> bool:
    return os.environ.get("PAYNOTIFY_TEST_REDIS_CLUSTER", "") not in {"", "0"}


def _with_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Services]:
    stack = LocalStack(
        state_dir=tmp_path_factory.mktemp("stack"), kafka_port=free_port(), redis_port=0
    )
    cluster = LocalRedisCluster(stack, primaries=3)
    cluster.up()
    try:
        stack.start_kafka()
        try:
            yield Services(stack.bootstrap_servers, cluster.url, "local stack, Redis Cluster")
        finally:
            stack.stop_kafka()
    finally:
        cluster.down()


@pytest.fixture(scope="session")
def kafka_bootstrap(services: Services) -> str:
    return services.kafka_bootstrap


@pytest.fixture(scope="session")
def redis_url(services: Services) -> str:
    return services.redis_url


@pytest.fixture(scope="module")
def kafka_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalStack]:
    """A broker of the test module's own, for tests that stop and restart it."""
    missing = _missing_for_local_stack()
    if missing:
        pytest.fail(f"broker outage tests need the local stack; missing: {', '.join(missing)}")
    stack = LocalStack(
        state_dir=tmp_path_factory.mktemp("outage-stack"), kafka_port=free_port(), redis_port=0
    )
    stack.start_kafka()
    try:
        yield stack
    finally:
        stack.stop_kafka()


@pytest.fixture(scope="session")
def merchants_toml() -> str:
    return (
        f'[merchants.{TEST_MCH_ID}]\nkeys = ["{TEST_KEY}", "{TEST_OLD_KEY}"]\n\n'
        f'[merchants.{OTHER_MCH_ID}]\nkeys = ["{OTHER_KEY}"]\nallow_from = ["10.9.8.0/24"]\n'
    )


@pytest.fixture(scope="session")
def merchants_file(tmp_path_factory: pytest.TempPathFactory, merchants_toml: str) -> Path:
    path = tmp_path_factory.mktemp("merchants") / "merchants.toml"
    path.write_text(merchants_toml)
    return path


@pytest.fixture
async def fresh_topic(kafka_bootstrap: str) -> AsyncIterator[Callable[..., Awaitable[str]]]:
    """A factory of uniquely named topics, deleted after the test."""
    from aiokafka.admin import AIOKafkaAdminClient, NewTopic  # noqa: PLC0415

    admin = AIOKafkaAdminClient(bootstrap_servers=kafka_bootstrap)
    await admin.start()
    made: list[str] = []

    async def make(prefix: str = "test", partitions: int = 3) -> str:
        name = f"{prefix}.{uuid.uuid4().hex[:12]}"
        await admin.create_topics([NewTopic(name, partitions, 1)])
        made.append(name)
        return name

    try:
        yield make
    finally:
        if made:
            await admin.delete_topics(made)
        await admin.close()
