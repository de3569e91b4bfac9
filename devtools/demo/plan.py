"""Which orders the demo creates and how the sandbox pays each one. Pure: the random source is
an argument, so one seed gives one plan.

Most orders are plain: paid a moment after creation, one notification, taken at once. A share of
them carries one kind of mess each (disjoint, so each order's expected outcome is plain to read):
duplicate deliveries, concurrent duplicates, a repeat payment, a forged notification beside the
real one, the first tries dropped (a short receiver outage), every try dropped (only the sweeper
can settle it), an underpayment, or no payment at all (expires). Bank transfers (42/43/44) are
paid an odd sum on purpose, which is not a mismatch.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum
from typing import TYPE_CHECKING, Any

from shared.domain.events import EventType
from shared.protocol.catalog import DOCUMENTED_PAY_TYPES, PayTypeCatalog

if TYPE_CHECKING:
    import random
    from collections.abc import Mapping

# (pay type, weight): QR codes dominate real traffic; transfers are their own share below.
PLAIN_PAY_TYPES: tuple[tuple[int, int], ...] = (
    (10, 30), (20, 25), (11, 6), (22, 6), (12, 5), (23, 4), (14, 2), (30, 3), (31, 2),
    (40, 3), (41, 2), (60, 3), (61, 3),
)  # fmt: skip
TRANSFER_PAY_TYPES = tuple(p.code for p in DOCUMENTED_PAY_TYPES if p.transfer)
# Prices in li (1 yuan = 1000 li).
PRICES = (9_900, 19_900, 29_900, 49_000, 99_000, 128_000, 199_000, 299_000, 500_000, 1_000_000)
PAID_AFTER = 3.0  # seconds before time scaling: the sandbox pays a plain order this long after
ALL_TRIES = 9  # the platform's tries per notification; dropping all of them loses it


class Mess(StrEnum):
    """What is unusual about an order (at most one thing each)."""

    NONE = "none"
    DUPLICATES = "duplicates"  # delivered again after it was taken
    CONCURRENT = "concurrent_duplicates"  # extra copies at the same moment as the first try
    REPEAT = "repeat_payment"  # the payer paid twice: a second payment under a new number
    FORGED = "forged"  # a notification for ten times the amount, wrongly signed, comes too
    LATE = "late_delivery"  # the first tries are dropped; a later one gets through
    DROPPED = "dropped"  # every try is dropped: only the sweeper's query can settle it
    UNDERPAID = "underpaid"  # the payer paid less than asked (a transfer: less than its odd sum)
    UNPAID = "unpaid"  # never paid: expires


@dataclass(frozen=True, slots=True)
class Mix:
    """The share of orders with each kind of mess, and of bank transfers."""

    transfers: float = 0.08
    shares: Mapping[Mess, float] = field(
        default_factory=lambda: {
            Mess.DUPLICATES: 0.10,
            Mess.CONCURRENT: 0.03,
            Mess.REPEAT: 0.02,
            Mess.FORGED: 0.01,
            Mess.LATE: 0.03,
            Mess.DROPPED: 0.02,
            Mess.UNDERPAID: 0.003,
            Mess.UNPAID: 0.005,
        }
    )

    def counts(self, orders: int) -> dict[Mess, int]:
        """Orders per kind of mess: its share, but at least one, so a small run shows each."""
        found = {mess: max(1, round(share * orders)) for mess, share in self.shares.items()}
        if sum(found.values()) > orders:
            raise ValueError(f"{orders} orders are too few for the mix; use at least 20")
        return found


@dataclass(frozen=True, slots=True)
class PlannedOrder:
    mch_order: str
    pay_type: int
    amt: int  # li asked
    mess: Mess = Mess.NONE
    paid_amt: int | None = None  # li paid, when not what was asked
    transfer_amt: int | None = None  # an underpaid transfer: the odd sum it was asked to pay
    duplicates: int = 0
    concurrent_duplicates: int = 0
    repeat_payments: int = 0
    drop_attempts: int = 0
    forge: bool = False

    @property
    def paid(self) -> bool:
        return self.mess is not Mess.UNPAID

    @property
    def expected(self) -> EventType:
        """The outcome the order's own payment (or its absence) must end in."""
        if self.mess is Mess.UNPAID:
            return EventType.ORDER_EXPIRED
        if self.mess is Mess.UNDERPAID:
            return EventType.PAYMENT_AMOUNT_MISMATCHED
        return EventType.PAYMENT_SUCCEEDED

    def scenario(self) -> dict[str, Any] | None:
        """The sandbox scenario (`POST /_sandbox/scenarios`), or None when the defaults do."""
        fields: dict[str, Any] = {
            "paid_amt": self.paid_amt,
            "transfer_amt": self.transfer_amt,
            "duplicates": self.duplicates,
            "concurrent_duplicates": self.concurrent_duplicates,
            "repeat_payments": self.repeat_payments,
            "drop_attempts": self.drop_attempts,
            "forge_notification": self.forge,
        }
        chosen = {name: value for name, value in fields.items() if value}
        if not self.paid:
            chosen["pay_after"] = "never"
        return chosen or None


