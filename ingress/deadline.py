"""One timer per published notification: the send and the wait for the broker's ack share it.

It does what `asyncio.timeout` around the send plus `asyncio.shield` around the delivery did,
with one timer handle and one waiter instead of a timeout context, a shield's outer future and
their callbacks. While the send runs (waiting for metadata or buffer room), expiry cancels the
task, as `asyncio.timeout` would: a cancelled send drops the message. Once the message is
queued, expiry only wakes the waiter, so the delivery future itself is never cancelled and can
still be watched for a late outcome.
"""

from __future__ import annotations

import asyncio
from typing import Any


class Deadline:
    """Use inside a task: `deadline = Deadline(seconds)`, `await` the send (an expiry cancels
    the task: `expired_send()` in an `except CancelledError` tells it from another cancel), then
    `await deadline.delivered(future)`; `close()` in a `finally`."""

    __slots__ = ("_cancelled_task", "_cancelling", "_task", "_timer", "_waiter")

    def __init__(self, seconds: float) -> None:
        task = asyncio.current_task()
        if task is None:
            raise RuntimeError("Deadline should be used inside a task")
        self._task = task
        self._cancelling = task.cancelling()
        self._waiter: asyncio.Future[None] | None = None
        self._cancelled_task = False
        self._timer = task.get_loop().call_later(seconds, self._expire)

    def _expire(self) -> None:
        waiter = self._waiter
        if waiter is None:  # still sending: stop the send, as asyncio.timeout would
            self._cancelled_task = True
            self._task.cancel()
        elif not waiter.done():
            waiter.set_result(None)

    def _wake(self, _: asyncio.Future[Any]) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def expired_send(self) -> bool:
        """For an `except CancelledError`: True when the cancellation was this deadline's own
        during the send (then it is a timeout), False when somebody else cancelled the task."""
        return self._cancelled_task and self._task.uncancel() <= self._cancelling

    async def delivered(self, delivery: asyncio.Future[Any]) -> Any:
        """The delivery's result (or its exception) once it is done; `TimeoutError` if the
        deadline passes first. `delivery` is left running either way."""
        if not delivery.done():
            waiter = self._waiter = self._task.get_loop().create_future()
            delivery.add_done_callback(self._wake)
            await waiter
            if not delivery.done():
                raise TimeoutError
        return delivery.result()

    def close(self) -> None:
        self._timer.cancel()
