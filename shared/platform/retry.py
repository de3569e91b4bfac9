"""How long to wait before retrying a transient platform failure. Pure: randomness is passed in."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from collections.abc import Callable


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
