"""The sandbox's pure parts: the retry offsets, scenario/fault parsing, and its answers."""

from __future__ import annotations

import pytest

from devtools.sandbox.answers import created_answer, report_answer
from devtools.sandbox.model import (
    NEVER,
    NOTIFY_INTERVALS,
    Chaos,
    ControlError,
    Fault,
    Order,
    Scenario,
    cumulative_offsets,
)
from shared.protocol.models import decode_answer, encode_answer, verify_answer
from shared.protocol.payment import PaymentStatus
from shared.protocol.signing import MerchantKey

pytestmark = pytest.mark.unit

KEY = MerchantKey.from_secret("25e72d96d0ffe0bb74373344d986df3c")


def order(**changes: object) -> Order:
    fields: dict[str, object] = {
        "mch_id": "m", "mch_order": "o1", "pay_type": 10, "mch_amt": 1000,
        "notify_url": "http://127.0.0.1/n", "call": None, "created_at": 1_700_000_000,
        "scenario": Scenario(),
    }  # fmt: skip
    fields.update(changes)
    return Order(**fields)  # type: ignore[arg-type]


def test_documented_schedule_offsets() -> None:
    """Nine tries, 0/5/10/15/30/180/300/600/1800 s apart: the last at 2940 s (49 minutes)."""
    offsets = cumulative_offsets(NOTIFY_INTERVALS)
    assert offsets == (0, 5, 15, 30, 60, 240, 540, 1140, 2940)


def test_scenario_json_round_trip() -> None:
    """A scenario parses from the control API's JSON and renders back the same."""
    data = {"pay_after": "never", "paid_amt": 990, "transfer_amt": 995, "repeat_payments": 1,
            "duplicates": 2, "concurrent_duplicates": 1, "drop_attempts": 3,
            "forge_notification": True, "forge_answers": False}  # fmt: skip
    scenario = Scenario.from_json(data)
    assert scenario.pay_after == NEVER
    assert scenario.to_json() == data


@pytest.mark.parametrize(
    "data",
    [{"colour": "red"}, {"duplicates": -1}, {"duplicates": True}, {"paid_amt": 0},
     {"pay_after": "soon"}, {"forge_answers": "yes"}],
)  # fmt: skip
def test_bad_scenarios_are_refused(data: dict[str, object]) -> None:
    """Unknown fields and wrongly typed values are a 400, never silently ignored."""
    with pytest.raises(ControlError):
        Scenario.from_json(data)


def test_faults_and_chaos_are_validated() -> None:
    """Faults name a known endpoint and a real HTTP status; chaos rates stay within 0..1."""
    assert Fault.from_json({"endpoint": "query", "code": 113}).code == 113
    for bad in ({"endpoint": "pay"}, {"http_status": 99}, {"code": "113"}, {"delay": -1}):
        with pytest.raises(ControlError):
            Fault.from_json(bad)
    with pytest.raises(ControlError):
        Chaos.from_json({"query_error_rate": 1.5})


def test_report_answer_verifies_with_the_client_rules() -> None:
    """The sandbox's signed answer verifies under the client's reading, in both envelope modes."""
    paid = order(status=PaymentStatus.PAID, amt=1000, success_at=1_700_000_005)
    for envelope in (False, True):
        answer = decode_answer(encode_answer(report_answer(paid, 1_700_000_009, KEY,
                                                           include_envelope=envelope)))  # fmt: skip
        assert verify_answer(answer, [KEY], include_envelope=envelope) == KEY
        assert answer.raw["success_at"] == "1700000005"
        assert answer.raw["origin_order"] == ""


def test_transfer_answer_carries_the_memo_as_a_second_code() -> None:
    """A bank-transfer create answer repeats `code` for the memo, after the status."""
    transfer = order(pay_type=44, scenario=Scenario(paid_amt=997))
    answer = decode_answer(encode_answer(created_answer(transfer, "http://x/checkout")))
    assert answer.code == 1
    assert len(answer.values_of("code")) == 2
    assert (answer.raw["op_amt"], answer.raw["amt"]) == ("1000", "997")
