"""Running a long-lived process (worker, sweeper): settings, logging, signals, exit codes."""

from __future__ import annotations

import asyncio
import signal
import sys
from typing import TYPE_CHECKING

from shared.logs import configure_logging
from shared.merchants import MerchantsFileError
from shared.settings import Settings, SettingsError

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

EXIT_CONFIG = 2


def serve(name: str, run: Callable[[Settings, asyncio.Event], Awaitable[None]]) -> int:
    """Run `run(settings, stop)` until it returns; SIGTERM or SIGINT sets `stop`.

    A configuration error exits 2 with one line naming what is wrong (never a key)."""
    try:
        settings = Settings.from_env()
    except SettingsError as exc:
        sys.stderr.write(f"{name}: {exc}\n")
        return EXIT_CONFIG
    configure_logging(settings.log_level, settings.log_format)

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        await run(settings, stop)

    try:
        asyncio.run(main())
    except (SettingsError, MerchantsFileError) as exc:
        sys.stderr.write(f"{name}: {exc}\n")
        return EXIT_CONFIG
    return 0
