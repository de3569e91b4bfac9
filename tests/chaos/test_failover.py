"""A Redis Cluster primary killed under load (issue 13, tests/chaos/failover.py): with
`PAYNOTIFY_REDIS_WAIT_REPLICAS=1` the chaos run's checker finds no payment lost, none decided a
second time and none with contradicting outcomes; without it, the same run (the control) shows
the acknowledged outcomes the failover lost, decided again on changed facts.

Its own cluster (3 primaries, a replica each) per case, the session's Kafka; about 20 s a case.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import pytest

from devtools.stack.local import LocalStack
from devtools.stack.redis_cluster import LocalRedisCluster
from tests.chaos.failover import FailoverConfig, run_failover

if TYPE_CHECKING:
    from pathlib import Path

pytestmark = pytest.mark.chaos

PAYMENTS = 150


@pytest.fixture
def cluster(tmp_path: Path) -> LocalRedisCluster:
    stack = LocalStack(state_dir=tmp_path / "stack", kafka_port=0, redis_port=0)
    return LocalRedisCluster(stack, primaries=3, replicas=1)


async def run(cluster: LocalRedisCluster, bootstrap: str, replicas: int):
    cluster.up()
    try:
        config = FailoverConfig(payments=PAYMENTS, wait_replicas=replicas)
        return await run_failover(cluster, bootstrap, config, say=lambda _line: None)
    finally:
        cluster.down()


@pytest.mark.timeout(300)
async def test_waiting_for_a_replica_loses_and_redecides_nothing(
    cluster: LocalRedisCluster, kafka_bootstrap: str
) -> None:
    """WAIT 1: the writes primary 1 held alone were never published (WAIT fell short, they
    were retried), so their loss in the failover changes nothing the merchant saw: every payment
    has exactly one outcome, decided once."""
    result = await run(cluster, kafka_bootstrap, replicas=1)
    assert result.unreplicated > 0  # the window was there: primary 1 died holding writes
    assert result.not_replicated > 0  # and WAIT saw them fall short
    figures = result.figures
    assert (figures.lost, figures.conflicting, figures.unexpected) == (0, 0, 0), result.line()
    assert result.redecided == 0, result.line()
    assert figures.settled == PAYMENTS


@pytest.mark.timeout(300)
async def test_without_waiting_the_same_failover_loses_published_outcomes(
    cluster: LocalRedisCluster, kafka_bootstrap: str
) -> None:
    """The control (default settings): outcomes published from primary 1 and lost with it are
    decided again by the later deliveries, and the checker counts the contradictions. Were this
    zero, the test above would prove nothing."""
    result = await run(cluster, kafka_bootstrap, replicas=0)
    assert result.unreplicated > 0
    assert result.figures.conflicting == result.redecided == result.unreplicated, result.line()
    assert result.figures.lost == 0
