"""The payment report: what a notification (回调通知) and an order-query answer (订单查询) say.

Both carry the same fields, so one frozen type and one strict parser serve both. Parsing checks
form only; whether the signature holds is `signing.verify`'s business.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import IntEnum
from typing import TYPE_CHECKING

from shared.protocol.fields import FieldError, check_choice, check_text, parse_int
from shared.protocol.signing import KEY_FIELD, SIGN_FIELD

if TYPE_CHECKING:
    from collections.abc import Container, Mapping


class PaymentStatus(IntEnum):
    UNPAID = 1
    PAID = 2


REQUIRED_FIELDS = (
    "mch_id", "service", "mch_order", "amt", "mch_amt", "sign_type", "amt_type", "status",
    "created_at",
)  # fmt: skip
OPTIONAL_FIELDS = ("call", "success_at", "origin_order")
KNOWN_FIELDS = frozenset((*REQUIRED_FIELDS, *OPTIONAL_FIELDS, SIGN_FIELD))
SIGN_TYPES = frozenset({"md5"})
AMOUNT_TYPES = frozenset({"cny"})  # the document: amounts are li of renminbi
MAX_AMOUNT_LI = 10**15  # a trillion yuan: far above any payment, far below int64


@dataclass(frozen=True, slots=True)
class PaymentReport:
    mch_id: str
    pay_type: int  # the report's `service` field
    mch_order: str
    amt: int  # li actually paid
    mch_amt: int  # li the merchant asked for
    amt_type: str
    status: PaymentStatus
    created_at: int
    success_at: int | None
    origin_order: str | None  # set only for a repeat payment
    call: str | None
    sign_type: str
    extra: tuple[tuple[str, str], ...] = ()  # fields the document does not name, as received

    @property
    def paid(self) -> bool:
        return self.status is PaymentStatus.PAID

    @property
    def repeat(self) -> bool:
        return self.origin_order is not None

    @property
    def order_key(self) -> str:
        return order_key(self.mch_id, self.mch_order)


def order_key(mch_id: str, mch_order: str) -> str:
    """The one key for an order everywhere: Kafka keys, Redis keys, event subjects."""
    return f"{mch_id}:{mch_order}"


def order_fields(key: str) -> dict[str, str]:
    """An order key's parts under the names every log line binds them with (`mch_id`,
    `mch_order`): `log.info("...", **order_fields(key))`. A merchant id never holds `:`."""
    mch_id, _, mch_order = key.partition(":")
    return {"mch_id": mch_id, "mch_order": mch_order}


def parse_payment_report(fields: Mapping[str, str], pay_types: Container[int]) -> PaymentReport:
    """Validate every field strictly and build the report, or raise `FieldError`."""
    if KEY_FIELD in fields:
        raise FieldError(KEY_FIELD, "must not be present")
    for name in REQUIRED_FIELDS:
        if fields.get(name, "") == "":
            raise FieldError(name, "is required")
    service = parse_int("service", fields["service"], minimum=1)
    if service not in pay_types:
        raise FieldError("service", "is not a known pay type")
    status = parse_int("status", fields["status"], minimum=1, maximum=2)

    # An empty optional field counts as absent.
    success_at = fields.get("success_at") or None
    origin_order = fields.get("origin_order") or None
    call = fields.get("call") or None
    # Notifications rarely carry fields the document does not name: skip the sort then.
    extra = (
        ()
        if fields.keys() <= KNOWN_FIELDS
        else tuple(
            (name, check_text(name, value, required=False, signed=True))
            for name, value in sorted(fields.items())
            if name not in KNOWN_FIELDS
        )
    )
    return PaymentReport(
        mch_id=check_text("mch_id", fields["mch_id"], max_length=32, signed=True),
        pay_type=service,
        mch_order=check_text("mch_order", fields["mch_order"], max_length=50, signed=True),
        amt=parse_int("amt", fields["amt"], maximum=MAX_AMOUNT_LI),
        mch_amt=parse_int("mch_amt", fields["mch_amt"], maximum=MAX_AMOUNT_LI),
        amt_type=check_choice("amt_type", fields["amt_type"], AMOUNT_TYPES),
        status=PaymentStatus(status),
        created_at=parse_int("created_at", fields["created_at"]),
        success_at=None if success_at is None else parse_int("success_at", success_at),
        origin_order=None
        if origin_order is None
        else check_text("origin_order", origin_order, max_length=50, signed=True),
        call=None if call is None else check_text("call", call, max_length=255, signed=True),
        sign_type=check_choice("sign_type", fields["sign_type"], SIGN_TYPES),
        extra=extra,
    )


def report_fields(report: PaymentReport) -> dict[str, str]:
    """The report as the platform's form fields (without `sign`), empty optionals left out."""
    form = {
        "mch_id": report.mch_id,
        "service": str(report.pay_type),
        "mch_order": report.mch_order,
        "amt": str(report.amt),
        "mch_amt": str(report.mch_amt),
        "amt_type": report.amt_type,
        "status": str(int(report.status)),
        "created_at": str(report.created_at),
        "sign_type": report.sign_type,
    }
    if report.success_at is not None:
        form["success_at"] = str(report.success_at)
    if report.origin_order is not None:
        form["origin_order"] = report.origin_order
    if report.call is not None:
        form["call"] = report.call
    form.update(report.extra)
    return form
