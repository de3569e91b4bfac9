"""The reconciliation decision: every combination of report, answer, record, policy and re-query
count, the named cases behind them, and properties that must hold for any input."""

from __future__ import annotations

import itertools
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from shared.domain.decision import (
    DEFAULT_TRANSFER_TOLERANCE_LI,
    PLATFORM_RETRY_DELAYS,
    TRANSFER_PAY_TYPES,
    NoOutcome,
    Notice,
    QueryAnswer,
    RequeryLater,
    decide,
    decide_expiry,
    is_stale,
    record_order,
    requery_schedule,
)
from shared.domain.events import (
    AnswerStatus,
    EventType,
    OrderExpired,
    PaymentReconciled,
    Reason,
)
from shared.domain.orders import OrderRecord, OrderState
from shared.protocol.catalog import DOCUMENTED_PAY_TYPES
from shared.protocol.payment import PaymentReport, PaymentStatus

if TYPE_CHECKING:
    from shared.domain.decision import Decision, RecordsPolicy

pytestmark = pytest.mark.unit

MCH_ID = "t9awtvk6dn"
ORDER = "ORD-20261127-0001"
UPSTREAM_ORDER = "UP-8812731"  # the platform's number for a repeat payment
QR_PAY_TYPE = 10  # WeChat QR: amt must equal mch_amt
TRANSFER_PAY_TYPE = 44  # bank card transfer: amt may differ from mch_amt, never below it
ASKED = 100_000  # li: 100 yuan
CREATED_AT = 1_800_000_000
PAID_AT = CREATED_AT + 42
QUERIED_AT = CREATED_AT + 60
SCHEDULE = requery_schedule(1.0)
LIMIT = len(SCHEDULE)


def make_report(
    *,
    status: PaymentStatus = PaymentStatus.PAID,
    repeat: bool = False,
    service: int = QR_PAY_TYPE,
    amt: int | None = None,
    mch_amt: int = ASKED,
) -> PaymentReport:
    return PaymentReport(
        mch_id=MCH_ID,
        pay_type=service,
        mch_order=UPSTREAM_ORDER if repeat else ORDER,
        amt=mch_amt if amt is None else amt,
        mch_amt=mch_amt,
        amt_type="cny",
        status=status,
        created_at=CREATED_AT,
        success_at=PAID_AT if status is PaymentStatus.PAID else None,
        origin_order=ORDER if repeat else None,
        call=None,
        sign_type="md5",
    )


def make_record(
    *,
    amt: int = ASKED,
    pay_type: int = QR_PAY_TYPE,
    state: OrderState = OrderState.PENDING,
    transfer_amt: int | None = None,
) -> OrderRecord:
    return OrderRecord(
        mch_id=MCH_ID,
        mch_order=ORDER,
        amt=amt,
        pay_type=pay_type,
        created_at=CREATED_AT,
        state=state,
        transfer_amt=transfer_amt,
    )


def notice_of(report: PaymentReport) -> Notice:
    return Notice(report=report, delivery_ids=("d-1", "d-2"), key_id="k-current")


def run(
    report: PaymentReport,
    answer: PaymentReport | None,
    record: OrderRecord | None,
    *,
    policy: RecordsPolicy = "required",
    requeries_done: int = 0,
) -> Decision:
    return decide(
        notice_of(report),
        QueryAnswer(report=answer, queried_at=QUERIED_AT),
        record,
        policy=policy,
        requeries_done=requeries_done,
        schedule=SCHEDULE,
    )


def outcome_of(decision: Decision) -> PaymentReconciled:
    assert isinstance(decision, PaymentReconciled), decision
    return decision


# --- every combination -------------------------------------------------------------------------

