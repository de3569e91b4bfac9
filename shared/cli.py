"""`paynotify`: one command line for every process and tool of the project.

Each subcommand imports its module only when it runs, so `paynotify sign` never loads Kafka.
`sign` and `verify` take the merchant key from a file (`--key-file`) or `PAYNOTIFY_KEY` rather
than the command line, where other users can read it (`--key` still works; on a terminal it
warns).
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING

# Both pure (no I/O library): the worker's and sweeper's --help list what they read.
from shared.settings import environment_help
from shared.tracing import ENVIRONMENT as TRACING_ENVIRONMENT

if TYPE_CHECKING:
    from collections.abc import Callable, Mapping, Sequence

KEY_ENV = "PAYNOTIFY_KEY"
MAX_KEY_FILE_BYTES = 4096  # a key is 32 hex digits; a larger file is not a key file
EXIT_USAGE = 2
_KEY_SOURCES = (
    f"The merchant key (mch_key) is read from --key-file PATH, else from the {KEY_ENV} "
    "environment variable. --key KEY still works, but other users of the machine can read a "
    "command line. Output never shows the key."
)

MAX_PROCESSES = 64  # `ingress --processes`: more than this on one port is a typo


def processes_count(text: str) -> int:
    """`--processes`: an integer from 1 to MAX_PROCESSES, else a clear argparse error."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
    if not 1 <= value <= MAX_PROCESSES:
        msg = f"must be between 1 and {MAX_PROCESSES}, got {value}"
        raise argparse.ArgumentTypeError(msg)
    return value


