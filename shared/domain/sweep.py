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
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import orjson

from shared.domain.decision import PLATFORM_RETRY_DELAYS, decide_expiry
from shared.domain.orders import CorruptRecordError
from shared.protocol.errors import OrderNotFound, PlatformError, UnknownMerchant

if TYPE_CHECKING:
    from shared.domain.decision import QueryAnswer
    from shared.domain.events import OrderExpired
    from shared.domain.orders import OrderRecord

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
# After a failure that retrying cannot fix (a merchant without a key, answer codes such as 101 or
# 102, an unexpected error): a long first wait, doubling; the HOPELESS_TRIES-th such failure in a
# row makes the sweeper stop polling the order (dead-lettered, and marked on its record), so a
# mistake fixed within about 45 minutes costs nothing and one never fixed costs three tries.
HOPELESS_GAP = 900.0
HOPELESS_TRIES = 3
# A merchant whose queries failed this many times in a row is rested (MerchantRest).
MERCHANT_TRIP = 3


@dataclass(frozen=True, slots=True)
class SweepSchedule:
    """The sweeper's timing, in (already scaled) seconds."""

    expiry: float  # after creation; an order unpaid then is expired
    first_check: float = FIRST_CHECK
    growth: float = GROWTH
    max_gap: float = MAX_GAP
    settle_gap: float = SETTLE_GAP
    retry_gap: float = RETRY_GAP
    hopeless_gap: float = HOPELESS_GAP
    hopeless_tries: int = HOPELESS_TRIES

    def __post_init__(self) -> None:
        names = ("expiry", "first_check", "max_gap", "settle_gap", "retry_gap", "hopeless_gap")
        for name in names:
            value = getattr(self, name)
            if not (math.isfinite(value) and value > 0):
                raise ValueError(f"{name} must be a positive finite number of seconds")
        if not (math.isfinite(self.growth) and self.growth >= 1):
            raise ValueError("growth must be a finite number of at least 1")
        if self.hopeless_tries < 1:
            raise ValueError("hopeless_tries must be at least 1")

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
            hopeless_gap=HOPELESS_GAP * time_scale,
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
    """The platform says paid: hand its answer (every field its signature covers) to the
    workers as a query-sourced message; the order stays pending until they settle it, and is
    looked at again at `due` in case the message is lost."""

    due: float


@dataclass(frozen=True, slots=True)
class ExpireOrder:
    """Unpaid at expiry: publish `event` (once) and mark the order expired."""

    event: OrderExpired


@dataclass(frozen=True, slots=True)
class StopSweeping:
    """Retrying cannot help: stop polling the order, and say why (`reason`, as on the DLQ)."""

    reason: str


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
            return ForwardPaid(due=now + schedule.max_gap)
        return ForwardPaid(due=max(due, now + schedule.settle_gap))
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


def hopeless_reason(error: Exception) -> str | None:
    """Why a failed query cannot succeed by being asked again, or None when it may (connection
    errors, timeouts, 113/114, answers that do not verify or do not parse: these get the failure
    schedule of `after_failure`).

    Hopeless: no key for the merchant (`unknown_merchant`), and answer codes the document gives
    for a request that is wrong in itself (`platform_<code>`: 100, 101, 102, 110, 111, 112 and
    undocumented codes). 103 is not a failure: it is the answer "no such order"."""
    if isinstance(error, UnknownMerchant):
        return "unknown_merchant"
    if not isinstance(error, PlatformError) or error.transient:
        return None
    if error.code in {0, OrderNotFound.code_value}:  # 0: no answer code (bad signature, ...)
        return None
    return f"platform_{error.code}"


def after_hopeless(
    tries: int, reason: str, *, now: float, schedule: SweepSchedule
) -> CheckAgain | StopSweeping:
    """The `tries`-th failure in a row (from 1) that retrying cannot fix: look again after a long,
    doubling gap, and stop at `schedule.hopeless_tries`. Configuration can still be corrected
    meanwhile (a merchant's key added), so one failure is not the end."""
    if tries < 1:
        raise ValueError("tries counts this one, so it is at least 1")
    if tries >= schedule.hopeless_tries:
        return StopSweeping(reason)
    exponent = min(tries - 1, 64)
    gap = min(
        schedule.hopeless_gap * schedule.growth**exponent,
        max(schedule.max_gap, schedule.hopeless_gap),
    )
    return CheckAgain(due=now + gap)