ANSWERS = ("confirms", "unpaid", "not_found", "differs")
RECORDS = ("equal", "different", "other_pay_type", "absent")
POLICIES: tuple[RecordsPolicy, ...] = ("required", "optional")
REQUERY_COUNTS = (0, LIMIT // 2, LIMIT)


@dataclass(frozen=True)
class Case:
    paid: bool
    repeat: bool
    transfer: bool
    answer: str
    record: str
    policy: RecordsPolicy
    requeries: int

    def inputs(self) -> tuple[PaymentReport, PaymentReport | None, OrderRecord | None]:
        service = TRANSFER_PAY_TYPE if self.transfer else QR_PAY_TYPE
        # A transfer's payer sends a slightly different sum on purpose; that alone is no mismatch.
        amt = ASKED + 37 if self.transfer else ASKED
        status = PaymentStatus.PAID if self.paid else PaymentStatus.UNPAID
        report = make_report(status=status, repeat=self.repeat, service=service, amt=amt)
        answer: PaymentReport | None = {
            "confirms": replace(report, status=PaymentStatus.PAID, success_at=PAID_AT),
            "unpaid": replace(report, status=PaymentStatus.UNPAID, success_at=None),
            "not_found": None,
            "differs": replace(report, status=PaymentStatus.PAID, amt=amt - 1000),
        }[self.answer]
        record = {
            "equal": make_record(pay_type=service),
            "different": make_record(amt=ASKED * 2, pay_type=service),
            # Created as the other kind: the record's rule applies, and the difference is named.
            "other_pay_type": make_record(
                pay_type=QR_PAY_TYPE if self.transfer else TRANSFER_PAY_TYPE
            ),
            "absent": None,
        }[self.record]
        return report, answer, record

    def expected(  # noqa: PLR0911 - a decision table reads best as one return per row
        self,
    ) -> type[NoOutcome | RequeryLater] | tuple[EventType, Reason | None]:
        """The decision table, written from the issue's outcome list."""
        if not self.paid:
            return NoOutcome
        if self.answer in {"unpaid", "not_found"}:
            if self.requeries < LIMIT:
                return RequeryLater
            if self.answer == "unpaid":
                return EventType.PAYMENT_UNCONFIRMED, Reason.PLATFORM_UNPAID
            return EventType.PAYMENT_UNCONFIRMED, Reason.PLATFORM_ORDER_NOT_FOUND
        if self.answer == "differs":
            return EventType.PAYMENT_AMOUNT_MISMATCHED, Reason.ANSWER_DIFFERS
        if self.record == "absent" and self.policy == "required":
            return EventType.PAYMENT_FOR_UNKNOWN_ORDER, Reason.NO_ORDER_RECORD
        if self.record == "different":
            return EventType.PAYMENT_AMOUNT_MISMATCHED, Reason.RECORD_AMOUNT_DIFFERS
        if self.record == "other_pay_type":
            return EventType.PAYMENT_AMOUNT_MISMATCHED, Reason.PAY_TYPE_DIFFERS
        return (EventType.PAYMENT_REPEATED if self.repeat else EventType.PAYMENT_SUCCEEDED), None


CASES = [
    Case(*values)
    for values in itertools.product(
        (True, False), (False, True), (False, True), ANSWERS, RECORDS, POLICIES, REQUERY_COUNTS
    )
]


@pytest.mark.parametrize("case", CASES, ids=lambda c: "-".join(map(str, vars(c).values())))
def test_every_combination_decides_as_the_table_says(case: Case) -> None:
    """Each combination of report, answer, record, policy and re-query count gets the outcome the
    issue's rules give it, with both order numbers and the decision's basis carried along."""
    report, answer, record = case.inputs()
    decision = run(report, answer, record, policy=case.policy, requeries_done=case.requeries)
    expected = case.expected()
    if expected is NoOutcome:
        assert decision == NoOutcome()
        return
    if expected is RequeryLater:
        assert decision == RequeryLater(delay=SCHEDULE[case.requeries], attempt=case.requeries + 1)
        return
    outcome = outcome_of(decision)
    assert (outcome.type, outcome.reason) == expected
    assert (outcome.mch_id, outcome.mch_order, outcome.origin_order) == (
        MCH_ID,
        report.mch_order,
        report.origin_order,
    )
    assert (outcome.amt, outcome.mch_amt, outcome.pay_type) == (
        report.amt,
        report.mch_amt,
        report.pay_type,
    )
    assert outcome.requeries == case.requeries
    assert outcome.delivery_ids == ("d-1", "d-2")
    assert outcome.key_id == "k-current"
    assert outcome.source == "notification"
    assert outcome.queried_at == QUERIED_AT
    assert outcome.late is False


def test_the_combinations_cover_every_payment_outcome() -> None:
    """The table reaches every payment outcome type and every reason, so none goes untested."""
    reached = {case.expected() for case in CASES}
    types = {item[0] for item in reached if isinstance(item, tuple)}
    reasons = {item[1] for item in reached if isinstance(item, tuple)} - {None}
    assert types == set(EventType) - {EventType.ORDER_EXPIRED}
    assert reasons == set(Reason) - {Reason.PAID_AMOUNT_DIFFERS}  # covered below, on its own
    assert {NoOutcome, RequeryLater} <= reached


# --- named cases -------------------------------------------------------------------------------


def test_an_unpaid_notification_has_no_outcome_whatever_the_platform_says() -> None:
    """Status 1 settles nothing, even when the platform's answer says paid."""
    report = make_report(status=PaymentStatus.UNPAID)
    confirmed = make_report()
    assert run(report, confirmed, make_record()) == NoOutcome()
    assert run(report, None, None, requeries_done=LIMIT) == NoOutcome()


def test_a_confirmed_payment_that_matches_the_record_succeeds() -> None:
    """Paid, confirmed, amounts agree with the record: succeeded, with no reason attached."""
    outcome = outcome_of(run(make_report(), make_report(), make_record()))
    assert outcome.type is EventType.PAYMENT_SUCCEEDED
    assert outcome.reason is None
    assert outcome.expected == ()
    assert outcome.answer is AnswerStatus.PAID
    assert outcome.paid_at == PAID_AT


def test_a_forged_notification_is_requeried_over_the_horizon_then_unconfirmed() -> None:
    """While the platform says unpaid, re-query on the schedule; only after the last re-query is
    the payment `unconfirmed`, and it never becomes a success."""
    report = make_report()
    unpaid = make_report(status=PaymentStatus.UNPAID)
    waited = 0.0
    for done in range(LIMIT):
        decision = run(report, unpaid, make_record(), requeries_done=done)
        assert decision == RequeryLater(delay=SCHEDULE[done], attempt=done + 1)
        waited += decision.delay
    assert waited == 2940  # the platform's retry horizon, about 49 minutes
    outcome = outcome_of(run(report, unpaid, make_record(), requeries_done=LIMIT))
    assert (outcome.type, outcome.reason) == (EventType.PAYMENT_UNCONFIRMED, Reason.PLATFORM_UNPAID)
    assert outcome.answer is AnswerStatus.UNPAID
    assert outcome.requeries == LIMIT


def test_an_order_the_platform_does_not_know_is_unconfirmed_after_the_requeries() -> None:
    """Answer code 103 on every query: unconfirmed, reason platform_order_not_found."""
    outcome = outcome_of(run(make_report(), None, make_record(), requeries_done=LIMIT))
    assert outcome.type is EventType.PAYMENT_UNCONFIRMED
    assert outcome.reason is Reason.PLATFORM_ORDER_NOT_FOUND
    assert outcome.answer is AnswerStatus.NOT_FOUND


def test_a_payment_the_platform_confirms_on_a_requery_succeeds() -> None:
    """A payment the platform's query lagged behind succeeds once a re-query confirms it."""
    outcome = outcome_of(run(make_report(), make_report(), make_record(), requeries_done=3))
    assert outcome.type is EventType.PAYMENT_SUCCEEDED
    assert outcome.requeries == 3


def test_an_empty_schedule_decides_unconfirmed_at_once() -> None:
    """With no re-queries configured, an unconfirmed payment is decided on the first answer."""
    decision = decide(
        notice_of(make_report()),
        QueryAnswer(report=None, queried_at=QUERIED_AT),
        make_record(),
        policy="required",
        requeries_done=0,
        schedule=(),
    )
    assert outcome_of(decision).type is EventType.PAYMENT_UNCONFIRMED


def test_a_repeat_payment_is_compared_with_the_origin_orders_record() -> None:
    """A repeat payment carries both order numbers and is checked against the origin's record."""
    report = make_report(repeat=True)
    assert record_order(report) == ORDER
    outcome = outcome_of(run(report, report, make_record()))
    assert outcome.type is EventType.PAYMENT_REPEATED
    assert (outcome.mch_order, outcome.origin_order) == (UPSTREAM_ORDER, ORDER)


def test_a_repeat_payment_with_another_amount_than_its_origin_is_a_mismatch() -> None:
    """The origin record's amount is the one a repeat payment's mch_amt must match."""
    report = make_report(repeat=True, mch_amt=ASKED + 1)
    outcome = outcome_of(run(report, report, make_record()))
    assert outcome.type is EventType.PAYMENT_AMOUNT_MISMATCHED
    assert outcome.reason is Reason.RECORD_AMOUNT_DIFFERS
    assert outcome.expected == (("mch_amt", ASKED),)
    assert outcome.origin_order == ORDER


def test_the_record_of_another_order_is_a_callers_mistake() -> None:
    """Passing the record of the repeat payment's own number, not its origin's, raises."""
    report = make_report(repeat=True)
    wrong = replace(make_record(), mch_order=UPSTREAM_ORDER)
    with pytest.raises(ValueError, match="record"):
        run(report, report, wrong)
    with pytest.raises(ValueError, match="record"):
        run(make_report(), make_report(), replace(make_record(), mch_id="someone-else"))


def test_a_transfer_succeeds_at_exactly_the_sum_it_was_asked_to_transfer() -> None:
    """Pay types 42, 43 and 44 ask the payer for an odd sum on purpose (the create-order answer's
    `amt`, kept in the record): that sum succeeds; one li less or more is a mismatch."""
    asked = ASKED + 37
    for pay_type in (42, 43, 44):
        record = make_record(pay_type=pay_type, transfer_amt=asked)
        paid = make_report(service=pay_type, amt=asked)
        assert outcome_of(run(paid, paid, record)).type is EventType.PAYMENT_SUCCEEDED
        for amt in (asked - 1, asked + 1, ASKED):
            report = make_report(service=pay_type, amt=amt)
            outcome = outcome_of(run(report, report, record))
            assert (outcome.type, outcome.reason) == (
                EventType.PAYMENT_AMOUNT_MISMATCHED,
                Reason.PAID_AMOUNT_DIFFERS,
            )
            assert outcome.expected == (("amt", asked),)


def test_an_underpaid_transfer_is_never_a_success() -> None:
    """Issue 10, hole 2: 1 li for an order of 100,000 li used to succeed. Without a recorded
    transfer sum a transfer must lie in [mch_amt, mch_amt + tolerance]."""
    for amt in (1, ASKED - 13, ASKED - 1, ASKED + DEFAULT_TRANSFER_TOLERANCE_LI + 1):
        report = make_report(service=TRANSFER_PAY_TYPE, amt=amt)
        outcome = outcome_of(run(report, report, make_record(pay_type=TRANSFER_PAY_TYPE)))
        assert outcome.reason is Reason.PAID_AMOUNT_DIFFERS, amt
        assert outcome.expected == (("amt", ASKED),)
    for amt in (ASKED, ASKED + 1, ASKED + DEFAULT_TRANSFER_TOLERANCE_LI):
        report = make_report(service=TRANSFER_PAY_TYPE, amt=amt)
        outcome = outcome_of(run(report, report, make_record(pay_type=TRANSFER_PAY_TYPE)))
        assert outcome.type is EventType.PAYMENT_SUCCEEDED, amt


def test_the_tolerance_is_a_setting() -> None:
    report = make_report(service=TRANSFER_PAY_TYPE, amt=ASKED + 500)
    record = make_record(pay_type=TRANSFER_PAY_TYPE)
    decided = [
        outcome_of(
            decide(
                notice_of(report), QueryAnswer(report, QUERIED_AT), record, policy="required",
                requeries_done=0, schedule=SCHEDULE, transfer_tolerance=tolerance,
            )
        ).type
        for tolerance in (499, 500)
    ]  # fmt: skip
    assert decided == [EventType.PAYMENT_AMOUNT_MISMATCHED, EventType.PAYMENT_SUCCEEDED]


def test_the_records_pay_type_decides_the_rule_not_the_reported_one() -> None:
    """An order created as WeChat QR (10) and reported as a bank transfer (44) does not skip the
    amount check: it is a mismatch naming the pay type, whatever amt says."""
    for amt in (ASKED, ASKED + 37, 1):
        report = make_report(service=TRANSFER_PAY_TYPE, amt=amt)
        outcome = outcome_of(run(report, report, make_record(pay_type=QR_PAY_TYPE)))
        assert (outcome.type, outcome.reason) == (
            EventType.PAYMENT_AMOUNT_MISMATCHED,
            Reason.PAY_TYPE_DIFFERS,
        )
        assert outcome.expected == (("pay_type", QR_PAY_TYPE),)


def test_a_notification_older_than_the_replay_window_is_stale() -> None:
    report = make_report()
    assert not is_stale(report, now=PAID_AT + 86_400, window=86_400)
    assert is_stale(report, now=PAID_AT + 86_400.5, window=86_400)
    assert not is_stale(make_report(status=PaymentStatus.UNPAID), now=PAID_AT * 2, window=1)


def test_another_sum_than_asked_is_a_mismatch_when_not_a_transfer() -> None:
    """Unless the pay type is a transfer, amt must equal mch_amt, even if the platform agrees."""
    report = make_report(amt=ASKED - 1)
    outcome = outcome_of(run(report, report, make_record()))
    assert outcome.type is EventType.PAYMENT_AMOUNT_MISMATCHED
    assert outcome.reason is Reason.PAID_AMOUNT_DIFFERS
    assert outcome.expected == (("amt", ASKED),)


@pytest.mark.parametrize(
    ("field", "value", "expected"),
    [
        ("amt", ASKED - 1, ("amt", ASKED - 1)),
        ("mch_amt", ASKED + 1, ("mch_amt", ASKED + 1)),
        ("pay_type", 20, ("pay_type", 20)),
        ("mch_id", "other-merchant", ("mch_id", "other-merchant")),
        ("amt_type", "usd", ("amt_type", "usd")),
        ("origin_order", "ORD-OTHER", ("origin_order", "ORD-OTHER")),
    ],
)
def test_a_report_that_differs_from_the_answer_is_a_mismatch(
    field: str, value: Any, expected: tuple[str, object]
) -> None:
    """Each compared field that differs from the platform's answer refuses the payment, and
    `expected` names the field (by its event name) with the platform's value."""
    answer = replace(make_report(), **{field: value})
    outcome = outcome_of(run(make_report(), answer, make_record()))
    assert outcome.type is EventType.PAYMENT_AMOUNT_MISMATCHED
    assert outcome.reason is Reason.ANSWER_DIFFERS
    assert outcome.expected == (expected,)


def test_a_transfer_whose_amount_differs_from_the_answer_is_a_mismatch() -> None:
    """A transfer may pay another sum than asked, but not another sum than the platform says."""
    report = make_report(service=TRANSFER_PAY_TYPE, amt=ASKED + 50)
    answer = replace(report, amt=ASKED + 5000)
    outcome = outcome_of(run(report, answer, make_record(pay_type=TRANSFER_PAY_TYPE)))
    assert outcome.reason is Reason.ANSWER_DIFFERS
    assert outcome.expected == (("amt", ASKED + 5000),)


def test_a_claimed_repeat_the_platform_calls_an_ordinary_payment_is_a_mismatch() -> None:
    """A report that claims an origin order the platform's answer does not have is refused."""
    report = make_report(repeat=True)
    answer = replace(report, origin_order=None)
    outcome = outcome_of(run(report, answer, make_record()))
    assert outcome.reason is Reason.ANSWER_DIFFERS
    assert outcome.expected == (("origin_order", None),)


def test_without_a_record_the_policy_decides() -> None:
    """No record: unknown_order when records are required, the platform's word when optional."""
    report = make_report()
    required = outcome_of(run(report, report, None, policy="required"))
    optional = outcome_of(run(report, report, None, policy="optional"))
    assert (required.type, required.reason) == (
        EventType.PAYMENT_FOR_UNKNOWN_ORDER,
        Reason.NO_ORDER_RECORD,
    )
    assert optional.type is EventType.PAYMENT_SUCCEEDED


def test_a_payment_after_expiry_is_settled_and_marked_late() -> None:
    """An order that expired and then turns out paid is settled as paid, flagged late."""
    record = make_record(state=OrderState.EXPIRED)
    outcome = outcome_of(run(make_report(), make_report(), record))
    assert outcome.type is EventType.PAYMENT_SUCCEEDED
    assert outcome.late is True


def test_a_query_sourced_report_is_decided_the_same_way() -> None:
    """A report found by the sweeper's query takes the same path and keeps its source."""
    decision = decide(
        Notice(report=make_report(), source="query"),
        QueryAnswer(report=make_report(), queried_at=QUERIED_AT),
        make_record(),
        policy="required",
        requeries_done=0,
        schedule=SCHEDULE,
    )
    outcome = outcome_of(decision)
    assert outcome.type is EventType.PAYMENT_SUCCEEDED
    assert outcome.source == "query"


def test_paid_at_comes_from_the_platforms_answer_when_it_confirms() -> None:
    """The platform's success_at is the payment time; the report's claim is only a fallback."""
    answer = replace(make_report(), success_at=PAID_AT + 5)
    assert outcome_of(run(make_report(), answer, make_record())).paid_at == PAID_AT + 5
    unconfirmed = outcome_of(run(make_report(), None, make_record(), requeries_done=LIMIT))
    assert unconfirmed.paid_at == PAID_AT


def test_caller_mistakes_raise() -> None:
    """An unknown policy, a negative re-query count or an unknown source is a programming error."""
    with pytest.raises(ValueError, match="policy"):
        run(make_report(), make_report(), make_record(), policy="sometimes")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="requeries_done"):
        run(make_report(), make_report(), make_record(), requeries_done=-1)
    with pytest.raises(ValueError, match="source"):
        Notice(report=make_report(), source="rumour")  # type: ignore[arg-type]