def order_prefix(run_id: str) -> str:
    """Every order number of a run starts so: a second run never meets the first one's."""
    return f"D{run_id}N"


def order_number(run_id: str, index: int) -> str:
    return f"{order_prefix(run_id)}{index:06d}"


def plan_orders(
    run_id: str, count: int, rng: random.Random, mix: Mix | None = None
) -> list[PlannedOrder]:
    """`count` orders; the unpaid ones come first so they expire while the run goes on."""
    mix = mix or Mix()
    transfers = PayTypeCatalog.documented()
    types = [p for p, _ in PLAIN_PAY_TYPES]
    weights = [w for _, w in PLAIN_PAY_TYPES]
    pay_types = [
        rng.choice(TRANSFER_PAY_TYPES) if rng.random() < mix.transfers
        else rng.choices(types, weights)[0]
        for _ in range(count)
    ]  # fmt: skip
    counts = mix.counts(count)
    rest = list(range(count))
    rng.shuffle(rest)
    messes: dict[int, Mess] = {}
    for mess, n in counts.items():
        messes.update(dict.fromkeys(rest[:n], mess))
        rest = rest[n:]
    # Transfers are underpaid too (less than the odd sum they were asked for): never a success.
    if counts[Mess.UNDERPAID] >= 2 and not any(
        transfers.get(pay_types[i]).transfer for i, m in messes.items() if m is Mess.UNDERPAID
    ):
        underpaid = next(i for i, m in messes.items() if m is Mess.UNDERPAID)
        pay_types[underpaid] = rng.choice(TRANSFER_PAY_TYPES)
    planned = [
        _order(order_number(run_id, i), pay_types[i], messes.get(i, Mess.NONE), rng, transfers)
        for i in range(count)
    ]
    return sorted(planned, key=lambda o: o.paid)  # stable: unpaid first, else index order


def _order(
    number: str, pay_type: int, mess: Mess, rng: random.Random, catalog: PayTypeCatalog
) -> PlannedOrder:
    amt = rng.choice(PRICES)
    paid_amt: int | None = None
    transfer_amt: int | None = None
    if catalog.get(pay_type).transfer:
        paid_amt = amt + rng.randint(1, 99)  # the odd sum the payer is asked to transfer
    if mess is Mess.UNDERPAID:
        if paid_amt is not None:  # asked for the odd sum, paid a few li less
            transfer_amt, paid_amt = paid_amt, paid_amt - rng.randint(1, 50)
        else:
            paid_amt = amt - 1000 * rng.randint(1, 5)
    return PlannedOrder(
        mch_order=number,
        pay_type=pay_type,
        amt=amt,
        mess=mess,
        paid_amt=paid_amt,
        transfer_amt=transfer_amt,
        duplicates=rng.randint(1, 3) if mess is Mess.DUPLICATES else 0,
        concurrent_duplicates=rng.randint(1, 2) if mess is Mess.CONCURRENT else 0,
        repeat_payments=1 if mess is Mess.REPEAT else 0,
        drop_attempts={Mess.LATE: rng.randint(1, 3), Mess.DROPPED: ALL_TRIES}.get(mess, 0),
        forge=mess is Mess.FORGED,
    )
