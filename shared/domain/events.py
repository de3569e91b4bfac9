"""Domain events: the one outcome of a payment (or an order's expiry) as CloudEvents 1.0 JSON.

An event's `id` depends only on its type, merchant and order, so a redelivery that decides the
same thing publishes the same id and consumers can drop the duplicate. `data` uses the platform's
field names, amounts are integers in li, and no key or signature ever appears in it.
"""

from __future__ import annotations

import math
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum
from typing import TYPE_CHECKING, Any, ClassVar, Final, Literal, get_args

import orjson

from shared.protocol.payment import order_key

if TYPE_CHECKING:
    from shared.trace import TraceParent

# Where a payment report came from: the platform's notification (posted to the ingress), or
# the platform's answer to the sweeper's order query. Decided here only.
Source = Literal["notification", "query"]
SOURCE_NOTIFICATION: Final = "notification"
SOURCE_QUERY: Final = "query"
SOURCES: Final = frozenset(get_args(Source))


def source_of(text: str) -> Source:
    """`text` as a Source, or ValueError (an envelope's `source` comes from Kafka: untrusted)."""
    if text == SOURCE_NOTIFICATION:
        return SOURCE_NOTIFICATION
    if text == SOURCE_QUERY:
        return SOURCE_QUERY
    raise ValueError(f"source {text[:40]!r} is not one of {sorted(SOURCES)}")


Value = int | str | None  # a platform field's value, as `expected` reports it


class EventType(StrEnum):
    PAYMENT_SUCCEEDED = "paynotify.payment.succeeded"
    PAYMENT_REPEATED = "paynotify.payment.repeated"
    PAYMENT_AMOUNT_MISMATCHED = "paynotify.payment.amount_mismatch"
    PAYMENT_UNCONFIRMED = "paynotify.payment.unconfirmed"
    PAYMENT_FOR_UNKNOWN_ORDER = "paynotify.payment.unknown_order"
    ORDER_EXPIRED = "paynotify.order.expired"


# Outcomes that refuse the payment: billing must not credit them; each carries a `reason`.
REFUSING = frozenset(
    {
        EventType.PAYMENT_AMOUNT_MISMATCHED,
        EventType.PAYMENT_UNCONFIRMED,
        EventType.PAYMENT_FOR_UNKNOWN_ORDER,
    }
)
PAYMENT_TYPES = frozenset(t for t in EventType if t is not EventType.ORDER_EXPIRED)


class Reason(StrEnum):
    ANSWER_DIFFERS = "answer_differs"  # the report's fields differ from the platform's answer
    RECORD_AMOUNT_DIFFERS = "record_amount_differs"  # mch_amt differs from the merchant's record
    PAID_AMOUNT_DIFFERS = "paid_amount_differs"  # amt is not what the order asked the payer for
    PAY_TYPE_DIFFERS = "pay_type_differs"  # the reported pay type is not the merchant's record's
    PLATFORM_UNPAID = "platform_unpaid"  # the platform's answer says unpaid
    PLATFORM_ORDER_NOT_FOUND = "platform_order_not_found"  # the platform answered 103
    NO_ORDER_RECORD = "no_order_record"  # no merchant record, and records are required


REASONS: dict[EventType, frozenset[Reason]] = {
    EventType.PAYMENT_AMOUNT_MISMATCHED: frozenset(
        {
            Reason.ANSWER_DIFFERS,
            Reason.RECORD_AMOUNT_DIFFERS,
            Reason.PAID_AMOUNT_DIFFERS,
            Reason.PAY_TYPE_DIFFERS,
        }
    ),
    EventType.PAYMENT_UNCONFIRMED: frozenset(
        {Reason.PLATFORM_UNPAID, Reason.PLATFORM_ORDER_NOT_FOUND}
    ),
    EventType.PAYMENT_FOR_UNKNOWN_ORDER: frozenset({Reason.NO_ORDER_RECORD}),
}


class AnswerStatus(StrEnum):
    """What the platform's order query said."""

    PAID = "paid"
    UNPAID = "unpaid"
    NOT_FOUND = "not_found"  # answer code 103


@dataclass(frozen=True, slots=True)
class PaymentReconciled:
    """The one outcome decided for a paid report; `type` says which.

    The payment fields are the report's (what was claimed); for `amount_mismatch`, `expected`
    names each field that disagreed and the value its source of truth (see `reason`) gave.
    """

    type: EventType
    mch_id: str
    mch_order: str  # for a repeat payment: the platform's order number for this payment
    origin_order: str | None  # for a repeat payment: the merchant's original order
    pay_type: int
    amt: int  # li paid
    mch_amt: int  # li asked for
    amt_type: str
    paid_at: int | None  # the platform's success_at, Unix seconds
    # What the decision was based on:
    source: Source
    delivery_ids: tuple[str, ...]
    key_id: str | None  # which merchant key verified the report; never the key itself
    queried_at: int  # Unix seconds of the order query the decision rests on
    answer: AnswerStatus
    requeries: int  # re-queries made after the first query
    late: bool = False  # settled after the order had expired
    reason: Reason | None = None
    expected: tuple[tuple[str, Value], ...] = ()

    def __post_init__(self) -> None:
        if self.type not in PAYMENT_TYPES:
            raise ValueError(f"{self.type} is not a payment outcome")
        allowed = REASONS.get(self.type, frozenset())
        if allowed and self.reason not in allowed:
            raise ValueError(f"{self.type} needs a reason, one of {sorted(allowed)}")
        if not allowed and self.reason is not None:
            raise ValueError(f"{self.type} takes no reason")
        if self.expected and self.type is not EventType.PAYMENT_AMOUNT_MISMATCHED:
            raise ValueError("only amount_mismatch carries expected values")