# --- schedule and catalog ----------------------------------------------------------------------


def test_the_requery_schedule_follows_the_platforms_retries_scaled() -> None:
    """Nine delays, the platform's own, 49 minutes in all; PAYNOTIFY_TIME_SCALE shrinks them."""
    assert requery_schedule(1.0) == tuple(float(d) for d in PLATFORM_RETRY_DELAYS)
    assert PLATFORM_RETRY_DELAYS == (0, 5, 10, 15, 30, 180, 300, 600, 1800)
    assert sum(requery_schedule(1.0)) == 2940
    assert sum(requery_schedule(0.01)) == pytest.approx(29.4)
    for bad in (0.0, -1.0, float("inf"), float("nan")):
        with pytest.raises(ValueError, match="time_scale"):
            requery_schedule(bad)


def test_transfer_pay_types_come_from_the_catalog() -> None:
    """The pay types allowed amt != mch_amt are exactly the catalog's transfers, 42 to 44."""
    assert frozenset({42, 43, 44}) == TRANSFER_PAY_TYPES
    assert {p.code for p in DOCUMENTED_PAY_TYPES if p.transfer} == TRANSFER_PAY_TYPES


# --- expiry ------------------------------------------------------------------------------------


def test_an_order_unpaid_at_expiry_expires() -> None:
    """Unpaid (or unknown to the platform) at expiry: order.expired with the record's facts."""
    record = make_record()
    unpaid = QueryAnswer(report=make_report(status=PaymentStatus.UNPAID), queried_at=QUERIED_AT)
    expired = decide_expiry(record, unpaid)
    assert expired == OrderExpired(
        mch_id=MCH_ID,
        mch_order=ORDER,
        pay_type=QR_PAY_TYPE,
        mch_amt=ASKED,
        created_at=CREATED_AT,
        queried_at=QUERIED_AT,
        answer=AnswerStatus.UNPAID,
    )
    unknown = decide_expiry(record, QueryAnswer(report=None, queried_at=QUERIED_AT))
    assert unknown is not None
    assert unknown.answer is AnswerStatus.NOT_FOUND


