"""What a chaos run proves: the sandbox's ledger of payments against every event on the events
topic. Pure: plain values in, figures out.

- **lost**: a payment the platform took that has no outcome event;
- **conflicting**: an order (or repeat payment) with two different outcomes;
- **duplicates**: the same event id on the topic more than once (allowed: consumers drop them by
  id; counted);
- **forged_accepted**: a forged notification answered `success`, an outcome for an order that was
  never paid, or an outcome carrying an amount the payer did not pay;
- **underpaid_accepted**: an underpaid order (or transfer) that ended `succeeded`;
- **stuck**: a callbacks partition whose committed offset is short of its end after quiescence;
- **unexpected**: an outcome of another type than the payment's facts call for (an unpaid
  order not expired, a plain payment `unconfirmed`, ...): not on the last line, but a failure.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

from devtools.demo.plan import Mess, PlannedOrder
from shared.domain.events import PAYMENT_TYPES, EventType

if TYPE_CHECKING:
    from collections.abc import Iterable, Mapping, Sequence

SHOWN = 5  # example orders listed per failed figure


@dataclass(frozen=True, slots=True)
class Payment:
    """One row of the sandbox's ledger (`GET /_sandbox/payments`)."""

    mch_order: str
    origin_order: str | None  # a repeat payment's original order
    amt: int  # li the payer paid

    @classmethod
    def from_ledger(cls, row: Mapping[str, Any]) -> Payment:
        return cls(str(row["mch_order"]), row.get("origin_order"), int(row["amt"]))


@dataclass(frozen=True, slots=True)
class Event:
    """One record of the events topic, reduced."""

    id: str
    type: str
    mch_order: str
    amt: int | None  # payments only

    @classmethod
    def from_cloudevent(cls, document: Mapping[str, Any]) -> Event:
        data = document.get("data") or {}
        amt = data.get("amt")
        return cls(
            str(document["id"]),
            str(document["type"]),
            str(data.get("mch_order")),
            int(amt) if amt is not None else None,
        )


@dataclass(frozen=True, slots=True)
class Figures:
    payments: int
    settled: int
    lost: int
    conflicting: int
    duplicates: int
    forged_accepted: int
    underpaid_accepted: int
    stuck: int
    unexpected: int

    @property
    def failed(self) -> bool:
        return any(
            (self.lost, self.conflicting, self.forged_accepted, self.underpaid_accepted,
             self.stuck, self.unexpected)
        )  # fmt: skip

    def line(self) -> str:
        """The run's last line, exactly so."""
        return (
            f"payments={self.payments} settled={self.settled} lost={self.lost} "
            f"conflicting={self.conflicting} duplicates={self.duplicates} "
            f"forged_accepted={self.forged_accepted} "
            f"underpaid_accepted={self.underpaid_accepted} stuck={self.stuck}"
        )


@dataclass(frozen=True, slots=True)
class Verdict:
    figures: Figures
    outcomes: Mapping[str, int]  # distinct outcomes by type
    expired: tuple[int, int]  # unpaid orders expired, of those created
    examples: Mapping[str, Sequence[str]] = field(default_factory=dict)  # figure -> orders
    lost: tuple[str, ...] = ()  # every lost payment's number
    # Of the lost: repeat payments none of whose notification tries was taken (the platform gave
    # up on them, and offers no query that could find them; docs/reliability.md, known limits).
    unreachable: tuple[str, ...] = ()

    def with_unreachable(self, untaken_repeats: Iterable[str]) -> Verdict:
        """`untaken_repeats`: repeat payments whose every notification try failed."""
        untaken = set(untaken_repeats)
        return replace(self, unreachable=tuple(o for o in self.lost if o in untaken))


