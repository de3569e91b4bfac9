"""`python -m tests.chaos` (`make chaos`): a chaos run; the last line is its figures.

Exit 0 when lost, conflicting, forged_accepted, underpaid_accepted, stuck (and unexpected) are
all zero; 1 when one is not; 2 when the run could not be carried out; 3 when it ran out of time;
130 when interrupted. Every process it started is stopped in every case.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Self

from shared.logs import configure_logging
from tests.chaos.harness import EXIT_TIMED_OUT, ChaosConfig, run_chaos
from tests.chaos.schedule import Kind

if TYPE_CHECKING:
    from collections.abc import Sequence
    from types import FrameType

SHORT_PAYMENTS = 1000


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m tests.chaos",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--payments", type=int, help="orders to create (default 10000; 1000 with --short)"
    )
    parser.add_argument("--seed", type=int, default=1, help="of the fault schedule and the orders")
    parser.add_argument("--brokers", type=int, choices=(1, 3), default=1, help="Kafka brokers")
    parser.add_argument("--workers", type=int, default=2, help="worker processes (2 or more)")
    parser.add_argument(
        "--short", action="store_true", help="the shortened run: each fault kind once"
    )
    parser.add_argument(
        "--duration",
        type=float,
        help="real seconds over which orders are created and faults begin "
        "(default: what the fault schedule needs)",
    )
    parser.add_argument(
        "--rate",
        type=float,
        help="orders per second, at most (default 25; lower when the fault schedule needs "
        "more time than the orders take)",
    )
    parser.add_argument("--time-scale", type=float, default=0.01, help="PAYNOTIFY_TIME_SCALE")
    parser.add_argument(
        "--settle-timeout",
        type=float,
        default=300.0,
        help="real seconds to wait for quiescence after the last fault (default 300)",
    )
    parser.add_argument(
        "--timeout",
        type=float,
        help="real seconds the whole run may take before it is stopped as failed "
        "(default 3600; 900 with --short)",
    )
    parser.add_argument(
        "--faults",
        type=_kinds,
        metavar="KIND,...",
        help="only these fault kinds, e.g. worker_kill,worker_stop for a clean hand-over "
        f"measurement (default: all of {', '.join(k.value for k in Kind)})",
    )
    parser.add_argument("--state-dir", type=Path, help="default: a new temporary directory")
    parser.add_argument(
        "--keep", action="store_true", help="keep the state directory after a run that passed"
    )
    args = parser.parse_args(argv)
    if args.payments is None:
        args.payments = SHORT_PAYMENTS if args.short else 10_000
    if args.timeout is None:
        args.timeout = 900.0 if args.short else 3600.0
    if args.payments < 200 or args.workers < 2 or not args.time_scale > 0:
        parser.error("--payments needs 200 or more, --workers 2 or more, --time-scale > 0")
    return args


def _kinds(text: str) -> frozenset[Kind]:
    try:
        return frozenset(Kind(name.strip()) for name in text.split(",") if name.strip())
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


class _Deadline:
    """SIGTERM to this process when the run's time is up: it winds down as for Ctrl-C."""

    def __init__(self, seconds: float) -> None:
        self.expired = False
        self._timer = threading.Timer(seconds, self._expire)
        self._timer.daemon = True

    def _expire(self) -> None:
        self.expired = True
        sys.stderr.write("chaos: the run's time is up; stopping everything it started\n")
        os.kill(os.getpid(), signal.SIGTERM)

    def __enter__(self) -> Self:
        self._timer.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._timer.cancel()


def _terminate(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt  # outside the event loop: clean up as for Ctrl-C


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    configure_logging("WARNING", "console")  # the harness's own clients: only what goes wrong
    # ... but not the Kafka client's lines for every reconnect while the faults are on.
    logging.getLogger("aiokafka").setLevel(logging.CRITICAL)
    signal.signal(signal.SIGTERM, _terminate)
    config = ChaosConfig(
        payments=args.payments, seed=args.seed, brokers=args.brokers, workers=args.workers,
        short=args.short, duration=args.duration, rate=args.rate, time_scale=args.time_scale,
        settle_timeout=args.settle_timeout, state_dir=args.state_dir, keep=args.keep,
        only=args.faults,
    )  # fmt: skip
    with _Deadline(args.timeout) as deadline:
        code = run_chaos(config)
    if deadline.expired:
        sys.stdout.write(f"timed out after {args.timeout:g}s\n")
        return EXIT_TIMED_OUT
    return code


if __name__ == "__main__":
    sys.exit(main())
