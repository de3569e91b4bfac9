"""Record an order a merchant system announced (`order.created` on `paynotify.orders`): the
message parsed strictly, then recorded in the order book (shared.ports.Orders) as pending, once.

The message (docs/order-book.md, docs/asyncapi.yaml `OrderCreated`), keyed `mch_id:mch_order`:

    {"type": "order.created", "mch_id": "...", "mch_order": "...", "amt": 10000,
     "pay_type": 10, "created_at": 1700000000}

`amt` in li, `created_at` in Unix seconds; integers as JSON numbers or plain decimal strings;
other members are ignored. What breaks a rule is an `OrderMessageError` with a machine-readable
reason; an order already recorded with other values an `OrderConflictError`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Final

import orjson

from shared.domain.orders import OrderRecord
from shared.protocol.catalog import DOCUMENTED_PAY_TYPES
from shared.protocol.fields import FieldError, check_text, parse_int
from shared.protocol.payment import MAX_AMOUNT_LI, order_key

if TYPE_CHECKING:
    from collections.abc import Container

    from shared.ports import Orders

MESSAGE_TYPE: Final = "order.created"
MAX_TIMESTAMP: Final = 10**11  # Unix seconds far beyond any real order; keeps garbage out
PAY_TYPES: Final = frozenset(p.code for p in DOCUMENTED_PAY_TYPES)


class OrderMessageError(ValueError):
    """A message that cannot be recorded; `reason` is machine-readable, `detail` never quotes
    a value."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason
        self.detail = detail


def _integer(document: dict[str, Any], name: str, *, minimum: int, maximum: int) -> int:
    value = document.get(name)
    if isinstance(value, bool) or not isinstance(value, int | str):
        raise FieldError(name, "must be an integer")
    return parse_int(name, str(value), minimum=minimum, maximum=maximum)


def _text(document: dict[str, Any], name: str, max_length: int) -> str:
    value = document.get(name)
    if not isinstance(value, str):
        raise FieldError(name, "must be a string")
    return check_text(name, value, max_length=max_length)


def parse_order_created(
    value: bytes | None,
    key: bytes | None,
    pay_types: Container[int] = PAY_TYPES,
    merchants: Container[str] | None = None,
) -> OrderRecord:
    """The pending record an `order.created` message describes, or `OrderMessageError`.
    `merchants`: the merchant ids with keys; an order of any other is `unknown_merchant` (None:
    not checked)."""
    try:
        document = orjson.loads(value or b"")
    except orjson.JSONDecodeError:
        raise OrderMessageError("undecodable", "the message is not JSON") from None
    if not isinstance(document, dict):
        raise OrderMessageError("undecodable", "the message is not a JSON object")
    if document.get("type") != MESSAGE_TYPE:
        raise OrderMessageError("unknown_type", f"the message's type is not {MESSAGE_TYPE}")
    try:
        record = OrderRecord(
            mch_id=_text(document, "mch_id", 32),
            mch_order=_text(document, "mch_order", 50),
            amt=_integer(document, "amt", minimum=1, maximum=MAX_AMOUNT_LI),
            pay_type=_integer(document, "pay_type", minimum=1, maximum=10**6),
            created_at=_integer(document, "created_at", minimum=1, maximum=MAX_TIMESTAMP),
            # Optional: the sum a bank transfer's payer was asked to pay (create-order answer).
            transfer_amt=(
                _integer(document, "transfer_amt", minimum=1, maximum=MAX_AMOUNT_LI)
                if document.get("transfer_amt") is not None
                else None
            ),
        )
    except FieldError as exc:
        raise OrderMessageError("invalid_fields", str(exc)) from None
    if record.pay_type not in pay_types:
        raise OrderMessageError("invalid_fields", "field 'pay_type': is not a known pay type")
    if key is None or key != order_key(record.mch_id, record.mch_order).encode():
        raise OrderMessageError("key_mismatch", "the message key is not mch_id:mch_order")
    if merchants is not None and record.mch_id not in merchants:
        raise OrderMessageError(
            "unknown_merchant",
            "the merchant has no key in the merchants file: it cannot be queried",
        )
    return record


async def record_order(
    book: Orders,
    value: bytes | None,
    key: bytes | None,
    *,
    merchants: Container[str] | None = None,
) -> tuple[OrderRecord, bool]:
    """Parse an `order.created` message and record it; the order and whether this call made
    the record (False: recorded before, with the same values). Raises `OrderMessageError` or
    `OrderConflictError`, and what the order book raises when it is away."""
    order = parse_order_created(value, key, merchants=merchants)
    return order, await book.record(order)
