"""`paynotify stack up|down|status [--brokers 3] [--redis-cluster 3]`: exports go to stdout (for
`eval`), progress to stderr. With three brokers the exports include
`PAYNOTIFY_TOPIC_REPLICATION=3`; with `--redis-cluster N`, Redis is a local N-primary Redis
Cluster (devtools.stack.redis_cluster) instead of one server, and `REDIS_URL` names it."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TYPE_CHECKING

from devtools.stack.local import LocalStack, StackError, default_state_dir, stored_brokers
from devtools.stack.redis_cluster import LocalRedisCluster

if TYPE_CHECKING:
    import argparse


def main(args: argparse.Namespace) -> int:
    state_dir = Path(args.state_dir) if args.state_dir else default_state_dir()
    # `down` and `status` find the cluster's size where `up` left it.
    brokers = getattr(args, "brokers", None) or stored_brokers(state_dir) or 1
    try:
        stack = LocalStack(
            state_dir=state_dir,
            kafka_port=args.kafka_port,
            redis_port=args.redis_port,
            brokers=brokers,
        )
        cluster = _cluster(stack, getattr(args, "redis_cluster", None))
        if cluster is not None:
            return _with_cluster(args.action, stack, cluster, state_dir)
        if args.action == "up":
            stack.up()
            print(stack.exports(), end="")
            print(f"stack: state in {state_dir}", file=sys.stderr)
        elif args.action == "down":
            stack.down()
        else:
            for name, alive in stack.status().items():
                print(f"{name}: {'running' if alive else 'stopped'}")
            return 0 if all(stack.status().values()) else 1
    except StackError as exc:
        print(f"stack: {exc}", file=sys.stderr)
        return 1
    return 0


def _cluster(stack: LocalStack, primaries: int | None) -> LocalRedisCluster | None:
    """The cluster `--redis-cluster` asks for, else the one an earlier `up` made (for `down`
    and `status`), else None (one Redis server)."""
    if primaries:
        return LocalRedisCluster(stack, primaries=primaries)
    return LocalRedisCluster.stored(stack)


def _with_cluster(
    action: str, stack: LocalStack, cluster: LocalRedisCluster, state_dir: Path
) -> int:
    if action == "up":
        cluster.up()
        stack.start_kafka()
        exports = stack.exports().replace(stack.redis_url, cluster.url)
        print(exports, end="")
        print(f"stack: state in {state_dir}", file=sys.stderr)
        return 0
    if action == "down":
        stack.stop_kafka()
        cluster.down()
        return 0
    status = {"kafka": stack.status()["kafka"], "redis-cluster": cluster.alive()}
    for name, alive in status.items():
        print(f"{name}: {'running' if alive else 'stopped'}")
    return 0 if all(status.values()) else 1
