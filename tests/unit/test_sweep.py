"""The sweeper's pure schedule and decisions (shared/domain/sweep.py)."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import given
from hypothesis import strategies as st

from shared.domain.decision import QueryAnswer
from shared.domain.events import AnswerStatus, EventType
from shared.domain.orders import OrderRecord
from shared.domain.sweep import (
    FIRST_CHECK,
    HOPELESS_GAP,
    MAX_GAP,
    RETRY_GAP,
    CheckAgain,
    ExpireOrder,
    ForwardPaid,
    MerchantRest,
    StopSweeping,
    SweepSchedule,
    after_answer,
    after_failure,
    after_hopeless,
    hopeless_reason,
    next_slot,
)
from shared.protocol.errors import (
    AnswerSignatureError,
    MalformedAnswer,
    PlatformUnavailable,
    UnknownMerchant,
    error_for,
)
from shared.protocol.payment import PaymentReport, PaymentStatus

pytestmark = pytest.mark.unit

CREATED = 1_700_000_000
DAY = 86_400.0


def _record(created_at: int = CREATED) -> OrderRecord:
    return OrderRecord(mch_id="m1", mch_order="o-1", amt=10_000, pay_type=10, created_at=created_at)


def _report(status: PaymentStatus, mch_order: str = "o-1") -> PaymentReport:
    paid = status is PaymentStatus.PAID
    return PaymentReport(
        mch_id="m1",
        pay_type=10,
        mch_order=mch_order,
        amt=10_000,
        mch_amt=10_000,
        amt_type="cny",
        status=status,
        created_at=CREATED + 5,
        success_at=CREATED + 4 if paid else None,
        origin_order=None,
        call=None,
        sign_type="md5",
    )


def test_first_query_comes_after_the_platforms_first_five_tries() -> None:
    """The first query is 90 s after creation: the platform's tries at 0..60 s had their chance."""
    schedule = SweepSchedule(expiry=DAY)
    assert FIRST_CHECK == 90.0
    assert schedule.first_due(CREATED) == CREATED + 90.0


def test_gaps_double_up_to_the_cap_and_the_last_query_is_the_expiry() -> None:
    """Offsets grow 90, 180, 360, ... gaps capped at an hour, and end exactly at the expiry."""
    offsets = SweepSchedule(expiry=DAY).offsets()
    gaps = [b - a for a, b in itertools.pairwise(offsets)]
    assert offsets[:4] == (90.0, 270.0, 630.0, 1350.0)
    assert all(gap <= MAX_GAP for gap in gaps)
    assert all(b >= a for a, b in itertools.pairwise(gaps[:-1]))
    assert offsets[-1] == DAY
    assert len(offsets) < 30  # about 25 queries for an order abandoned for a whole day


def test_expiry_before_the_first_check_gives_a_single_query_at_expiry() -> None:
    """A very short expiry still gets its one deciding query, at the expiry."""
    assert SweepSchedule(expiry=30.0).offsets() == (30.0,)


def test_time_scale_compresses_every_delay() -> None:
    """`PAYNOTIFY_TIME_SCALE=0.01` turns the 90 s first query into 0.9 s and so on."""
    normal = SweepSchedule.scaled(time_scale=1.0, order_expiry=DAY)
    fast = SweepSchedule.scaled(time_scale=0.01, order_expiry=DAY)
    assert fast.offsets() == pytest.approx([o * 0.01 for o in normal.offsets()])
    assert fast.settle_gap == pytest.approx(normal.settle_gap * 0.01)
    assert fast.retry_gap == pytest.approx(normal.retry_gap * 0.01)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"expiry": 0.0},
        {"expiry": float("inf")},
        {"expiry": DAY, "first_check": -1.0},
        {"expiry": DAY, "growth": 0.5},
        {"expiry": DAY, "retry_gap": float("nan")},
    ],
)
def test_nonsense_schedules_are_refused(kwargs: dict[str, float]) -> None:
    """Zero, negative, infinite or shrinking timings raise instead of looping or stalling."""
    with pytest.raises(ValueError):
        SweepSchedule(**kwargs)


@given(
    expiry=st.floats(min_value=0.5, max_value=10 * DAY),
    now_offset=st.floats(min_value=-100.0, max_value=11 * DAY),
)
def test_next_due_is_the_first_offset_after_now(expiry: float, now_offset: float) -> None:
    """next_due is strictly later than now, on the schedule, and None only past the expiry."""
    schedule = SweepSchedule(expiry=expiry)
    now = CREATED + now_offset
    due = schedule.next_due(CREATED, now)
    if now >= schedule.expires_at(CREATED):
        assert due is None
    else:
        assert due is not None
        assert due > now
        assert due in {CREATED + o for o in schedule.offsets()}
        assert all(CREATED + o <= now for o in schedule.offsets() if CREATED + o < due)


