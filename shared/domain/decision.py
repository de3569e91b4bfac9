"""The reconciliation decision: what a payment report, the platform's order-query answer and the
merchant's record of the order mean together. Plain values in, one plain value out.

The first rule that applies decides:
1. the report says unpaid (status 1): `NoOutcome`;
2. the platform's answer does not confirm the payment (unpaid, or 103): `RequeryLater` while the
   re-query schedule lasts, then `unconfirmed` (a suspected forgery, never a success);
3. the report differs from the answer in a compared field: `amount_mismatch`, `answer_differs`;
4. no merchant record: `unknown_order` if records are required, else the platform's answer alone;
5. the record's amount differs from `mch_amt`: `amount_mismatch`, `record_amount_differs`;
   the record's pay type differs from the reported one: `amount_mismatch`, `pay_type_differs`
   (the merchant's record, never the platform's report, says which amount rule applies);
6. `amt` is not what the order asked the payer for: `amount_mismatch`, `paid_amount_differs`.
   For most pay types that is `mch_amt`. A bank transfer (42/43/44) asks the payer for a
   slightly different sum on purpose: it must equal the sum the create-order answer asked for
   (`OrderRecord.transfer_amt`) or, when that is unknown, lie in
   [`mch_amt`, `mch_amt` + `PAYNOTIFY_TRANSFER_TOLERANCE_LI`]: an underpaid transfer never
   succeeds;
7. otherwise `repeated` for a repeat payment (`origin_order` set), else `succeeded`.

`is_stale` is the replay guard the worker applies before any of this: a notification paid
longer ago than the replay window, for a payment nothing is recorded about, is refused.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal, NamedTuple

from shared.domain.events import (
    SOURCE_NOTIFICATION,
    AnswerStatus,
    EventType,
    OrderExpired,
    PaymentReconciled,
    Reason,
    Source,
    Value,
    source_of,
)
from shared.domain.orders import OrderState
from shared.protocol.catalog import DOCUMENTED_PAY_TYPES

if TYPE_CHECKING:
    from collections.abc import Container, Sequence

    from shared.domain.orders import OrderRecord
    from shared.protocol.payment import PaymentReport

RecordsPolicy = Literal["required", "optional"]  # PAYNOTIFY_ORDER_RECORDS

# The platform's gaps between notification tries (NOTES.md), about 49 minutes in all.
PLATFORM_RETRY_DELAYS: tuple[int, ...] = (0, 5, 10, 15, 30, 180, 300, 600, 1800)
TRANSFER_PAY_TYPES = frozenset(p.code for p in DOCUMENTED_PAY_TYPES if p.transfer)
# How far above `mch_amt` a transfer whose asked sum is unknown may be (li): the platform adds
# a few fen so it can match the transfer (PAYNOTIFY_TRANSFER_TOLERANCE_LI).
DEFAULT_TRANSFER_TOLERANCE_LI = 100
# A notification paid longer ago than this, with nothing recorded for it, is a replay: the
# platform stops notifying ~49 minutes after a payment (PAYNOTIFY_REPLAY_WINDOW_S).
DEFAULT_REPLAY_WINDOW_S = 86_400
# Report fields that must equal the platform's answer, by the name the event data uses.
COMPARED_FIELDS: tuple[tuple[str, str], ...] = (
    ("mch_id", "mch_id"),
    ("mch_order", "mch_order"),
    ("origin_order", "origin_order"),
    ("pay_type", "pay_type"),
    ("amt", "amt"),
    ("mch_amt", "mch_amt"),
    ("amt_type", "amt_type"),
)


@dataclass(frozen=True, slots=True)
class Notice:
    """A payment report as it reached the worker: from the platform's notification, or from the
    sweeper's query; `delivery_ids` and `key_id` are carried into the event as its basis."""

    report: PaymentReport
    source: Source = SOURCE_NOTIFICATION
    delivery_ids: tuple[str, ...] = ()
    key_id: str | None = None  # the merchant key that verified the report

    def __post_init__(self) -> None:
        source_of(self.source)  # ValueError for anything else


