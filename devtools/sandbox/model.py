"""The sandbox's values: its configuration, scenarios, faults, orders and delivery records.

All frozen; the JSON shapes of the control API (docs/sandbox.md) are parsed and rendered here.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from itertools import accumulate
from typing import TYPE_CHECKING, Any, Literal

from shared.protocol.catalog import PayTypeCatalog
from shared.protocol.fields import FieldError, check_text
from shared.protocol.payment import MAX_AMOUNT_LI, PaymentReport, PaymentStatus

if TYPE_CHECKING:
    from collections.abc import Mapping

# 回调通知: "通知频率 0/5/10/15/30/180/300/600/1800 秒" - the waits before each of the nine tries.
NOTIFY_INTERVALS: tuple[float, ...] = (0, 5, 10, 15, 30, 180, 300, 600, 1800)
NEVER = math.inf  # pay_after: the order is paid only when the control API says so
ENDPOINTS = frozenset({"create", "confirm", "query"})
MAX_FAULT_BODY = 4 * 1024 * 1024  # characters of a fault's answer body (past the client's limit)

OrderKey = tuple[str, str]  # (mch_id, mch_order)
DeliveryKind = Literal["notify", "duplicate", "repeat", "forged"]
Outcome = Literal["success", "fail", "dropped", "timeout", "error"]


class ControlError(ValueError):
    """A control API request that cannot be done; answered with HTTP 400/404 and this message."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


def cumulative_offsets(intervals: tuple[float, ...]) -> tuple[float, ...]:
    """Offsets of each try from the first one: 0, 5, 15, 30, 60, 240, 540, 1140, 2940."""
    return tuple(accumulate(intervals))


# --- reading control API JSON -----------------------------------------------------------------


def _number(data: Mapping[str, Any], name: str, default: float, *, upper: float = 1e9) -> float:
    value = data.get(name, default)
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ControlError(f"{name} must be a number")
    if not 0 <= value <= upper:
        raise ControlError(f"{name} must be between 0 and {upper}")
    return float(value)


def _count(data: Mapping[str, Any], name: str, default: int = 0, *, upper: int = 1000) -> int:
    value = data.get(name, default)
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= upper:
        raise ControlError(f"{name} must be an integer between 0 and {upper}")
    return value


def _flag(data: Mapping[str, Any], name: str) -> bool:
    value = data.get(name, False)
    if not isinstance(value, bool):
        raise ControlError(f"{name} must be true or false")
    return value


def _unknown(data: Mapping[str, Any], allowed: frozenset[str]) -> None:
    extra = sorted(set(data) - allowed)
    if extra:
        raise ControlError(f"unknown fields: {', '.join(extra)}")


def text_field(data: Mapping[str, Any], name: str, max_length: int) -> str:
    value = data.get(name)
    if not isinstance(value, str):
        raise ControlError(f"{name} is required and must be a string")
    try:
        return check_text(name, value, max_length=max_length)
    except FieldError as exc:
        raise ControlError(str(exc)) from None


def order_key(data: Mapping[str, Any]) -> OrderKey:
    return text_field(data, "mch_id", 32), text_field(data, "mch_order", 50)


def amount_field(data: Mapping[str, Any], name: str) -> int | None:
    value = data.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or not 0 < value <= MAX_AMOUNT_LI:
        raise ControlError(f"{name} must be a positive integer (li)")
    return value