def test_unpaid_before_expiry_checks_again_at_the_next_scheduled_time() -> None:
    """An unpaid answer at the first query schedules the second query, nothing more."""
    schedule = SweepSchedule(expiry=DAY)
    answer = QueryAnswer(report=_report(PaymentStatus.UNPAID), queried_at=CREATED + 90)
    decision = after_answer(_record(), answer, now=CREATED + 90.5, schedule=schedule)
    assert decision == CheckAgain(due=CREATED + 270.0)


def test_unknown_to_the_platform_before_expiry_checks_again() -> None:
    """103 (order not found) before the expiry is not final: the payer may not have started."""
    schedule = SweepSchedule(expiry=DAY)
    answer = QueryAnswer(report=None, queried_at=CREATED + 90)
    decision = after_answer(_record(), answer, now=CREATED + 91, schedule=schedule)
    assert isinstance(decision, CheckAgain)


def test_paid_answer_is_forwarded_and_looked_at_again_later() -> None:
    """Paid: forward the answer, and check again no sooner than the settle gap."""
    schedule = SweepSchedule(expiry=DAY)
    report = _report(PaymentStatus.PAID)
    now = CREATED + 91.0
    decision = after_answer(
        _record(), QueryAnswer(report, CREATED + 91), now=now, schedule=schedule
    )
    assert decision == ForwardPaid(due=decision.due)
    assert decision.due >= now + schedule.settle_gap


def test_paid_at_expiry_is_forwarded_not_expired() -> None:
    """An order the expiry query finds paid is settled as paid, never expired."""
    schedule = SweepSchedule(expiry=DAY)
    now = CREATED + DAY + 1
    answer = QueryAnswer(_report(PaymentStatus.PAID), int(now))
    decision = after_answer(_record(), answer, now=now, schedule=schedule)
    assert isinstance(decision, ForwardPaid)
    assert decision.due == now + schedule.max_gap


@pytest.mark.parametrize(
    ("report", "status"),
    [
        (_report(PaymentStatus.UNPAID), AnswerStatus.UNPAID),
        (None, AnswerStatus.NOT_FOUND),
    ],
)
def test_unpaid_at_expiry_expires_the_order(
    report: PaymentReport | None, status: AnswerStatus
) -> None:
    """Unpaid or unknown at the expiry query: an order.expired event from the merchant's record."""
    schedule = SweepSchedule(expiry=DAY)
    now = CREATED + DAY
    decision = after_answer(_record(), QueryAnswer(report, int(now)), now=now, schedule=schedule)
    assert isinstance(decision, ExpireOrder)
    event = decision.event
    assert event.type is EventType.ORDER_EXPIRED
    assert (event.mch_id, event.mch_order, event.mch_amt) == ("m1", "o-1", 10_000)
    assert event.answer is status
    assert event.queried_at == int(now)


def test_an_answer_about_another_order_is_refused() -> None:
    """A report for a different order number is a caller's mistake, not a decision."""
    answer = QueryAnswer(_report(PaymentStatus.PAID, mch_order="o-2"), CREATED)
    with pytest.raises(ValueError, match="another order"):
        after_answer(_record(), answer, now=CREATED + 100, schedule=SweepSchedule(expiry=DAY))


def test_failures_back_off_doubling_up_to_the_cap() -> None:
    """Failed queries retry after 30, 60, 120 s ... never later than the one-hour cap."""
    schedule = SweepSchedule(expiry=DAY)
    dues = [after_failure(n, now=0.0, schedule=schedule).due for n in range(1, 12)]
    assert dues[:3] == [30.0, 60.0, 120.0]
    assert dues[-1] == MAX_GAP
    assert after_failure(10_000, now=0.0, schedule=schedule).due == MAX_GAP
    with pytest.raises(ValueError):
        after_failure(0, now=0.0, schedule=schedule)


def test_next_slot_spaces_queries_by_the_rate() -> None:
    """At 4 queries a second, slots are 0.25 s apart; an idle gap is not saved up as a burst."""
    assert next_slot(None, 10.0, 4.0) == 10.0
    assert next_slot(10.0, 10.0, 4.0) == 10.25
    assert next_slot(10.25, 20.0, 4.0) == 20.0
    with pytest.raises(ValueError):
        next_slot(None, 0.0, 0.0)


