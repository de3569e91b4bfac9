"""The sandbox's delivery engine (adapter): POSTs signed notifications to merchants' notify_url.

One `ClientSession` carries every delivery; a semaphore bounds how many are in flight, so
thousands of notifications go out quickly without exhausting sockets. Each notification is one
task that walks the documented schedule (0/5/10/15/30/180/300/600/1800 s between tries, times the
time scale) until the receiver answers the exact body `success`. Offsets are measured from when
the first try was due, on the injected clock.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

import aiohttp

from devtools.sandbox.model import cumulative_offsets
from shared.logs import get_logger

if TYPE_CHECKING:
    from collections.abc import Callable, Coroutine, Mapping

    from devtools.sandbox.model import DeliveryKind, Outcome, SandboxConfig
    from shared.clock import Clock

SUCCESS = b"success"
MAX_ANSWER = 1024  # a receiver's answer is read up to this many bytes
SHOWN_ANSWER = 200


@dataclass(frozen=True, slots=True)
class Notification:
    """One notification and how to deliver it."""

    id: int
    kind: DeliveryKind
    mch_id: str
    mch_order: str
    origin_order: str | None
    url: str
    form: Mapping[str, str]  # signed
    retry: bool = True  # False: one try only (a forger does not retry)
    drop_attempts: int = 0
    duplicates: int = 0
    concurrent_duplicates: int = 0


@dataclass(frozen=True, slots=True)
class TryResult:
    outcome: Outcome
    http_status: int | None
    answer: str | None
    elapsed: float
    error: str | None = None  # the exception's type when no answer came


class DeliveryLog(Protocol):
    """Where the engine reports each try and each notification's end (the sandbox's state)."""

    def record(
        self,
        notification: Notification,
        *,
        kind: DeliveryKind,
        attempt: int,
        scheduled_offset: float,
        offset: float,
        result: TryResult,
    ) -> None: ...

    def finished(self, notification: Notification, *, delivered: bool) -> None: ...


class Deliverer:
    def __init__(self, config: SandboxConfig, clock: Clock, log: DeliveryLog) -> None:
        self._session: aiohttp.ClientSession | None = None
        self._config = config
        self._clock = clock
        self._log = log
        self._offsets = cumulative_offsets(config.intervals)
        self._slots = asyncio.Semaphore(config.delivery_concurrency)
        self._tasks: set[asyncio.Task[None]] = set()
        self._timeout = aiohttp.ClientTimeout(total=config.delivery_timeout)
        self._logger = get_logger("sandbox.delivery")

    @property
    def in_flight(self) -> int:
        return len(self._tasks)

    def open(self, session: aiohttp.ClientSession) -> None:
        """Start delivering over `session` (the app's cleanup context owns and closes it)."""
        self._session = session

    def deliver(self, notification: Notification) -> None:
        if self._session is None:
            raise RuntimeError("the delivery engine is not running")
        self._spawn(self._run(notification, self._session))

    def call_later(self, seconds: float, callback: Callable[[], None]) -> None:
        """Run `callback` after `seconds` on the injected clock (payment after a delay)."""

        async def later() -> None:
            await self._clock.sleep(seconds)
            callback()

        self._spawn(later())

    async def cancel_all(self) -> None:
        """Cancel every pending delivery and timer (server shutdown, control reset)."""
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    def _spawn(self, work: Coroutine[Any, Any, None]) -> None:
        task = asyncio.create_task(work)
        self._tasks.add(task)
        task.add_done_callback(self._done)

    def _done(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            exc = task.exception()
            self._logger.error("sandbox_task_failed", exc_type=type(exc).__name__, exc=str(exc))

    async def _run(self, notification: Notification, session: aiohttp.ClientSession) -> None:
        offsets = self._offsets if notification.retry else self._offsets[:1]
        start = self._clock.monotonic()
        delivered = False
        for number, scheduled in enumerate(offsets, start=1):
            wait = start + self._config.scaled(scheduled) - self._clock.monotonic()
            if wait > 0:
                await self._clock.sleep(wait)
            offset = self._clock.monotonic() - start
            if number <= notification.drop_attempts:
                dropped = TryResult("dropped", None, None, 0.0)
                self._record(notification, notification.kind, number, scheduled, offset, dropped)
                continue
            copies = notification.concurrent_duplicates if number == 1 else 0
            results = await asyncio.gather(
                *(self._post(session, notification) for _ in range(1 + copies))
            )
            self._record(notification, notification.kind, number, scheduled, offset, results[0])
            for copy in results[1:]:
                self._record(notification, "duplicate", number, scheduled, offset, copy)
            if results[0].outcome == "success":
                delivered = True
                break
        if delivered:
            for extra in range(1, notification.duplicates + 1):
                result = await self._post(session, notification)
                offset = self._clock.monotonic() - start
                self._record(notification, "duplicate", extra, scheduled, offset, result)
        self._log.finished(notification, delivered=delivered)

    def _record(  # noqa: PLR0917 - a private relay with the log's fields in their order
        self,
        notification: Notification,
        kind: DeliveryKind,
        attempt: int,
        scheduled: float,
        offset: float,
        result: TryResult,
    ) -> None:
        self._log.record(
            notification, kind=kind, attempt=attempt, scheduled_offset=scheduled, offset=offset,
            result=result,
        )  # fmt: skip

    async def _post(self, session: aiohttp.ClientSession, notification: Notification) -> TryResult:
        async with self._slots:
            began = self._clock.monotonic()
            try:
                async with session.post(
                    notification.url, data=dict(notification.form), timeout=self._timeout
                ) as response:
                    body = await _read_bounded(response)
                    status = response.status
            except TimeoutError:
                elapsed = self._clock.monotonic() - began
                return TryResult("timeout", None, None, elapsed, "TimeoutError")
            except (aiohttp.ClientError, OSError) as exc:
                elapsed = self._clock.monotonic() - began
                return TryResult("error", None, None, elapsed, type(exc).__name__)
        elapsed = self._clock.monotonic() - began
        shown = body[:SHOWN_ANSWER].decode("utf-8", errors="replace")
        outcome: Outcome = "success" if body == SUCCESS else "fail"
        return TryResult(outcome, status, shown, elapsed)


async def _read_bounded(response: aiohttp.ClientResponse) -> bytes:
    chunks: list[bytes] = []
    size = 0
    async for chunk in response.content.iter_chunked(MAX_ANSWER):
        chunks.append(chunk)
        size += len(chunk)
        if size > MAX_ANSWER:
            break
    return b"".join(chunks)