@dataclass(frozen=True, slots=True)
class QueryAnswer:
    """The platform's verified order-query answer, taken at `queried_at` (Unix seconds)."""

    report: PaymentReport | None  # None: the platform answered 103, order not found
    queried_at: int

    @property
    def status(self) -> AnswerStatus:
        if self.report is None:
            return AnswerStatus.NOT_FOUND
        return AnswerStatus.PAID if self.report.paid else AnswerStatus.UNPAID


@dataclass(frozen=True, slots=True)
class NoOutcome:
    """The report says unpaid: nothing to settle; acknowledge it."""


@dataclass(frozen=True, slots=True)
class RequeryLater:
    """The platform does not confirm yet: query again after `delay` seconds, then call `decide`
    again with `requeries_done=attempt`."""

    delay: float
    attempt: int  # this re-query's number, from 1


Decision = PaymentReconciled | NoOutcome | RequeryLater


def requery_schedule(time_scale: float) -> tuple[float, ...]:
    """Delays before each re-query, each counted from the query before it: the platform's own
    retry gaps scaled by `PAYNOTIFY_TIME_SCALE`, so the last re-query comes after the platform
    would have stopped notifying."""
    if not (math.isfinite(time_scale) and time_scale > 0):
        raise ValueError("time_scale must be a positive finite number")
    return tuple(delay * time_scale for delay in PLATFORM_RETRY_DELAYS)


def record_order(report: PaymentReport) -> str:
    """The order number whose merchant record to compare: a repeat payment's origin order."""
    return report.origin_order if report.origin_order is not None else report.mch_order


def decide(
    notice: Notice,
    answer: QueryAnswer,
    record: OrderRecord | None,
    *,
    policy: RecordsPolicy,
    requeries_done: int,
    schedule: Sequence[float],
    transfer_pay_types: Container[int] = TRANSFER_PAY_TYPES,
    transfer_tolerance: int = DEFAULT_TRANSFER_TOLERANCE_LI,
) -> Decision:
    """Decide a report against the answer to `query_order(report.mch_id, report.mch_order)` and
    the record of `record_order(report)`. Raises `ValueError` only for a caller's mistake."""
    report = notice.report
    _check_arguments(report, record, policy, requeries_done)
    if not report.paid:
        return NoOutcome()
    if answer.status is not AnswerStatus.PAID and requeries_done < len(schedule):
        return RequeryLater(delay=schedule[requeries_done], attempt=requeries_done + 1)
    if transfer_tolerance < 0:
        raise ValueError("transfer_tolerance must not be negative")
    rules = _AmountRules(transfer_pay_types, transfer_tolerance)
    verdict = _verdict(report, answer.report, record, policy, rules)
    return _outcome(notice, answer, record, requeries_done, verdict)


def is_stale(report: PaymentReport, *, now: float, window: float) -> bool:
    """Whether a paid report is older than the replay window (by the platform's `success_at`).
    The caller applies it only where nothing is recorded about the payment: a replay of an old
    notification must never produce a new outcome once the old one's record is gone."""
    return report.success_at is not None and report.success_at < now - window


def decide_expiry(record: OrderRecord, answer: QueryAnswer) -> OrderExpired | None:
    """At an order's expiry, given a fresh query answer: `OrderExpired`, or None when the
    platform says paid (then the sweeper forwards that answer as a query-sourced report)."""
    found = answer.report
    if found is not None and (found.mch_id, found.mch_order) != (record.mch_id, record.mch_order):
        raise ValueError("the answer is about another order than the record")
    if answer.status is AnswerStatus.PAID:
        return None
    return OrderExpired(
        mch_id=record.mch_id,
        mch_order=record.mch_order,
        pay_type=record.pay_type,
        mch_amt=record.amt,
        created_at=record.created_at,
        queried_at=answer.queried_at,
        answer=answer.status,
    )


def _check_arguments(
    report: PaymentReport, record: OrderRecord | None, policy: str, requeries_done: int
) -> None:
    if policy not in ("required", "optional"):
        raise ValueError("policy must be 'required' or 'optional'")
    if requeries_done < 0:
        raise ValueError("requeries_done must not be negative")
    if record is not None and (record.mch_id, record.mch_order) != (
        report.mch_id,
        record_order(report),
    ):
        raise ValueError("the record is not of the order this report pays for")


