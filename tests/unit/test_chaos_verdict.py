"""The chaos run's verdict: the sandbox's ledger of payments against the events topic."""

from __future__ import annotations

import pytest

from devtools.demo.plan import Mess, PlannedOrder
from tests.chaos.verdict import Event, Figures, Payment, judge

pytestmark = pytest.mark.unit

OK = "paynotify.payment.succeeded"
REPEATED = "paynotify.payment.repeated"
MISMATCH = "paynotify.payment.amount_mismatch"
EXPIRED = "paynotify.order.expired"

PLAN = [
    PlannedOrder("A", 10, 1000),
    PlannedOrder("B", 10, 2000, Mess.REPEAT, repeat_payments=1),
    PlannedOrder("C", 42, 3000, Mess.UNDERPAID, paid_amt=3010, transfer_amt=3050),
    PlannedOrder("D", 10, 4000, Mess.UNPAID),
]
LEDGER = [
    Payment("A", None, 1000),
    Payment("B", None, 2000),
    Payment("UP1", "B", 2000),
    Payment("C", None, 3010),
]


def ev(order: str, kind: str, amt: int | None = None, number: int = 0) -> Event:
    return Event(f"{kind}/{order}/{number}", kind, order, amt)


GOOD = [
    ev("A", OK, 1000), ev("B", OK, 2000), ev("UP1", REPEATED, 2000), ev("C", MISMATCH, 3010),
    ev("D", EXPIRED),
]  # fmt: skip


def verdict(events: list[Event], lags: dict[int, int] | None = None, forged: int = 0):
    return judge(
        PLAN, {"A", "B", "C", "D"}, LEDGER, events,
        forged_deliveries_accepted=forged, lags=lags or {0: 0, 1: 0},
    )  # fmt: skip


def test_a_clean_run_is_all_zeros_and_prints_the_last_line_exactly() -> None:
    found = verdict(GOOD)
    assert found.figures == Figures(4, 4, 0, 0, 0, 0, 0, 0, 0)
    assert not found.figures.failed
    assert found.figures.line() == (
        "payments=4 settled=4 lost=0 conflicting=0 duplicates=0 forged_accepted=0 "
        "underpaid_accepted=0 stuck=0"
    )
    assert found.expired == (1, 1)


def test_a_redelivered_event_is_a_duplicate_not_a_failure() -> None:
    found = verdict([*GOOD, GOOD[0], GOOD[0]])
    assert found.figures.duplicates == 2
    assert not found.figures.failed


def test_a_payment_without_outcome_is_lost() -> None:
    found = verdict([e for e in GOOD if e.mch_order != "UP1"])
    assert (found.figures.lost, found.figures.settled) == (1, 3)
    assert found.lost == ("UP1",)
    assert found.figures.failed
    assert found.with_unreachable({"UP1"}).unreachable == ("UP1",)
    assert found.with_unreachable({"A"}).unreachable == ()


def test_two_outcomes_for_one_payment_conflict() -> None:
    found = verdict([*GOOD, ev("A", "paynotify.payment.unconfirmed", 1000)])
    assert found.figures.conflicting == 1
    assert found.examples["conflicting"] == ["A"]


def test_an_underpaid_transfer_credited_is_counted() -> None:
    events = [e for e in GOOD if e.mch_order != "C"] + [ev("C", OK, 3010)]
    assert verdict(events).figures.underpaid_accepted == 1


def test_forgeries_that_reached_billing_are_counted() -> None:
    """An outcome for an order never paid, an outcome with an amount nobody paid, and forged
    notifications the ingress answered `success`."""
    found = verdict([*GOOD, ev("D", OK, 4000)], forged=2)
    assert found.figures.forged_accepted == 3  # D, plus the two deliveries
    inflated = [e for e in GOOD if e.mch_order != "A"] + [ev("A", OK, 10_000)]
    assert verdict(inflated).figures.forged_accepted == 1


def test_an_unexpected_outcome_and_an_unexpired_order_fail_the_run() -> None:
    events = [e for e in GOOD if e.mch_order not in {"A", "D"}] + [ev("A", MISMATCH, 1000)]
    found = verdict(events)
    assert found.figures.unexpected == 2
    assert found.figures.failed
    assert found.figures.line().endswith("stuck=0")


def test_a_partition_left_behind_is_stuck() -> None:
    found = verdict(GOOD, lags={0: 0, 1: 3})
    assert found.figures.stuck == 1
    assert found.figures.failed