def test_an_order_paid_at_expiry_does_not_expire() -> None:
    """A paid answer at expiry is no expiry: the sweeper forwards it as a payment instead."""
    paid = QueryAnswer(report=make_report(), queried_at=QUERIED_AT)
    assert decide_expiry(make_record(), paid) is None


def test_expiry_with_an_answer_about_another_order_raises() -> None:
    """An answer for another order than the record is a caller's mistake."""
    answer = QueryAnswer(report=make_report(repeat=True), queried_at=QUERIED_AT)
    with pytest.raises(ValueError, match="another order"):
        decide_expiry(make_record(), answer)


def test_an_expiry_cannot_say_paid() -> None:
    """OrderExpired refuses a paid answer, so no code path can expire a paid order."""
    with pytest.raises(ValueError, match="paid"):
        OrderExpired(
            mch_id=MCH_ID,
            mch_order=ORDER,
            pay_type=QR_PAY_TYPE,
            mch_amt=ASKED,
            created_at=CREATED_AT,
            queried_at=QUERIED_AT,
            answer=AnswerStatus.PAID,
        )


# --- properties --------------------------------------------------------------------------------

PAY_TYPES = st.sampled_from([QR_PAY_TYPE, 20, *sorted(TRANSFER_PAY_TYPES)])
AMOUNTS = st.sampled_from([ASKED, ASKED + 1, ASKED - 1000, 1])  # few values: collisions matter
ORDERS = st.sampled_from([ORDER, "ORD-2"])