@dataclass
class MerchantRest:
    """Keeps one merchant's failing queries from spending the budget the others need.

    After `trip` failed queries in a row for a merchant (any failure: a wrong key gives 101 for
    every order, a broken channel times out for every order), its orders are not queried until a
    rest has passed: the schedule's retry gap, doubling with each further failure up to its widest
    gap. Then one probe query goes out while the merchant's other orders wait; an answer ends the
    rest, a failure starts a longer one. Process-local state; time is passed in."""

    schedule: SweepSchedule
    trip: int = MERCHANT_TRIP
    _failures: dict[str, int] = field(default_factory=dict, init=False)
    _until: dict[str, float] = field(default_factory=dict, init=False)
    _probing: set[str] = field(default_factory=set, init=False)

    def __post_init__(self) -> None:
        if self.trip < 1:
            raise ValueError("trip must be at least 1")

    def admit(self, mch_id: str, now: float) -> float | None:
        """None: query this merchant's order now. Else when to look at the order again."""
        if self._failures.get(mch_id, 0) < self.trip:
            return None
        until = self._until[mch_id]
        if now < until:
            return until
        if mch_id in self._probing:  # one probe at a time; the others wait a short gap
            return now + self.schedule.retry_gap
        self._probing.add(mch_id)
        return None

    def answered(self, mch_id: str) -> None:
        self._failures.pop(mch_id, None)
        self._until.pop(mch_id, None)
        self._probing.discard(mch_id)

    def failed(self, mch_id: str, now: float) -> None:
        failures = self._failures.get(mch_id, 0) + 1
        self._failures[mch_id] = failures
        self._probing.discard(mch_id)
        if failures >= self.trip:
            exponent = min(failures - self.trip, 64)
            gap = self.schedule.retry_gap * self.schedule.growth**exponent
            self._until[mch_id] = now + min(gap, self.schedule.max_gap)

    def probing(self, mch_id: str) -> bool:
        """Whether a probe query is out for the merchant: right after `admit` said go, whether
        that query is the probe."""
        return mch_id in self._probing

    def abandoned(self, mch_id: str) -> None:
        """The probe query ended without a verdict (an unexpected error, a stop)."""
        self._probing.discard(mch_id)

    def resting(self, now: float) -> list[str]:
        """Merchants whose orders wait now (for logs and stats)."""
        return sorted(m for m, until in self._until.items() if now < until)


def next_slot(previous: float | None, now: float, rate: float) -> float:
    """The earliest time a query may start when at most `rate` start per second: pacing, so a
    backlog of due orders is spread out rather than sent in a burst."""
    if not (math.isfinite(rate) and rate > 0):
        raise ValueError("rate must be a positive finite number")
    if previous is None:
        return now
    return max(now, previous + 1.0 / rate)


@dataclass(frozen=True, slots=True)
class SweepMark:
    """The sweeper leader's last look at the pending index (`pn:sweeper:last_run`): who, when
    (Unix seconds), and how many orders it claimed then. `paynotify status` shows it."""

    instance: str
    at: float
    claimed: int

    def encode(self) -> bytes:
        return orjson.dumps({"instance": self.instance, "at": self.at, "claimed": self.claimed})

    @classmethod
    def decode(cls, raw: bytes) -> SweepMark:
        """Strictly, or `CorruptRecordError` saying what is wrong (Redis is not trusted)."""
        try:
            document = orjson.loads(raw)
        except orjson.JSONDecodeError:
            raise CorruptRecordError("sweep mark is not JSON") from None
        if not isinstance(document, dict):
            raise CorruptRecordError("sweep mark is not an object")
        instance, at, claimed = (
            document.get("instance"),
            document.get("at"),
            document.get("claimed"),
        )
        if not isinstance(instance, str) or len(instance) > _MARK_TEXT:
            raise CorruptRecordError("sweep mark instance must be a short string")
        if isinstance(at, bool) or not isinstance(at, int | float):
            raise CorruptRecordError("sweep mark at must be a number")
        if isinstance(claimed, bool) or not isinstance(claimed, int) or claimed < 0:
            raise CorruptRecordError("sweep mark claimed must be a count")
        return cls(instance, float(at), claimed)


_MARK_TEXT = 200  # characters of an instance name in a sweep mark, at most
