"""`paynotify`: one command line for every process and tool of the project.

Each subcommand imports its module only when it runs, so `paynotify sign` never loads Kafka.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from collections.abc import Callable, Sequence

# subcommand -> "module:function"; the function takes the parsed arguments and returns an exit code.
_HANDLERS = {
    "stack": "shared.stack.commands:main",
    "sign": "shared.protocol.commands:sign_main",
    "verify": "shared.protocol.commands:verify_main",
    "sandbox": "shared.sandbox.server:main",
    "ingress": "ingress.__main__:main",
    "worker": "workers.__main__:main",
    "sweeper": "workers.sweeper_main:main",
    "topics": "shared.adapters.topics:main",
}


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="paynotify", description="Merchant-side pipeline for payment notifications."
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    stack = sub.add_parser("stack", help="run the local Kafka and Redis as plain processes")
    stack.add_argument("action", choices=("up", "down", "status"))
    stack.add_argument("--state-dir", help="where data and logs live (default ~/.cache/paynotify)")
    stack.add_argument("--kafka-port", type=int, default=9092)
    stack.add_argument("--redis-port", type=int, default=6379)

    for name, text in (
        ("sign", "print a form's signature"),
        ("verify", "check a form's signature"),
    ):
        cmd = sub.add_parser(name, help=text)
        cmd.add_argument("--key", required=True, help="the merchant key (mch_key)")
        cmd.add_argument("pairs", nargs="*", metavar="k=v", help="form fields, raw as signed")

    sandbox = sub.add_parser("sandbox", help="run the sandbox payment platform")
    sandbox.add_argument("--host", default="127.0.0.1")
    sandbox.add_argument("--port", type=int, default=8090)
    sandbox.add_argument("--config", help="merchants TOML (default: PAYNOTIFY_MERCHANTS_FILE)")
    sandbox.add_argument("--time-scale", type=float, help="default: PAYNOTIFY_TIME_SCALE")
    sandbox.add_argument("--pay-after", type=float, help="auto-pay orders after N s (scaled)")
    sandbox.add_argument("--seed", type=int, help="seed of the sandbox's random choices")

    ingress = sub.add_parser("ingress", help="serve POST /notify for the platform")
    ingress.add_argument("--host", default="127.0.0.1")
    ingress.add_argument("--port", type=int, default=8080)

    sub.add_parser("worker", help="consume notifications, reconcile, publish events")
    sub.add_parser("sweeper", help="query pending orders whose notifications never came")

    topics = sub.add_parser("topics", help="manage the project's Kafka topics")
    topics.add_argument("action", choices=("ensure",))
    return parser


def _resolve(target: str) -> Callable[[argparse.Namespace], int]:
    module_name, _, function = target.partition(":")
    handler: Callable[[argparse.Namespace], int] = getattr(
        importlib.import_module(module_name), function
    )
    return handler


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    return _resolve(_HANDLERS[args.command])(args)


if __name__ == "__main__":
    sys.exit(main())