@st.composite
def reports(draw: st.DrawFn) -> PaymentReport:
    repeat = draw(st.booleans())
    status = draw(st.sampled_from(PaymentStatus))
    return PaymentReport(
        mch_id=draw(st.sampled_from([MCH_ID, "m2otherco"])),
        pay_type=draw(PAY_TYPES),
        mch_order=UPSTREAM_ORDER if repeat else draw(ORDERS),
        amt=draw(AMOUNTS),
        mch_amt=draw(AMOUNTS),
        amt_type=draw(st.sampled_from(["cny", "usd"])),
        status=status,
        created_at=CREATED_AT,
        success_at=draw(st.none() | st.just(PAID_AT)),
        origin_order=draw(ORDERS) if repeat else None,
        call=None,
        sign_type="md5",
    )


@st.composite
def scenarios(
    draw: st.DrawFn,
) -> tuple[PaymentReport, PaymentReport | None, OrderRecord | None, RecordsPolicy, int]:
    report = draw(reports())
    # The answer is often the report itself, so that agreeing cases are frequent.
    answer = draw(st.none() | st.just(report) | reports())
    record = draw(
        st.none()
        | st.builds(
            OrderRecord,
            mch_id=st.just(report.mch_id),
            mch_order=st.just(record_order(report)),
            amt=st.just(report.mch_amt) | AMOUNTS,
            pay_type=PAY_TYPES,
            created_at=st.just(CREATED_AT),
            state=st.sampled_from(OrderState),
        )
    )
    policy: RecordsPolicy = draw(st.sampled_from(POLICIES))
    return report, answer, record, policy, draw(st.integers(0, LIMIT + 2))


