"""The merchant's own record of an order: the source of truth for the amount check.

Kept to what reconciliation needs; the order book (issue 6) stores and indexes it.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import TYPE_CHECKING

from shared.protocol.payment import order_key

if TYPE_CHECKING:
    from collections.abc import Sequence


class OrderState(StrEnum):
    PENDING = "pending"  # created, no outcome yet
    SETTLED = "settled"  # a payment outcome was written
    EXPIRED = "expired"  # unpaid at expiry; a payment after this is settled as late
    FAILED = "failed"  # the platform refused to create it


@dataclass(frozen=True, slots=True)
class OrderRecord:
    mch_id: str
    mch_order: str
    amt: int  # li the merchant asked for: what a notification calls `mch_amt`
    pay_type: int
    created_at: int  # Unix seconds
    state: OrderState = OrderState.PENDING
    # Bank transfers: the sum the create-order answer asked the payer to transfer (li), when
    # known; a transfer succeeds only at exactly this sum (shared.domain.decision).
    transfer_amt: int | None = None

    @property
    def order_key(self) -> str:
        return order_key(self.mch_id, self.mch_order)


class OrderConflictError(ValueError):
    """An order number already recorded with another amount, pay type or creation time."""

    def __init__(self, mch_id: str, mch_order: str, fields: Sequence[str]) -> None:
        super().__init__(f"order already recorded with a different {', '.join(fields)}")
        self.mch_id = mch_id
        self.mch_order = mch_order
        self.fields = tuple(fields)


class CorruptRecordError(ValueError):
    """A record hash that breaks the layout (a field missing or malformed); names the field."""


@dataclass(frozen=True, slots=True)
class OrderEntry:
    """A record with the book-keeping beside it."""

    record: OrderRecord
    outcome: str | None = None  # the event type the workers settled it with
    settled_at: float | None = None
    reason: str | None = None  # why it failed
    sweep_attempts: int = 0  # order queries the sweeper made
    sweep_failures: int = 0  # of those, failed in a row since the last answer
    # Failures in a row that retrying cannot fix (shared.domain.sweep.hopeless_reason), and why
    # the sweeper stopped polling the order once they reached their bound.
    sweep_hopeless: int = 0
    sweep_stopped: str | None = None
