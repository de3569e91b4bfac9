"""The sandbox's ledger of payments (`GET /_sandbox/payments`) and its `body` fault (a raw,
possibly malformed answer), without HTTP: the platform core with a scheduler that records."""

from __future__ import annotations

import random
from typing import TYPE_CHECKING

import pytest

from devtools.sandbox.core import SandboxPlatform
from devtools.sandbox.model import ControlError, Fault, Order, SandboxConfig, Scenario
from shared.clock import ManualClock
from shared.merchants import Merchant
from shared.protocol.signing import MerchantKey

if TYPE_CHECKING:
    from collections.abc import Callable

    from devtools.sandbox.delivery import Notification

pytestmark = pytest.mark.unit

MCH = "t9awtvk6dn"


class Recorder:
    def __init__(self) -> None:
        self.delivered: list[Notification] = []

    def deliver(self, notification: Notification) -> None:
        self.delivered.append(notification)

    def call_later(self, seconds: float, callback: Callable[[], None]) -> None:
        """Orders here are paid through `pay`, never by a timer."""


def platform() -> SandboxPlatform:
    merchant = Merchant(MCH, (MerchantKey.from_secret("25e72d96d0ffe0bb74373344d986df3c"),))
    core = SandboxPlatform(
        SandboxConfig(), {MCH: merchant}, clock=ManualClock(1_700_000_000), rng=random.Random(3)
    )
    core.attach(Recorder())
    return core


def add(core: SandboxPlatform, number: str, scenario: Scenario) -> None:
    core.add_order(
        Order(
            mch_id=MCH, mch_order=number, pay_type=10, mch_amt=1000,
            notify_url="http://127.0.0.1:1/notify", call=None, created_at=1_700_000_000,
            scenario=scenario,
        )
    )  # fmt: skip


def test_the_ledger_lists_every_payment_in_order_with_repeats() -> None:
    """Paid orders and repeat payments (under their own number, naming the origin) are listed
    once each, in payment order; unpaid orders are not; paging resumes after `since`."""
    core = platform()
    add(core, "A", Scenario(repeat_payments=1))
    add(core, "B", Scenario(paid_amt=900))
    add(core, "C", Scenario())
    core.pay((MCH, "B"))
    core.pay((MCH, "A"))
    ledger = core.ledger(0, 100)
    assert [p["seq"] for p in ledger] == [1, 2, 3]
    assert [p["mch_order"] for p in ledger[:2]] == ["B", "A"]
    assert ledger[0]["amt"] == 900
    assert ledger[2]["origin_order"] == "A"
    assert ledger[2]["mch_order"].startswith("UP")
    assert all(p["status"] == "paid" for p in ledger)
    assert [p["seq"] for p in core.ledger(2, 100)] == [3]
    assert core.ledger(3, 100) == []


def test_a_body_fault_answers_its_text_as_is() -> None:
    """The next query gets the fault's body, unsigned and unparsed; the one after is normal."""
    core = platform()
    add(core, "A", Scenario())
    hostile = '{"code":1,"msg":"ok","amt":1e999999999}'
    core.faults.append(Fault.from_json({"endpoint": "query", "body": hostile}))
    first = core.handle("query", {}, pay_type=None, base_url="http://127.0.0.1")
    assert first.body == hostile.encode()
    second = core.handle("query", {}, pay_type=None, base_url="http://127.0.0.1")
    assert second.body is None


@pytest.mark.parametrize("body", [5, ["x"], "x" * (4 * 1024 * 1024 + 1)])
def test_a_body_fault_must_be_text_of_bounded_size(body: object) -> None:
    with pytest.raises(ControlError, match="body"):
        Fault.from_json({"endpoint": "query", "body": body})
