"""`python -m devtools.demo` (`make run`): the pipeline end to end on this machine, with a summary.

Kafka and Redis come from `KAFKA_BOOTSTRAP_SERVERS` and `REDIS_URL` when both are set; otherwise
from the local stack (`paynotify stack up`, ports 9092/6379), which is reused when it is up and
started (then stopped again at the end) when it is not.
"""

from __future__ import annotations

import argparse
import os
import secrets
import signal
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

import orjson

from devtools.demo.driver import DemoConfig, RunResult, Services, run_demo
from devtools.demo.report import render, summarize
from devtools.stack.local import LocalStack, StackError, cache_dir, default_state_dir
from shared.logs import configure_logging

if TYPE_CHECKING:
    from collections.abc import Sequence
    from types import FrameType

EXIT_FAILED = 1
EXIT_SETUP = 2
EXIT_INTERRUPTED = 130
REPO = Path(__file__).resolve().parents[2]
EXAMPLE_MERCHANTS = REPO / "deploy" / "merchants.example.toml"


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    defaults = DemoConfig()
    parser = argparse.ArgumentParser(
        prog="python -m devtools.demo",
        description=__doc__,
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--orders", type=int, default=defaults.orders, help="orders to create")
    parser.add_argument("--rate", type=float, default=defaults.rate, help="orders per second")
    parser.add_argument(
        "--time-scale", type=float, default=defaults.time_scale, help="PAYNOTIFY_TIME_SCALE"
    )
    parser.add_argument("--workers", type=int, default=defaults.workers, help="worker processes")
    parser.add_argument(
        "--expiry", type=float, default=defaults.expiry, help="real seconds to an unpaid expiry"
    )
    parser.add_argument(
        "--settle-timeout",
        type=float,
        default=defaults.settle_timeout,
        help="real seconds to wait for the last outcomes",
    )
    parser.add_argument("--seed", type=int, default=defaults.seed, help="of the plan and sandbox")
    parser.add_argument(
        "--merchants", type=Path, help="merchants TOML (default: deploy/merchants.example.toml)"
    )
    parser.add_argument("--state-dir", type=Path, help="default: ~/.cache/paynotify/demo/<run>")
    parser.add_argument("--json", type=Path, help="also write the summary here, as JSON")
    args = parser.parse_args(argv)
    if args.orders < 20 or args.workers < 1 or not args.rate > 0 or not args.time_scale > 0:
        parser.error("--orders needs 20 or more; --workers, --rate, --time-scale must be positive")
    return args


class _Services:
    """Kafka and Redis for the run. From the environment, or the local stack: what was already
    up stays up; what this run started, it stops."""

    def __init__(self, kafka: str | None, redis: str | None) -> None:
        self.given = Services(kafka, redis) if kafka and redis else None
        self.stack = LocalStack(state_dir=default_state_dir())
        self.started: list[str] = []

    def up(self) -> Services:
        if self.given is not None:
            return self.given
        self.started = [name for name, alive in self.stack.status().items() if not alive]
        if self.started:
            sys.stderr.write(f"demo: starting the local stack ({', '.join(self.started)})\n")
        self.stack.up()  # idempotent: reuses what runs
        return Services(self.stack.bootstrap_servers, self.stack.redis_url)

    def down(self) -> None:
        # Ctrl-C here would leave a half-stopped broker; the stop is bounded (30 s) anyway.
        previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
        try:
            if "kafka" in self.started:
                self.stack.stop_kafka()
            if "redis" in self.started:
                self.stack.stop_redis()
        finally:
            signal.signal(signal.SIGINT, previous)


def _merchants_file(given: Path | None, state_dir: Path) -> Path:
    if given is not None:
        return given
    if EXAMPLE_MERCHANTS.exists():
        return EXAMPLE_MERCHANTS
    # Not in a checkout: a merchant with a fresh random key, known only to this run.
    path = state_dir / "merchants.toml"
    path.parent.mkdir(parents=True, exist_ok=True)
    key = secrets.token_hex(16)
    path.touch(mode=0o600)
    path.write_text(f'[merchants.demo0001]\nkeys = ["{key}"]\n')
    return path


def _terminate(signum: int, frame: FrameType | None) -> None:  # noqa: ARG001
    raise KeyboardInterrupt  # SIGTERM outside the event loop: clean up as for Ctrl-C


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    configure_logging("WARNING", "console")  # the demo's own client: only what goes wrong
    signal.signal(signal.SIGTERM, _terminate)
    run_id = time.strftime("%m%d%H%M%S") + secrets.token_hex(1)
    state_dir = args.state_dir or cache_dir() / "demo" / run_id
    config = DemoConfig(
        orders=args.orders, rate=args.rate, time_scale=args.time_scale, workers=args.workers,
        expiry=args.expiry, settle_timeout=args.settle_timeout, seed=args.seed,
    )  # fmt: skip
    services = _Services(os.environ.get("KAFKA_BOOTSTRAP_SERVERS"), os.environ.get("REDIS_URL"))
    try:
        result = run_demo(
            config, services.up(), merchants_file=_merchants_file(args.merchants, state_dir),
            state_dir=state_dir, run_id=run_id,
        )  # fmt: skip
        return _report(result, config, args.json)
    except StackError as exc:
        sys.stderr.write(f"demo: the local stack could not start: {exc}\n")
        return EXIT_SETUP
    except KeyboardInterrupt:
        sys.stdout.write("\ninterrupted; everything the demo started is stopped\n")
        return EXIT_INTERRUPTED
    finally:
        services.down()


def _report(result: RunResult, config: DemoConfig, json_path: Path | None) -> int:
    summary = summarize(result.observed)
    table = render(
        summary,
        time_scale=config.time_scale,
        workers=config.workers,
        query_latency=config.query_latency,
        query_error_rate=config.query_error_rate,
    )
    sys.stdout.write(table + "\n")
    if json_path is not None:
        document = {
            **summary.to_json(),
            "processes": result.processes,
            "redis_db": result.redis_db,
        }
        json_path.write_bytes(orjson.dumps(document, option=orjson.OPT_INDENT_2))
    if summary.interrupted:
        return EXIT_INTERRUPTED
    return 0 if summary.ok else EXIT_FAILED


if __name__ == "__main__":
    sys.exit(main())