@given(scenarios())
def test_success_is_never_decided_unless_confirmed_and_amounts_agree(
    scenario: tuple[PaymentReport, PaymentReport | None, OrderRecord | None, RecordsPolicy, int],
) -> None:
    """succeeded or repeated only when: paid report, platform confirms paid with equal fields,
    the record (or, if optional, its absence) agrees with mch_amt, and amt == mch_amt unless
    the pay type is a transfer."""
    report, answer, record, policy, requeries = scenario
    decision = run(report, answer, record, policy=policy, requeries_done=requeries)
    if not (
        isinstance(decision, PaymentReconciled)
        and decision.type in {EventType.PAYMENT_SUCCEEDED, EventType.PAYMENT_REPEATED}
    ):
        return
    assert report.paid
    assert answer is not None
    assert answer.paid
    for field in ("mch_id", "mch_order", "origin_order", "pay_type", "amt", "mch_amt", "amt_type"):
        assert getattr(answer, field) == getattr(report, field)
    if record is None:
        assert policy == "optional"
    else:
        assert record.amt == report.mch_amt
        assert record.pay_type == report.pay_type
    if report.pay_type in TRANSFER_PAY_TYPES:  # never underpaid, never far above
        assert report.mch_amt <= report.amt <= report.mch_amt + DEFAULT_TRANSFER_TOLERANCE_LI
    else:
        assert report.amt == report.mch_amt
    assert (decision.type is EventType.PAYMENT_REPEATED) == report.repeat


