"""When the sweeper queries a pending order, and what it does with the answer. Pure: plain values
in, plain values out; the clock's reading is an argument.

The platform notifies at 0/5/10/15/30/180/... second gaps (NOTES.md). A paid order whose
notifications all went missing is found by querying it: first shortly after the platform's fifth
try would have arrived, then with gaps that double up to a cap, until the order's expiry, where one
last query decides between "paid after all" and `paynotify.order.expired`. Every delay is scaled
by `PAYNOTIFY_TIME_SCALE`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

from shared.domain.decision import PLATFORM_RETRY_DELAYS, decide_expiry

if TYPE_CHECKING:
    from shared.domain.decision import QueryAnswer
    from shared.domain.events import OrderExpired
    from shared.domain.orders import OrderRecord
    from shared.protocol.payment import PaymentReport

# The first query waits for the platform's first five tries (60 s after creation) plus a margin
# for their delivery, so an order whose notifications work is settled before it is ever queried.
FIRST_TRIES = 5
FIRST_CHECK_MARGIN = 30.0
FIRST_CHECK = sum(PLATFORM_RETRY_DELAYS[:FIRST_TRIES]) + FIRST_CHECK_MARGIN  # 90 s
GROWTH = 2.0
# An abandoned order (most unpaid ones) costs at most one query an hour until it expires.
MAX_GAP = 3600.0
# After a paid answer was forwarded to the workers: time for them to settle it before the
# sweeper looks again (and forwards again, should the message have been lost).
SETTLE_GAP = 300.0
# After a failed query (timeout, 113, a bad signature...): the first retry, doubling to MAX_GAP.
RETRY_GAP = 30.0


@dataclass(frozen=True, slots=True)
class SweepSchedule:
    """The sweeper's timing, in (already scaled) seconds."""

    expiry: float  # after creation; an order unpaid then is expired
    first_check: float = FIRST_CHECK
    growth: float = GROWTH
    max_gap: float = MAX_GAP
    settle_gap: float = SETTLE_GAP
    retry_gap: float = RETRY_GAP

    def __post_init__(self) -> None:
        for name in ("expiry", "first_check", "max_gap", "settle_gap", "retry_gap"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value > 0):
                raise ValueError(f"{name} must be a positive finite number of seconds")
        if not (math.isfinite(self.growth) and self.growth >= 1):
            raise ValueError("growth must be a finite number of at least 1")

    @classmethod
    def scaled(cls, *, time_scale: float, order_expiry: float) -> SweepSchedule:
        """The default schedule under `PAYNOTIFY_TIME_SCALE`; `order_expiry` is unscaled."""
        if not (math.isfinite(time_scale) and time_scale > 0):
            raise ValueError("time_scale must be a positive finite number")
        return cls(
            expiry=order_expiry * time_scale,
            first_check=FIRST_CHECK * time_scale,
            max_gap=MAX_GAP * time_scale,
            settle_gap=SETTLE_GAP * time_scale,
            retry_gap=RETRY_GAP * time_scale,
        )

    def offsets(self) -> tuple[float, ...]:
        """Every query's time after creation, strictly increasing; the last one is the expiry."""
        found: list[float] = []
        offset, gap = self.first_check, self.first_check
        while offset < self.expiry:
            found.append(offset)
            gap = min(gap * self.growth, self.max_gap)
            offset += gap
        found.append(self.expiry)
        return tuple(found)

    def first_due(self, created_at: float) -> float:
        return created_at + self.offsets()[0]

    def expires_at(self, created_at: float) -> float:
        return created_at + self.expiry

    def next_due(self, created_at: float, now: float) -> float | None:
        """The first scheduled query strictly after `now`; None once the expiry has passed.

        Counting from creation rather than from the last query means a sweeper that was down
        for a while resumes the schedule instead of replaying every missed query."""
        for offset in self.offsets():
            if created_at + offset > now:
                return created_at + offset
        return None


@dataclass(frozen=True, slots=True)
class CheckAgain:
    """Nothing to do yet: query the order again at `due` (Unix seconds)."""

    due: float


@dataclass(frozen=True, slots=True)
class ForwardPaid:
    """The platform says paid: hand `report` to the workers as a query-sourced message; the order
    stays pending until they settle it, and is looked at again at `due` in case the message is
    lost."""

    report: PaymentReport
    due: float


@dataclass(frozen=True, slots=True)
class ExpireOrder:
    """Unpaid at expiry: publish `event` (once) and mark the order expired."""

    event: OrderExpired


SweepDecision = CheckAgain | ForwardPaid | ExpireOrder


def after_answer(
    record: OrderRecord, answer: QueryAnswer, *, now: float, schedule: SweepSchedule
) -> SweepDecision:
    """What a verified query answer (or 103, `answer.report is None`) means for a pending order."""
    found = answer.report
    # A repeat payment is reported under the upstream order number, naming ours as its origin.
    if found is not None and (
        found.mch_id != record.mch_id
        or record.mch_order not in {found.mch_order, found.origin_order}
    ):
        raise ValueError("the answer is about another order than the record")
    due = schedule.next_due(record.created_at, now)
    if found is not None and found.paid:
        if due is None:  # paid, found at or after expiry: keep forwarding at the widest gap
            return ForwardPaid(report=found, due=now + schedule.max_gap)
        return ForwardPaid(report=found, due=max(due, now + schedule.settle_gap))
    if due is not None:
        return CheckAgain(due=due)
    expired = decide_expiry(record, answer)
    if expired is None:  # pragma: no cover - decide_expiry returns None only for paid answers
        raise AssertionError("an unpaid answer did not expire the order")
    return ExpireOrder(event=expired)


def after_failure(failures: int, *, now: float, schedule: SweepSchedule) -> CheckAgain:
    """A query that gave no usable answer (the `failures`-th in a row, from 1): try again later
    with a doubling gap. An order is never expired without an answer that says unpaid."""
    if failures < 1:
        raise ValueError("failures counts this one, so it is at least 1")
    exponent = min(failures - 1, 64)  # 2**64 gaps are past any cap; keeps the float finite
    gap = min(schedule.retry_gap * schedule.growth**exponent, schedule.max_gap)
    return CheckAgain(due=now + gap)


def next_slot(previous: float | None, now: float, rate: float) -> float:
    """The earliest time a query may start when at most `rate` start per second: pacing, so a
    backlog of due orders is spread out rather than sent in a burst."""
    if not (math.isfinite(rate) and rate > 0):
        raise ValueError("rate must be a positive finite number")
    if previous is None:
        return now
    return max(now, previous + 1.0 / rate)