# --- values -------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Scenario:
    """How the sandbox treats one order (or, as defaults, every new order)."""

    pay_after: float | None = None  # seconds before scaling; None: the sandbox default; NEVER
    paid_amt: int | None = None  # what the payer pays (li); None: the amount asked
    # Transfers: the sum the create-order answer asks the payer for; None: `paid_amt` (so a payer
    # who pays less than asked is `transfer_amt` > `paid_amt`: an underpaid transfer).
    transfer_amt: int | None = None
    repeat_payments: int = 0  # extra notifications: new mch_order, origin_order = ours
    duplicates: int = 0  # extra deliveries of the notification after it was taken
    concurrent_duplicates: int = 0  # extra copies sent at the same moment as the first try
    drop_attempts: int = 0  # the first n tries are dropped (never sent); 9 drops them all
    forge_notification: bool = False  # also deliver a forged notification (wrong key, other amt)
    forge_answers: bool = False  # order query / confirm answers for it carry a wrong sign

    FIELDS = frozenset(
        {
            "pay_after", "paid_amt", "transfer_amt", "repeat_payments", "duplicates",
            "concurrent_duplicates", "drop_attempts", "forge_notification", "forge_answers",
        }
    )  # fmt: skip

    @classmethod
    def from_json(cls, data: Mapping[str, Any], *, extra: frozenset[str] = frozenset()) -> Scenario:
        _unknown(data, cls.FIELDS | extra)
        pay_after: float | None = None
        if data.get("pay_after") == "never":
            pay_after = NEVER
        elif data.get("pay_after") is not None:
            pay_after = _number(data, "pay_after", 0)
        return cls(
            pay_after=pay_after,
            paid_amt=amount_field(data, "paid_amt"),
            transfer_amt=amount_field(data, "transfer_amt"),
            repeat_payments=_count(data, "repeat_payments", upper=100),
            duplicates=_count(data, "duplicates", upper=100),
            concurrent_duplicates=_count(data, "concurrent_duplicates", upper=100),
            drop_attempts=_count(data, "drop_attempts", upper=100),
            forge_notification=_flag(data, "forge_notification"),
            forge_answers=_flag(data, "forge_answers"),
        )

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        if self.pay_after == NEVER:
            data["pay_after"] = "never"
        return data


@dataclass(frozen=True, slots=True)
class Chaos:
    """Standing disturbances of the order query, for benchmarks and chaos runs."""

    query_latency: float = 0.0  # real seconds added to every order query
    query_error_rate: float = 0.0  # share of order queries answered with query_error_code
    query_error_code: int = 113

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Chaos:
        _unknown(data, frozenset({"query_latency", "query_error_rate", "query_error_code"}))
        code = _count(data, "query_error_code", 113, upper=999)
        if code < 100:
            raise ControlError("query_error_code must be an answer code (100-999)")
        return cls(
            query_latency=_number(data, "query_latency", 0.0, upper=600),
            query_error_rate=_number(data, "query_error_rate", 0.0, upper=1),
            query_error_code=code,
        )


@dataclass(frozen=True, slots=True)
class Fault:
    """A one-shot disturbance of the next platform API call (of `endpoint`, or of any)."""

    endpoint: str | None = None  # "create", "confirm", "query"; None: whichever comes next
    code: int | None = None  # answer this code instead of doing the work
    http_status: int | None = None  # answer this HTTP status with a text body, no JSON
    forge_sign: bool = False  # do the work, but sign the answer wrongly
    delay: float = 0.0  # real seconds to wait before answering (past a client timeout, say)
    body: str | None = None  # answer HTTP 200 with this text as is: a malformed or hostile answer

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Fault:
        _unknown(
            data, frozenset({"endpoint", "code", "http_status", "forge_sign", "delay", "body"})
        )
        endpoint = data.get("endpoint")
        if endpoint is not None and endpoint not in ENDPOINTS:
            raise ControlError(f"endpoint must be one of {', '.join(sorted(ENDPOINTS))}")
        code = data.get("code")
        if code is not None and (isinstance(code, bool) or not isinstance(code, int)):
            raise ControlError("code must be an integer")
        status = data.get("http_status")
        if status is not None and (
            isinstance(status, bool) or not isinstance(status, int) or not 200 <= status <= 599
        ):
            raise ControlError("http_status must be an HTTP status")
        body = data.get("body")
        if body is not None and (not isinstance(body, str) or len(body) > MAX_FAULT_BODY):
            raise ControlError(f"body must be a string of at most {MAX_FAULT_BODY} characters")
        return cls(
            endpoint=endpoint,
            code=code,
            http_status=status,
            forge_sign=_flag(data, "forge_sign"),
            delay=_number(data, "delay", 0.0, upper=600),
            body=body,
        )


