"""Run jobs concurrently across keys and one at a time within a key, with a bound on jobs held.

Messages for different orders must not wait for each other (a slow platform would otherwise
serialise the pipeline); messages for one order must run in arrival order. `submit` waits while
`limit` jobs are held, which is the worker's backpressure on the Kafka fetch loop.
"""

from __future__ import annotations

import asyncio
from collections import deque
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable


class KeyedRunner:
    def __init__(self, limit: int) -> None:
        if limit < 1:
            raise ValueError("limit must be at least 1")
        self._slots = asyncio.Semaphore(limit)
        self._queues: dict[str, deque[Callable[[], Awaitable[None]]]] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._idle = asyncio.Event()
        self._idle.set()
        self._started: dict[str, float] = {}  # key -> loop time its running job started
        self.failure: BaseException | None = None  # the first job that raised; the owner stops

    async def submit(self, key: str, job: Callable[[], Awaitable[None]]) -> None:
        await self._slots.acquire()
        self._idle.clear()
        queue = self._queues.get(key)
        if queue is not None:
            queue.append(job)  # the key's running chain will reach it
            return
        self._queues[key] = deque([job])
        task = asyncio.create_task(self._drain(key), name=f"key:{key}")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _drain(self, key: str) -> None:
        queue = self._queues[key]
        while queue:
            job = queue[0]
            self._started[key] = asyncio.get_running_loop().time()
            try:
                await job()
            except asyncio.CancelledError:
                raise
            except BaseException as exc:  # a job must settle its message itself; if it raised,
                # nothing after it may be committed, so record it for the owner to stop on.
                if self.failure is None:
                    self.failure = exc
            finally:
                queue.popleft()
                self._slots.release()
                self._started.pop(key, None)
        del self._queues[key]
        if not self._queues:
            self._idle.set()

    def overdue(self, bound: float) -> list[tuple[str, float]]:
        """The keys whose running job started more than `bound` seconds ago, with its age: the
        watchdog's view (every job has a deadline, so any entry here is a defect to report)."""
        now = asyncio.get_running_loop().time()
        return sorted(
            (
                (key, now - started)
                for key, started in self._started.items()
                if now - started > bound
            ),
            key=lambda item: -item[1],
        )

    @property
    def held(self) -> int:
        return sum(len(q) for q in self._queues.values())

    async def wait_idle(self) -> None:
        """Return when no job is held (callers bound the wait with `asyncio.timeout`)."""
        await self._idle.wait()

    async def cancel(self, bound: float = 10.0) -> int:
        """Cancel every job and wait for them, at most `bound` seconds: a cancel can be lost
        inside a library's call (redis-py), and shutdown must not wait for such a job. Returns
        how many were still running at the bound."""
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        if not tasks:
            return 0
        _, pending = await asyncio.wait(tasks, timeout=bound)
        return len(pending)
