"""The merchant's own record of an order: the source of truth for the amount check.

Kept to what reconciliation needs; the order book (issue 6) stores and indexes it.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from shared.protocol.payment import order_key


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
