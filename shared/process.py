"""Running a long-lived process (worker, sweeper): settings, logging, signals, exit codes."""

from __future__ import annotations

import asyncio
import dataclasses
import signal
import sys
from typing import TYPE_CHECKING

from shared.event_loop import EventLoopUnavailableError
from shared.event_loop import run as run_loop
from shared.logs import configure_logging
from shared.merchants import MerchantsFileError
from shared.settings import Settings, SettingsError
from shared.tracing import TracingUnavailableError

if TYPE_CHECKING:
    import argparse
    from collections.abc import Awaitable, Callable

EXIT_CONFIG = 2


def serve(
    name: str,
    run: Callable[[Settings, asyncio.Event], Awaitable[None]],
    args: argparse.Namespace | None = None,
) -> int:
    """Run `run(settings, stop)` until it returns; SIGTERM or SIGINT sets `stop`. The command
    line's `--metrics-port`/`--metrics-host`, when given, win over the environment.

    A configuration error exits 2 with one line naming what is wrong (never a key)."""
    try:
        settings = Settings.from_env()
    except SettingsError as exc:
        sys.stderr.write(f"{name}: {exc}\n")
        return EXIT_CONFIG
    port, host = getattr(args, "metrics_port", None), getattr(args, "metrics_host", None)
    if port is not None and not 0 <= port <= 65535:  # the TCP port range
        sys.stderr.write(f"{name}: --metrics-port must be 0-65535\n")
        return EXIT_CONFIG
    settings = dataclasses.replace(
        settings,
        metrics_port=settings.metrics_port if port is None else port,
        metrics_host=settings.metrics_host if host is None else host,
    )
    configure_logging(settings.log_level, settings.log_format)

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        await run(settings, stop)

    try:
        run_loop(main(), settings.event_loop)
    except (
        SettingsError,
        MerchantsFileError,
        TracingUnavailableError,
        EventLoopUnavailableError,
    ) as exc:
        sys.stderr.write(f"{name}: {exc}\n")
        return EXIT_CONFIG
    return 0