@pytest.mark.parametrize(
    ("error", "reason"),
    [
        (UnknownMerchant("m9"), "unknown_merchant"),
        (error_for(100, "missing"), "platform_100"),
        (error_for(101, "sign"), "platform_101"),
        (error_for(102, "merchant"), "platform_102"),
        (error_for(110, "query"), "platform_110"),
        (error_for(111, "method"), "platform_111"),
        (error_for(112, "channel"), "platform_112"),
        (error_for(150, "undocumented"), "platform_150"),
        (error_for(103, "not found"), None),
        (error_for(113, "system"), None),
        (error_for(114, "placement"), None),
        (PlatformUnavailable("timeout"), None),
        (AnswerSignatureError("mismatch"), None),
        (MalformedAnswer("not JSON"), None),
    ],
)
def test_hopeless_failures_are_those_retrying_cannot_fix(
    error: Exception, reason: str | None
) -> None:
    """A missing key and the answer codes for a wrong request are hopeless; the transient codes,
    no answer, and answers that do not verify or parse get the ordinary failure schedule; 103 is
    an answer, not a failure."""
    assert hopeless_reason(error) == reason


def test_hopeless_failures_wait_long_then_stop() -> None:
    """15 minutes, then 30, and the third hopeless failure in a row stops the polling."""
    schedule = SweepSchedule(expiry=DAY)
    assert after_hopeless(1, "platform_101", now=0.0, schedule=schedule) == CheckAgain(HOPELESS_GAP)
    assert after_hopeless(2, "platform_101", now=0.0, schedule=schedule) == CheckAgain(
        2 * HOPELESS_GAP
    )
    assert after_hopeless(3, "platform_101", now=0.0, schedule=schedule) == StopSweeping(
        "platform_101"
    )
    assert after_hopeless(99, "x", now=0.0, schedule=schedule) == StopSweeping("x")
    with pytest.raises(ValueError):
        after_hopeless(0, "x", now=0.0, schedule=schedule)


def test_hopeless_gaps_scale_with_time_and_stay_capped() -> None:
    """The hopeless gap follows PAYNOTIFY_TIME_SCALE, and many tries never overflow the gap."""
    fast = SweepSchedule.scaled(time_scale=0.01, order_expiry=DAY)
    assert fast.hopeless_gap == pytest.approx(HOPELESS_GAP * 0.01)
    many = SweepSchedule(expiry=DAY, hopeless_tries=10_000)
    assert after_hopeless(5_000, "x", now=0.0, schedule=many) == CheckAgain(MAX_GAP)


def test_a_merchant_is_rested_after_failures_in_a_row_and_probed_once() -> None:
    """Three failed queries in a row rest the merchant for the retry gap: its orders wait
    without a query; then one probe goes out while the others keep waiting; a failed probe
    doubles the rest, an answer ends it. Other merchants are never affected."""
    rest = MerchantRest(SweepSchedule(expiry=DAY))
    for _ in range(3):
        assert rest.admit("bad", 0.0) is None
        rest.failed("bad", 0.0)
    assert rest.admit("bad", 1.0) == RETRY_GAP
    assert rest.admit("good", 1.0) is None
    assert rest.resting(1.0) == ["bad"]
    assert not rest.probing("bad")
    assert rest.admit("bad", RETRY_GAP) is None  # the probe
    assert rest.probing("bad")
    assert rest.admit("bad", RETRY_GAP) == 2 * RETRY_GAP  # one probe at a time
    rest.failed("bad", RETRY_GAP)
    assert rest.admit("bad", RETRY_GAP + 1) == 3 * RETRY_GAP  # rested twice as long
    assert rest.admit("bad", 3 * RETRY_GAP) is None
    rest.answered("bad")
    assert rest.admit("bad", 3 * RETRY_GAP) is None
    assert rest.resting(3 * RETRY_GAP) == []


def test_a_rest_is_capped_and_an_abandoned_probe_frees_the_slot() -> None:
    """However long a merchant keeps failing, its rest never exceeds the widest gap; a probe
    that ended without a verdict lets the next order probe."""
    schedule = SweepSchedule(expiry=DAY)
    rest = MerchantRest(schedule)
    for _ in range(200):
        rest.failed("bad", 0.0)
    assert rest.admit("bad", 1.0) == MAX_GAP
    assert rest.admit("bad", MAX_GAP) is None
    rest.abandoned("bad")
    assert rest.admit("bad", MAX_GAP) is None
    with pytest.raises(ValueError):
        MerchantRest(schedule, trip=0)
