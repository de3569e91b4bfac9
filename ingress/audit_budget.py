"""How many audit records one sender may cause: a token bucket per source. Pure: time passed in.

Every refusal is audited on `paynotify.rejected`, so without a bound one client could flood the
topic (and the brokers' disks) at the speed of its requests. Each source (the TCP peer) earns
`rate` records a second up to `burst`; a refusal past that is still answered and counted, but its
record is left out, and the next record written for that source says how many were (`suppressed`).
The table of sources is bounded too: the least recently seen source is forgotten first, and what
it had suppressed is counted in `forgotten`, so no count is lost without trace.
"""

from __future__ import annotations

from dataclasses import dataclass

MAX_SOURCES = 10_000


@dataclass(slots=True)
class _Bucket:
    tokens: float
    at: float  # monotonic seconds when `tokens` was last brought up to date
    suppressed: int = 0  # records left out since the last one written


class AuditBudget:
    __slots__ = ("_buckets", "_burst", "_max_sources", "_rate", "forgotten")

    def __init__(self, rate: float, burst: int, max_sources: int = MAX_SOURCES) -> None:
        if rate <= 0 or burst < 1 or max_sources < 1:
            raise ValueError("rate must be positive, burst and max_sources at least 1")
        self._rate = rate
        self._burst = float(burst)
        self._max_sources = max_sources
        self._buckets: dict[str | None, _Bucket] = {}
        self.forgotten = 0  # suppressed counts of sources dropped from the table, never reported

    def take(self, source: str | None, now: float) -> int | None:
        """None when `source` is over its budget (count the record as left out); otherwise how
        many of its records were left out since its last one, to write with this record."""
        bucket = self._buckets.pop(source, None)  # re-inserted last: the table stays in LRU order
        if bucket is None:
            bucket = _Bucket(tokens=self._burst, at=now)
            while len(self._buckets) >= self._max_sources:
                oldest = next(iter(self._buckets))
                self.forgotten += self._buckets.pop(oldest).suppressed
        else:
            elapsed = max(0.0, now - bucket.at)
            bucket.tokens = min(self._burst, bucket.tokens + elapsed * self._rate)
            bucket.at = now
        self._buckets[source] = bucket
        if bucket.tokens < 1.0:
            bucket.suppressed += 1
            return None
        bucket.tokens -= 1.0
        suppressed, bucket.suppressed = bucket.suppressed, 0
        return suppressed
