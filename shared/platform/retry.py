"""How long to wait before retrying a transient failure (the platform, or Redis and Kafka being
away). Randomness and time are passed in."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, TypeVar

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

    from shared.clock import Clock

_T = TypeVar("_T")


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """Capped exponential backoff with jitter.

    `retries` is the number of extra attempts after the first; 0 suits callers that retry
    durably themselves (the workers), a few suit interactive callers.
    """

    retries: int = 3
    base_delay: float = 0.2  # seconds before the first retry, before jitter
    max_delay: float = 5.0  # cap on any single wait
    multiplier: float = 2.0

    def __post_init__(self) -> None:
        if self.retries < 0:
            raise ValueError("retries must be at least 0")
        if not 0 <= self.base_delay <= self.max_delay or self.multiplier < 1:
            raise ValueError("need 0 <= base_delay <= max_delay and multiplier >= 1")

    def backoff(self, retry: int, random: Callable[[], float]) -> float:
        """The wait before retry number `retry` (0-based): "equal jitter", so between half and
        all of the capped exponential step; never less than half, so retries stay spread out."""
        step = min(self.base_delay, self.max_delay)
        for _ in range(retry):
            if step >= self.max_delay:
                break
            step = min(self.max_delay, step * self.multiplier)
        return step / 2 + step / 2 * random()


OUTAGE_BACKOFF = RetryPolicy(retries=0, base_delay=0.1, max_delay=5.0)


async def wait_out(
    call: Callable[[], Awaitable[_T]],
    *,
    errors: tuple[type[BaseException], ...],
    clock: Clock,
    random: Callable[[], float],
    on_retry: Callable[[BaseException, float], None] | None = None,
    policy: RetryPolicy = OUTAGE_BACKOFF,
) -> _T:
    """Call until it returns, waiting out `errors` (a service being away) with capped, jittered
    backoff; anything else propagates. Callers bound each try themselves (client timeouts)."""
    retry = 0
    while True:
        try:
            return await call()
        except errors as exc:
            delay = policy.backoff(retry, random)
            if on_retry is not None:
                on_retry(exc, delay)
            await clock.sleep(delay)
            retry += 1