@dataclass(frozen=True, slots=True)
class OrderExpired:
    """An order the platform still called unpaid (or did not know) when it expired."""

    type: ClassVar[EventType] = EventType.ORDER_EXPIRED
    mch_id: str
    mch_order: str
    pay_type: int
    mch_amt: int  # li asked for, from the merchant's record
    created_at: int  # the order's creation, Unix seconds
    queried_at: int  # the query that found it unpaid, Unix seconds
    answer: AnswerStatus  # unpaid or not_found

    def __post_init__(self) -> None:
        if self.answer is AnswerStatus.PAID:
            raise ValueError("a paid order does not expire")


Outcome = PaymentReconciled | OrderExpired

# uuid5(NAMESPACE_URL, "urn:paynotify:events"); fixed forever, or every event id changes.
EVENT_ID_NAMESPACE = uuid.UUID("360ae05f-0d93-50d2-811b-f7512e0fb496")
SPECVERSION = "1.0"
PRODUCERS: dict[EventType, str] = {
    t: "paynotify/sweeper" if t is EventType.ORDER_EXPIRED else "paynotify/worker"
    for t in EventType
}


def event_id(event_type: EventType, mch_id: str, mch_order: str) -> str:
    """uuid5 over type, merchant and order, joined by newlines (which field rules forbid)."""
    parts = (str(event_type), mch_id, mch_order)
    if any("\n" in part for part in parts):
        raise ValueError("a newline in a merchant id or order number would make ids ambiguous")
    return str(uuid.uuid5(EVENT_ID_NAMESPACE, "\n".join(parts)))


def rfc3339(timestamp: float) -> str:
    """Unix seconds as RFC 3339 UTC with milliseconds: `2026-11-27T11:43:08.123Z`."""
    if not math.isfinite(timestamp):
        raise ValueError("an event time must be a finite number of Unix seconds")
    moment = datetime.fromtimestamp(timestamp, tz=UTC)
    return moment.isoformat(timespec="milliseconds").removesuffix("+00:00") + "Z"


def to_cloudevent(
    outcome: Outcome, *, time: float, trace: TraceParent | None = None
) -> dict[str, Any]:
    """The outcome as a CloudEvents 1.0 structured-mode object; `time` is Unix seconds; `trace`
    (the decision's span) becomes the `traceparent` extension attribute."""
    event = {
        "specversion": SPECVERSION,
        "id": event_id(outcome.type, outcome.mch_id, outcome.mch_order),
        "source": PRODUCERS[outcome.type],
        "type": str(outcome.type),
        "subject": order_key(outcome.mch_id, outcome.mch_order),
        "time": rfc3339(time),
        "datacontenttype": "application/json",
        "data": _data(outcome),
    }
    if trace is not None:
        event["traceparent"] = str(trace)
    return event


def encode(outcome: Outcome, *, time: float, trace: TraceParent | None = None) -> bytes:
    """The structured CloudEvent as JSON bytes, ready to publish and to record as the outcome."""
    return orjson.dumps(to_cloudevent(outcome, time=time, trace=trace))


def _data(outcome: Outcome) -> dict[str, Any]:
    if isinstance(outcome, OrderExpired):
        return {
            "mch_id": outcome.mch_id,
            "mch_order": outcome.mch_order,
            "pay_type": outcome.pay_type,
            "mch_amt": outcome.mch_amt,
            "created_at": outcome.created_at,
            "queried_at": outcome.queried_at,
            "answer": str(outcome.answer),
        }
    data: dict[str, Any] = {
        "mch_id": outcome.mch_id,
        "mch_order": outcome.mch_order,
        "origin_order": outcome.origin_order,
        "pay_type": outcome.pay_type,
        "amt": outcome.amt,
        "mch_amt": outcome.mch_amt,
        "amt_type": outcome.amt_type,
        "paid_at": outcome.paid_at,
        "late": outcome.late,
        "source": outcome.source,
        "delivery_ids": list(outcome.delivery_ids),
        "key_id": outcome.key_id,
        "queried_at": outcome.queried_at,
        "answer": str(outcome.answer),
        "requeries": outcome.requeries,
    }
    if outcome.reason is not None:
        data["reason"] = str(outcome.reason)
    if outcome.type is EventType.PAYMENT_AMOUNT_MISMATCHED:
        data["expected"] = dict(outcome.expected)
    return data
