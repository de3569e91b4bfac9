"""Every process's event loop, chosen by `PAYNOTIFY_EVENT_LOOP` (`asyncio`, the default, or
`uvloop` from the `paynotify[fast]` extra), and its garbage collector settled for a long-running
service: one helper, so each entry point runs the same way.

uvloop is optional because the project's required dependencies are fixed; the pure-asyncio path
stays the default and is tested alongside it.
"""

from __future__ import annotations

import asyncio
import gc
import importlib
from typing import TYPE_CHECKING, Literal, TypeVar

if TYPE_CHECKING:
    from collections.abc import Callable, Coroutine
    from typing import Any

T = TypeVar("T")
EventLoop = Literal["asyncio", "uvloop"]


# The young generation is collected after this many allocations (net of frees) instead of 700.
GEN0_THRESHOLD = 20_000


class EventLoopUnavailableError(RuntimeError):
    """PAYNOTIFY_EVENT_LOOP names a loop whose package is not installed."""


def loop_factory(choice: EventLoop) -> Callable[[], asyncio.AbstractEventLoop] | None:
    """The factory `asyncio.Runner` takes for `choice` (None: asyncio's own loop)."""
    if choice == "asyncio":
        return None
    try:
        uvloop = importlib.import_module("uvloop")
    except ImportError:
        msg = "PAYNOTIFY_EVENT_LOOP=uvloop needs uvloop: pip install 'paynotify[fast]'"
        raise EventLoopUnavailableError(msg) from None
    factory: Callable[[], asyncio.AbstractEventLoop] = uvloop.new_event_loop
    return factory


def settle_collector() -> None:
    """Set the cyclic garbage collector for a process that serves many short-lived requests.

    What is alive once the modules are imported (modules, classes, functions: most of a
    process's objects) is frozen out of every later collection, and the young generation is
    collected every `GEN0_THRESHOLD` allocations instead of 700, so that the objects of one
    notification in flight (tens of milliseconds) are freed by their reference counts before a
    collection can promote them. With Python's defaults a worker of the e2e benchmark spent
    1.4-2.0 s in the collector per run, with pauses up to 210 ms; docs/performance.md, section
    10, has the figures. Reference counting still frees everything that is not in a cycle at once;
    cyclic garbage waits for the (rarer) collections.
    """
    gc.collect()
    gc.freeze()
    _, middle, old = gc.get_threshold()
    gc.set_threshold(GEN0_THRESHOLD, middle, old)


def run(main: Coroutine[Any, Any, T], choice: EventLoop = "asyncio") -> T:
    """`asyncio.run(main)` on the chosen loop, with the collector settled first."""
    try:
        factory = loop_factory(choice)
    except EventLoopUnavailableError:
        main.close()  # never awaited: no "coroutine was never awaited" warning
        raise
    settle_collector()
    with asyncio.Runner(loop_factory=factory) as runner:
        return runner.run(main)
