"""Reloading the merchants file while a process runs, so a key rotation never needs a restart.

The file is read again on SIGHUP and, every `PAYNOTIFY_MERCHANTS_RELOAD_S` seconds, whenever
its content changed (a Kubernetes Secret mounted as a volume is replaced in place; nobody sends
a signal for that). A file that does not load is said (`merchants_reload_failed`, with the
reason, never a key) and ignored: the merchants stay as they were. docs/operations.md shows a
rotation step by step.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
from typing import TYPE_CHECKING

from shared.clock import sleep_unless
from shared.logs import get_logger
from shared.merchants import LiveMerchants, MerchantsFileError

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

    from shared.clock import Clock

_STOP_BOUND = 5.0  # seconds the watcher gets to stop (it only ever waits or reads a small file)


@contextlib.asynccontextmanager
async def watching(
    live: LiveMerchants, *, every: float, clock: Clock, signals: bool = True
) -> AsyncIterator[None]:
    """Watch `live` while the block runs; `signals`: reload on SIGHUP too (one watcher per
    process may take the signal)."""
    stop = asyncio.Event()
    task = asyncio.create_task(
        watch_merchants(live, stop, every=every, clock=clock, signals=signals),
        name="merchants-watch",
    )
    try:
        yield
    finally:
        stop.set()
        done, _ = await asyncio.wait({task}, timeout=_STOP_BOUND)
        if not done:
            task.cancel()
            await asyncio.wait({task}, timeout=_STOP_BOUND)


async def watch_merchants(
    live: LiveMerchants, stop: asyncio.Event, *, every: float, clock: Clock, signals: bool = True
) -> None:
    """Until `stop`: reload on SIGHUP (with `signals`) and every `every` seconds (0: on the
    signal only)."""
    hup = asyncio.Event()
    loop = asyncio.get_running_loop()
    if signals:
        loop.add_signal_handler(signal.SIGHUP, hup.set)
    try:
        while not stop.is_set():
            await sleep_unless(clock, every if every > 0 else None, stop, hup)
            if stop.is_set():
                return
            asked = hup.is_set()
            hup.clear()
            reload(live, asked=asked)
    finally:
        if signals:
            loop.remove_signal_handler(signal.SIGHUP)


def reload(live: LiveMerchants, *, asked: bool) -> bool:
    """One reload, said in the log: True when new merchants serve from now on."""
    log = get_logger("merchants")
    try:
        changed = live.reload()
    except MerchantsFileError as exc:
        live.reload_failures += 1
        log.error("merchants_reload_failed", error=str(exc), signal=asked)  # noqa: TRY400 - the reason says all
        return False
    if changed:
        live.reloads += 1
        log.info("merchants_reloaded", merchants=len(live), keys=live.keys_count, signal=asked)
    elif asked:
        log.info("merchants_unchanged", merchants=len(live), keys=live.keys_count)
    return changed