@given(scenarios())
def test_an_unconfirmed_payment_is_requeried_or_refused_never_credited(
    scenario: tuple[PaymentReport, PaymentReport | None, OrderRecord | None, RecordsPolicy, int],
) -> None:
    """A paid report the platform does not confirm gets re-queries while the schedule lasts and
    then `unconfirmed`; nothing else."""
    report, answer, record, policy, requeries = scenario
    if not report.paid or (answer is not None and answer.paid):
        return
    decision = run(report, answer, record, policy=policy, requeries_done=requeries)
    if requeries < LIMIT:
        assert decision == RequeryLater(delay=SCHEDULE[requeries], attempt=requeries + 1)
    else:
        assert outcome_of(decision).type is EventType.PAYMENT_UNCONFIRMED


@given(scenarios(), st.lists(st.text(max_size=8), max_size=3), st.none() | st.text(max_size=8))
def test_the_basis_never_changes_what_is_decided(
    scenario: tuple[PaymentReport, PaymentReport | None, OrderRecord | None, RecordsPolicy, int],
    delivery_ids: list[str],
    key_id: str | None,
) -> None:
    """Delivery ids, key id, source and query time are recorded, never weighed: a redelivery
    decides the same outcome type and reason."""
    report, answer, record, policy, requeries = scenario
    first = run(report, answer, record, policy=policy, requeries_done=requeries)
    again = decide(
        Notice(report=report, source="query", delivery_ids=tuple(delivery_ids), key_id=key_id),
        QueryAnswer(report=answer, queried_at=QUERIED_AT + 999),
        record,
        policy=policy,
        requeries_done=requeries,
        schedule=SCHEDULE,
    )
    if isinstance(first, PaymentReconciled):
        assert isinstance(again, PaymentReconciled)
        assert (again.type, again.reason, again.expected) == (
            first.type,
            first.reason,
            first.expected,
        )
    else:
        assert again == first
