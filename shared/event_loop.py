"""Every process's event loop, chosen by `PAYNOTIFY_EVENT_LOOP` (`asyncio`, the default, or
`uvloop` from the `paynotify[fast]` extra): one helper, so each entry point runs the same way.

uvloop is optional because the project's required dependencies are fixed; the pure-asyncio path
stays the default and is tested alongside it.
"""

from __future__ import annotations

import asyncio
import importlib
from typing import TYPE_CHECKING, Literal, TypeVar

if TYPE_CHECKING:
    from collections.abc import Callable, Coroutine
    from typing import Any

T = TypeVar("T")
EventLoop = Literal["asyncio", "uvloop"]


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


def run(main: Coroutine[Any, Any, T], choice: EventLoop = "asyncio") -> T:
    """`asyncio.run(main)` on the chosen loop."""
    try:
        factory = loop_factory(choice)
    except EventLoopUnavailableError:
        main.close()  # never awaited: no "coroutine was never awaited" warning
        raise
    with asyncio.Runner(loop_factory=factory) as runner:
        return runner.run(main)
