"""What every repair tool shares: settings, the console it writes to, the filters an operator
gives on the command line, and one line for a failure instead of a traceback.

Exit codes: 0 done; 1 something could not be done (a service did not answer in time, a
publish failed: the summary says what was done before); 2 a usage or configuration error.
"""

from __future__ import annotations

import asyncio
import sys
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, TextIO

from aiokafka.errors import KafkaError
from redis.exceptions import RedisError

from shared.clock import Clock, SystemClock
from shared.merchants import MerchantsFileError
from shared.ops.records import EventFilter, LetterFilter, Window, parse_when
from shared.ops.render import Progress, safe
from shared.settings import Settings, SettingsError

if TYPE_CHECKING:
    import argparse
    from collections.abc import Callable, Coroutine, Iterable
    from typing import Any

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
DEFAULT_TIMEOUT = 15.0  # seconds for any one network step


class UsageError(ValueError):
    """A command line the tool cannot act on; the message says why."""


@dataclass
class Console:
    """Where a tool writes: results to `out`, notes (skipped records, progress) to `err`."""

    out: TextIO = field(default_factory=lambda: sys.stdout)
    err: TextIO = field(default_factory=lambda: sys.stderr)
    clock: Clock = field(default_factory=SystemClock)

    def say(self, line: str) -> None:
        self.out.write(line + "\n")

    def note(self, line: str) -> None:
        self.err.write(line + "\n")

    def progress(self, label: str, total: int | None = None) -> Progress:
        # On the terminal that shows the results; a bar in a pipe would be noise in the data.
        return Progress(self.out, label, total, clock=self.clock.monotonic)


def run_tool(
    name: str,
    body: Callable[[Settings, Console], Coroutine[Any, Any, int]],
    console: Console | None = None,
) -> int:
    """Run a tool's coroutine with the environment's settings; failures end in one line."""
    console = console or Console()
    try:
        settings = Settings.from_env()
    except SettingsError as exc:
        console.note(f"{name}: {safe(exc, 300)}")
        return EXIT_USAGE
    return asyncio.run(guarded(name, body(settings, console), console))


async def guarded(name: str, work: Coroutine[Any, Any, int], console: Console) -> int:
    """The tool's exit code; a usage error or a service failing ends in one line on stderr
    (what was done before it was said as it was done)."""
    try:
        return await work
    except (SettingsError, MerchantsFileError, UsageError) as exc:
        console.note(f"{name}: {safe(exc, 300)}")
        return EXIT_USAGE
    except TimeoutError as exc:
        console.note(f"{name}: no answer in time ({safe(exc, 200) or 'deadline passed'})")
        return EXIT_FAILED
    except (KafkaError, RedisError, OSError) as exc:
        console.note(f"{name}: {type(exc).__name__}: {safe(exc, 200)}")
        return EXIT_FAILED


def window(args: argparse.Namespace, now: float) -> Window:
    try:
        since = None if args.since is None else parse_when(args.since, now=now)
        until = None if args.until is None else parse_when(args.until, now=now)
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    if since is not None and until is not None and until <= since:
        raise UsageError("--until must be later than --since")
    return Window(since, until)


def orders(values: Iterable[str] | None) -> frozenset[str]:
    """`--order MCH_ID:MCH_ORDER` values (the order key of docs/events.md)."""
    found = frozenset(values or ())
    for value in found:
        mch_id, sep, mch_order = value.partition(":")
        if not (sep and mch_id and mch_order):
            raise UsageError(f"--order takes MCH_ID:MCH_ORDER, not {safe(value)!r}")
    return found


def letter_filter(args: argparse.Namespace, now: float) -> LetterFilter:
    return LetterFilter(
        reasons=frozenset(args.reason or ()),
        merchants=frozenset(args.merchant or ()),
        orders=orders(args.order),
        window=window(args, now),
    )


def event_filter(args: argparse.Namespace, now: float) -> EventFilter:
    return EventFilter(
        orders=orders(args.order),
        merchants=frozenset(args.merchant or ()),
        types=frozenset(args.type or ()),
        window=window(args, now),
    )