class _AmountRules(NamedTuple):
    transfer_pay_types: Container[int]
    transfer_tolerance: int

    def expected_amt(self, report: PaymentReport, record: OrderRecord | None) -> int | None:
        """None when `report.amt` is what the order asked for, else the sum to report as
        expected. The record's pay type (else the report's, without a record) picks the rule."""
        pay_type = record.pay_type if record is not None else report.pay_type
        if pay_type not in self.transfer_pay_types:
            return None if report.amt == report.mch_amt else report.mch_amt
        asked = record.transfer_amt if record is not None else None
        if asked is not None:
            return None if report.amt == asked else asked
        if report.mch_amt <= report.amt <= report.mch_amt + self.transfer_tolerance:
            return None
        return report.mch_amt


class _Verdict(NamedTuple):
    type: EventType
    reason: Reason | None = None
    expected: tuple[tuple[str, Value], ...] = ()


def _verdict(  # noqa: PLR0911 - one return per rule of the module docstring
    report: PaymentReport,
    confirmed: PaymentReport | None,
    record: OrderRecord | None,
    policy: RecordsPolicy,
    rules: _AmountRules,
) -> _Verdict:
    """Rules 2 to 7 of the module docstring, once no re-query is left to wait for."""
    if confirmed is None or not confirmed.paid:
        reason = Reason.PLATFORM_ORDER_NOT_FOUND if confirmed is None else Reason.PLATFORM_UNPAID
        return _Verdict(EventType.PAYMENT_UNCONFIRMED, reason)
    if differing := _differences(report, confirmed):
        return _Verdict(EventType.PAYMENT_AMOUNT_MISMATCHED, Reason.ANSWER_DIFFERS, differing)
    if record is None:
        if policy == "required":
            return _Verdict(EventType.PAYMENT_FOR_UNKNOWN_ORDER, Reason.NO_ORDER_RECORD)
    elif record.amt != report.mch_amt:
        return _Verdict(
            EventType.PAYMENT_AMOUNT_MISMATCHED,
            Reason.RECORD_AMOUNT_DIFFERS,
            (("mch_amt", record.amt),),
        )
    elif record.pay_type != report.pay_type:
        return _Verdict(
            EventType.PAYMENT_AMOUNT_MISMATCHED,
            Reason.PAY_TYPE_DIFFERS,
            (("pay_type", record.pay_type),),
        )
    if (expected := rules.expected_amt(report, record)) is not None:
        return _Verdict(
            EventType.PAYMENT_AMOUNT_MISMATCHED, Reason.PAID_AMOUNT_DIFFERS, (("amt", expected),)
        )
    return _Verdict(EventType.PAYMENT_REPEATED if report.repeat else EventType.PAYMENT_SUCCEEDED)


def _differences(report: PaymentReport, confirmed: PaymentReport) -> tuple[tuple[str, Value], ...]:
    """Each compared field where the report differs, with the platform's value."""
    return tuple(
        (name, getattr(confirmed, attribute))
        for attribute, name in COMPARED_FIELDS
        if getattr(report, attribute) != getattr(confirmed, attribute)
    )


def _outcome(
    notice: Notice,
    answer: QueryAnswer,
    record: OrderRecord | None,
    requeries_done: int,
    verdict: _Verdict,
) -> PaymentReconciled:
    report = notice.report
    confirmed = answer.report if answer.report is not None and answer.report.paid else None
    # A confirmed payment's time is the platform's answer; otherwise only the report's claim.
    paid_at = report.success_at
    if confirmed is not None and confirmed.success_at is not None:
        paid_at = confirmed.success_at
    return PaymentReconciled(
        type=verdict.type,
        mch_id=report.mch_id,
        mch_order=report.mch_order,
        origin_order=report.origin_order,
        pay_type=report.pay_type,
        amt=report.amt,
        mch_amt=report.mch_amt,
        amt_type=report.amt_type,
        paid_at=paid_at,
        source=notice.source,
        delivery_ids=notice.delivery_ids,
        key_id=notice.key_id,
        queried_at=answer.queried_at,
        answer=answer.status,
        requeries=requeries_done,
        late=record is not None and record.state is OrderState.EXPIRED,
        reason=verdict.reason,
        expected=verdict.expected,
    )
