"""`paynotify stack up|down|status [--brokers 3]`: exports go to stdout (for `eval`), progress to
stderr. With three brokers the exports include `PAYNOTIFY_TOPIC_REPLICATION=3`."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TYPE_CHECKING

from shared.stack.local import LocalStack, StackError, default_state_dir, stored_brokers

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
