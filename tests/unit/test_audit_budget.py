"""The audit budget: a token bucket per sender, a bounded table, and nothing left out untold."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ingress.audit_budget import AuditBudget

pytestmark = pytest.mark.unit


def test_a_burst_is_written_then_records_are_left_out_and_the_next_one_says_how_many() -> None:
    budget = AuditBudget(rate=2.0, burst=3)
    assert [budget.take("a", 0.0) for _ in range(5)] == [0, 0, 0, None, None]
    assert budget.take("a", 0.4) is None  # 0.8 of a record earned: not yet
    assert budget.take("a", 0.5) == 3  # one earned: written, with the three left out
    assert budget.take("a", 0.5) is None


def test_senders_have_budgets_of_their_own() -> None:
    budget = AuditBudget(rate=1.0, burst=1)
    assert budget.take("a", 0.0) == 0
    assert budget.take("a", 0.0) is None
    assert budget.take("b", 0.0) == 0
    assert budget.take(None, 0.0) == 0  # no peer known: one shared budget


def test_the_table_forgets_the_least_recently_seen_sender_and_counts_what_it_held() -> None:
    budget = AuditBudget(rate=1.0, burst=1, max_sources=2)
    budget.take("a", 0.0)
    assert budget.take("a", 0.0) is None  # "a" holds one left out
    budget.take("b", 0.0)
    budget.take("c", 0.0)  # the table is full: "a", the oldest, goes
    assert budget.forgotten == 1
    assert budget.take("a", 0.0) == 0  # a fresh budget


def test_a_clock_going_back_earns_nothing() -> None:
    budget = AuditBudget(rate=100.0, burst=1)
    assert budget.take("a", 10.0) == 0
    assert budget.take("a", 5.0) is None


@given(st.lists(st.tuples(st.sampled_from("abc"), st.floats(0, 0.5)), max_size=200))
def test_nothing_is_lost_every_refusal_is_written_or_counted(
    steps: list[tuple[str, float]],
) -> None:
    """Over any sequence, records written + their `suppressed` counts + what is still pending
    (reported by a final take far in the future) equals the refusals seen."""
    budget = AuditBudget(rate=3.0, burst=2)
    now, written, reported = 0.0, 0, 0
    for source, step in steps:
        now += step
        taken = budget.take(source, now)
        if taken is not None:
            written += 1
            reported += taken
    for source in "abc":
        final = budget.take(source, now + 1e6)
        assert final is not None
        reported += final
    assert written + reported + budget.forgotten == len(steps)


def test_nonsense_limits_are_refused() -> None:
    with pytest.raises(ValueError, match="rate"):
        AuditBudget(rate=0.0, burst=1)