def add_process_options(parser: argparse.ArgumentParser) -> None:
    """`--processes N` (ingress.processes), and the two options the parent gives its children."""
    parser.add_argument(
        "--processes",
        type=processes_count,
        default=1,
        metavar="N",
        help="serve the port from N processes (SO_REUSEPORT, one producer each; default 1); "
        "with --admin-port A, process i serves its operations paths on A + i",
    )
    parser.add_argument("--child", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--parent-pid", type=int, help=argparse.SUPPRESS)


# subcommand -> "module:function"; the function takes the parsed arguments and returns an exit code.
_HANDLERS = {
    "stack": "devtools.stack.commands:main",
    "sign": "shared.protocol.commands:sign_main",
    "verify": "shared.protocol.commands:verify_main",
    "sandbox": "devtools.sandbox.server:main",
    "ingress": "ingress.__main__:main",
    "worker": "workers.__main__:main",
    "sweeper": "workers.sweeper_main:main",
    "topics": "shared.adapters.topic_admin:main",
    "status": "shared.ops.status:main",
    "dlq": "shared.ops.dlq:main",
    "replay": "shared.ops.replay:main",
    "requery": "shared.ops.requery:main",
}


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="paynotify", description="Merchant-side pipeline for payment notifications."
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    stack = sub.add_parser("stack", help="run the local Kafka and Redis as plain processes")
    stack.add_argument("action", choices=("up", "down", "status"))
    stack.add_argument(
        "--state-dir",
        help="where data, logs and pid files live "
        "(default: $PAYNOTIFY_CACHE_DIR/stack, else ~/.cache/paynotify/stack)",
    )
    stack.add_argument(
        "--kafka-port",
        type=int,
        default=9092,
        help="Kafka's (node 1's) port (default: %(default)s)",
    )
    stack.add_argument("--redis-port", type=int, default=6379, help="default: %(default)s")
    stack.add_argument(
        "--brokers",
        type=int,
        choices=(1, 3),
        help="Kafka nodes: 1 (default), or 3 for a KRaft cluster with replication 3 and "
        "min.insync.replicas 2 (down/status: as `up` made it)",
    )
    stack.add_argument(
        "--redis-cluster",
        type=int,
        metavar="N",
        help="run Redis as a local Redis Cluster of N primaries (e.g. 3) instead of one server; "
        "REDIS_URL is then redis+cluster://... (down/status: as `up` made it)",
    )

    for name, text in (
        ("sign", "print a form's signature"),
        ("verify", "check a form's signature"),
    ):
        cmd = sub.add_parser(name, help=text, description=f"{text.capitalize()}. {_KEY_SOURCES}")
        source = cmd.add_mutually_exclusive_group()
        source.add_argument(
            "--key-file",
            metavar="PATH",
            help="read the merchant key (mch_key) from PATH; one trailing newline is stripped",
        )
        source.add_argument(
            "--key",
            metavar="KEY",
            help="the merchant key itself; discouraged: other users can read a command line "
            "(ps, /proc), and on a terminal a warning says so",
        )
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
    ingress.add_argument(
        "--admin-port",
        type=int,
        help="serve /healthz, /readyz and /metrics on this port instead of --port",
    )
    add_process_options(ingress)

    for name, text in (
        ("worker", "consume notifications, reconcile, publish events"),
        ("sweeper", "query pending orders whose notifications never came"),
    ):
        cmd = sub.add_parser(
            name,
            help=text,
            description=f"{text.capitalize()}.",
            epilog=environment_help(*TRACING_ENVIRONMENT),
        )
        cmd.add_argument(
            "--metrics-port",
            type=int,
            metavar="PORT",
            help="serve /healthz, /readyz and /metrics on PORT "
            "(default: PAYNOTIFY_METRICS_PORT; 0 or unset: no listener)",
        )
        cmd.add_argument(
            "--metrics-host",
            metavar="HOST",
            help="address of that listener (default: PAYNOTIFY_METRICS_HOST, else 127.0.0.1)",
        )

    topics = sub.add_parser("topics", help="manage the project's Kafka topics")
    topics.add_argument("action", choices=("ensure",))
    topics.add_argument(
        "--fix",
        action="store_true",
        help="raise the partitions of a topic that has fewer than configured (never lowers)",
    )
    _repair_tools(sub)
    return parser


def _repair_options(cmd: argparse.ArgumentParser, *, read_only: bool = False) -> None:
    """What every repair tool takes (docs/operations.md, "Repair tools")."""
    also = " (this tool only reads anyway)" if read_only else ""
    cmd.add_argument(
        "--dry-run", action="store_true", help=f"change nothing{also}; say what would be done"
    )
    cmd.add_argument(
        "--timeout",
        type=float,
        default=15.0,
        metavar="SECONDS",
        help="deadline of each network step, Kafka, Redis or the platform (default 15)",
    )


def _selection(cmd: argparse.ArgumentParser, *, events: bool = False) -> None:
    """Filters of dlq list/redrive and replay; each may be given several times (any of them
    matches), different filters must all hold."""
    if not events:
        cmd.add_argument("--reason", action="append", help="a dead letter's reason")
    cmd.add_argument("--merchant", action="append", metavar="MCH_ID", help="a merchant id")
    cmd.add_argument("--order", action="append", metavar="MCH_ID:MCH_ORDER", help="an order")
    if events:
        cmd.add_argument(
            "--type", action="append", help="an event type (paynotify.payment.succeeded, ...)"
        )
    when = "decided" if events else "dead-lettered"
    for name, side in (("--since", "at or after"), ("--until", "before")):
        cmd.add_argument(
            name,
            metavar="TIME",
            help=f"{when} {side} TIME: RFC 3339 (2026-05-01T10:00:00Z), a date, Unix "
            "seconds, or an age (30m, 2h, 7d)",
        )


def _repair_tools(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    status = sub.add_parser(
        "status",
        help="topics, lag, dead letters, pending orders, retries, the sweeper's lease",
    )
    status.add_argument("--json", action="store_true", help="one JSON document, for scripts")
    _repair_options(status, read_only=True)

    dlq = sub.add_parser("dlq", help="list dead letters, or redrive them to their source topic")
    dlq.add_argument("action", choices=("list", "redrive"))
    _selection(dlq)
    dlq.add_argument("--json", action="store_true", help="list: one JSON object a line")
    dlq.add_argument("--limit", type=int, metavar="N", help="list: show at most N")
    dlq.add_argument("--all", action="store_true", help="redrive: every dead letter, unfiltered")
    _repair_options(dlq)

    replay = sub.add_parser(
        "replay", help="publish recorded outcome events again, with their ids, byte for byte"
    )
    _selection(replay, events=True)
    replay.add_argument("--all", action="store_true", help="every event, unfiltered")
    replay.add_argument(
        "--to", metavar="TOPIC", help="an existing topic to publish to (default: the events topic)"
    )
    _repair_options(replay)

    requery = sub.add_parser(
        "requery",
        help="query the platform for one order now and settle it through the workers (补单)",
    )
    requery.add_argument("mch_id", metavar="MCH_ID")
    requery.add_argument("mch_order", metavar="MCH_ORDER")
    _repair_options(requery)


# The package of development tooling (the local stack, the sandbox, the demo): in a checkout, not
# in the production image. Production code reaches it only by name, here.
DEVTOOLS = "devtools"


def devtools_missing(command: str) -> str | None:
    """Why `command` cannot run here (it needs the development tooling, which this installation
    lacks), or None."""
    if not _HANDLERS[command].startswith(DEVTOOLS + ".") or importlib.util.find_spec(DEVTOOLS):
        return None
    return (
        f"`paynotify {command}` is development tooling (the {DEVTOOLS} package), which this "
        "installation does not include (the production image leaves it out): run it from a "
        "checkout of the repository after `make install`"
    )


def _resolve(target: str) -> Callable[[argparse.Namespace], int]:
    module_name, _, function = target.partition(":")
    handler: Callable[[argparse.Namespace], int] = getattr(
        importlib.import_module(module_name), function
    )
    return handler


class KeySourceError(ValueError):
    """No usable merchant key for sign/verify. The message names the source, never the key."""


def _key_from_file(path: str) -> str:
    try:
        with Path(path).open("rb") as file:
            data = file.read(MAX_KEY_FILE_BYTES + 1)
    except OSError as exc:
        raise KeySourceError(
            f"cannot read the key file {path!r}: {exc.strerror or type(exc).__name__}"
        ) from None
    if len(data) > MAX_KEY_FILE_BYTES:
        raise KeySourceError(f"the key file {path!r} is over {MAX_KEY_FILE_BYTES} bytes")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise KeySourceError(f"the key file {path!r} is not UTF-8 text") from None
    # An editor's final newline is not part of the key; anything more is refused below.
    return text.removesuffix("\n").removesuffix("\r")


def merchant_key(args: argparse.Namespace, environ: Mapping[str, str]) -> str:
    """The key for sign/verify: --key-file, --key, else PAYNOTIFY_KEY. Raises KeySourceError."""
    if args.key_file is not None:
        key, source = _key_from_file(args.key_file), f"the key file {args.key_file!r}"
    elif args.key is not None:
        key, source = args.key, "--key"
    elif KEY_ENV in environ:
        key, source = environ[KEY_ENV], KEY_ENV
    else:
        raise KeySourceError(f"no merchant key: give --key-file PATH or set {KEY_ENV}")
    if not key.strip():
        raise KeySourceError(f"the key from {source} is empty or only whitespace")
    if not key.isprintable():
        raise KeySourceError(
            f"the key from {source} holds a line break or another unprintable character"
        )
    return key


def _warn_key_in_argv() -> None:
    # Only on a terminal: people are warned, while scripts keep verify's one-line stderr (the
    # reason of a mismatch), which they may parse; --help says the same to both.
    if sys.stderr.isatty():
        sys.stderr.write(
            "warning: --key puts the key in the command line, which other users can read "
            f"(ps, /proc); use --key-file PATH or {KEY_ENV} instead\n"
        )


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.command in {"sign", "verify"}:
        if args.key is not None:
            _warn_key_in_argv()
        try:
            args.key = merchant_key(args, os.environ)
        except KeySourceError as exc:
            sys.stderr.write(f"error: {exc}\n")
            return EXIT_USAGE
    missing = devtools_missing(args.command)
    if missing is not None:
        sys.stderr.write(f"error: {missing}\n")
        return EXIT_USAGE
    return _resolve(_HANDLERS[args.command])(args)


if __name__ == "__main__":
    sys.exit(main())