def judge(
    plan: Sequence[PlannedOrder],
    created: Iterable[str],
    ledger: Sequence[Payment],
    events: Sequence[Event],
    *,
    forged_deliveries_accepted: int,
    lags: Mapping[int, int],
) -> Verdict:
    """The figures of a run: `ledger` is everything the platform was paid, `events` every
    record of the events topic (duplicates included), `lags` each callbacks partition's end
    offset minus the workers' committed one."""
    types: dict[str, set[str]] = {}
    for event in events:
        types.setdefault(event.mch_order, set()).add(event.type)
    notes: dict[str, list[str]] = {}
    conflicting = sorted(order for order, found in types.items() if len(found) > 1)
    notes["conflicting"] = conflicting
    settled = _payments(plan, ledger, types, notes)
    forged = _forged(ledger, events)
    notes["forged_accepted"] = forged
    expired, unpaid = _unpaid(plan, set(created), ledger, types, notes)
    notes["stuck"] = [
        f"partition {partition}: {lag} messages not committed"
        for partition, lag in sorted(lags.items())
        if lag > 0
    ]
    distinct = {(event.mch_order, event.type) for event in events}
    figures = Figures(
        payments=len(ledger),
        settled=settled,
        lost=len(ledger) - settled,
        conflicting=len(conflicting),
        duplicates=len(events) - len({event.id for event in events}),
        forged_accepted=len(forged) + forged_deliveries_accepted,
        underpaid_accepted=len(notes.get("underpaid_accepted", ())),
        stuck=len(notes["stuck"]),
        unexpected=len(notes.get("unexpected", ())),
    )
    return Verdict(
        figures,
        dict(sorted(Counter(kind for _, kind in distinct).items())),
        (expired, unpaid),
        {name: found[:SHOWN] for name, found in notes.items() if found},
        lost=tuple(notes.get("lost", ())),
    )


def _payments(
    plan: Sequence[PlannedOrder],
    ledger: Sequence[Payment],
    types: Mapping[str, set[str]],
    notes: dict[str, list[str]],
) -> int:
    """How many payments have an outcome; notes the lost, underpaid accepted and unexpected."""
    planned = {order.mch_order: order for order in plan}
    settled = 0
    for payment in ledger:
        found = types.get(payment.mch_order, set())
        if not found & PAYMENT_TYPES:
            notes.setdefault("lost", []).append(payment.mch_order)
            continue
        settled += 1
        if len(found) > 1:
            continue  # counted as conflicting
        (outcome,) = found
        origin = planned.get(payment.origin_order or payment.mch_order)
        underpaid = origin is not None and origin.mess is Mess.UNDERPAID
        if underpaid and not payment.origin_order and outcome == EventType.PAYMENT_SUCCEEDED:
            notes.setdefault("underpaid_accepted", []).append(payment.mch_order)
        elif outcome != _expected(payment, origin):
            notes.setdefault("unexpected", []).append(f"{payment.mch_order} ({outcome})")
    return settled


def _forged(ledger: Sequence[Payment], events: Sequence[Event]) -> list[str]:
    """Orders with a payment outcome for a payment never made, or for an amount not paid."""
    paid = {payment.mch_order: payment.amt for payment in ledger}
    forged = [
        event.mch_order
        for event in events
        if event.type in PAYMENT_TYPES
        and (
            event.mch_order not in paid
            or (event.amt is not None and event.amt != paid[event.mch_order])
        )
    ]
    return list(dict.fromkeys(forged))


def _unpaid(
    plan: Sequence[PlannedOrder],
    created: set[str],
    ledger: Sequence[Payment],
    types: Mapping[str, set[str]],
    notes: dict[str, list[str]],
) -> tuple[int, int]:
    """Unpaid orders created, and how many of them expired (and nothing else)."""
    paid = {payment.mch_order for payment in ledger}
    unpaid = [o.mch_order for o in plan if not o.paid and o.mch_order in created]
    expired = [o for o in unpaid if types.get(o) == {EventType.ORDER_EXPIRED.value}]
    for order in sorted(set(unpaid) - set(expired) - paid):
        notes.setdefault("unexpected", []).append(f"{order} (unpaid, not expired)")
    return len(expired), len(unpaid)


def _expected(payment: Payment, origin: PlannedOrder | None) -> str:
    if payment.origin_order is not None:
        return EventType.PAYMENT_REPEATED.value
    if origin is None:  # a payment of an order the run did not plan: nothing is expected
        return EventType.PAYMENT_FOR_UNKNOWN_ORDER.value
    return origin.expected.value