@dataclass(frozen=True, slots=True)
class SandboxConfig:
    pay_types: PayTypeCatalog = field(default_factory=PayTypeCatalog.documented)
    time_scale: float = 1.0  # multiplies pay_after and the notification schedule
    pay_after: float = NEVER  # default seconds (before scaling) until a new order pays itself
    intervals: tuple[float, ...] = NOTIFY_INTERVALS
    delivery_timeout: float = 10.0  # real seconds a receiver has to answer one try
    delivery_concurrency: int = 512  # notifications in flight at once
    answer_sign_includes_envelope: bool = False
    max_records: int = 200_000  # delivery attempts and API calls kept for the control API

    def __post_init__(self) -> None:
        if not self.time_scale > 0 or not self.delivery_timeout > 0:
            raise ValueError("time_scale and delivery_timeout must be positive")
        if self.pay_after < 0 or self.delivery_concurrency < 1 or not self.intervals:
            raise ValueError("pay_after >= 0, delivery_concurrency >= 1, intervals not empty")

    def scaled(self, seconds: float) -> float:
        return seconds * self.time_scale


@dataclass(frozen=True, slots=True)
class Order:
    """An order as the sandbox platform holds it."""

    mch_id: str
    mch_order: str
    pay_type: int
    mch_amt: int  # li asked
    notify_url: str
    call: str | None
    created_at: int
    scenario: Scenario
    status: PaymentStatus = PaymentStatus.UNPAID
    amt: int | None = None  # li paid, once paid
    success_at: int | None = None
    origin_order: str | None = None  # set on the extra order of a repeat payment

    @property
    def key(self) -> OrderKey:
        return self.mch_id, self.mch_order

    def report(self, created_at: int) -> PaymentReport:
        """The notification / query fields; `created_at` is the platform's time of saying it."""
        return PaymentReport(
            mch_id=self.mch_id,
            pay_type=self.pay_type,
            mch_order=self.mch_order,
            amt=self.mch_amt if self.amt is None else self.amt,
            mch_amt=self.mch_amt,
            amt_type="cny",
            status=self.status,
            created_at=created_at,
            success_at=self.success_at,
            origin_order=self.origin_order,
            call=self.call,
            sign_type="md5",
        )

    def to_json(self) -> dict[str, Any]:
        return {
            "mch_id": self.mch_id,
            "mch_order": self.mch_order,
            "pay_type": self.pay_type,
            "mch_amt": self.mch_amt,
            "amt": self.amt,
            "status": "paid" if self.status is PaymentStatus.PAID else "unpaid",
            "created_at": self.created_at,
            "success_at": self.success_at,
            "origin_order": self.origin_order,
            "notify_url": self.notify_url,
            "call": self.call,
            "scenario": self.scenario.to_json(),
        }


@dataclass(frozen=True, slots=True)
class DeliveryAttempt:
    """One try at delivering one notification, as the receiver answered it."""

    seq: int  # global, increasing: `GET /_sandbox/deliveries?since=` pages on it
    notification: int  # id of the notification (one schedule of tries)
    mch_id: str
    mch_order: str  # of the notified order (a repeat payment's upstream number)
    origin_order: str | None
    kind: DeliveryKind
    attempt: int  # 1-based try number within its schedule
    scheduled_offset: float  # the documented offset of this try, seconds, before scaling
    offset: float  # real seconds since the notification's first try was due
    at: float  # wall-clock Unix time of sending
    outcome: Outcome
    http_status: int | None
    answer: str | None  # the receiver's body, cut to 200 characters
    elapsed: float  # real seconds the receiver took
    error: str | None  # why there was no answer: "TimeoutError", "ClientConnectorError", ...

    def to_json(self) -> dict[str, Any]:
        return asdict(self)
