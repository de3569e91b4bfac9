"""The whole pipeline, as processes: sandbox platform -> ingress -> Kafka -> two workers ->
events, with the mess a real platform makes. Every payment ends with exactly one outcome of the
expected type; no forged notification succeeds; no two events disagree for one payment."""

from __future__ import annotations

import asyncio
import uuid
from collections import defaultdict
from dataclasses import dataclass, field

import orjson
import pytest
from aiokafka import AIOKafkaConsumer

from shared import topics
from shared.adapters.order_book import OrderBook
from shared.clock import SystemClock
from shared.domain.orders import OrderRecord
from tests.conftest import TEST_MCH_ID
from tests.support.pipeline_checks import collect_events, control, one_outcome_each
from tests.support.redis_db import open_redis

pytestmark = pytest.mark.e2e

PLAIN_PAY_TYPES = (1, 2, 10, 11, 12, 20, 22, 30, 40, 60)
TRANSFER_PAY_TYPES = (42, 43, 44)


async def dead_letters(bootstrap: str, wanted: set[str], deadline: float) -> dict[str, dict]:
    consumer = AIOKafkaConsumer(
        topics.DLQ, bootstrap_servers=bootstrap, group_id=None, auto_offset_reset="earliest"
    )
    await consumer.start()
    found: dict[str, dict] = {}
    try:
        async with asyncio.timeout(deadline):
            while not wanted <= found.keys():
                batch = await consumer.getmany(timeout_ms=250)
                for records in batch.values():
                    for record in records:
                        letter = orjson.loads(record.value)
                        order = letter.get("payload", {}).get("fields", {}).get("mch_order")
                        found[f"{TEST_MCH_ID}:{order}"] = letter
    finally:
        await consumer.stop()
    return found


SUCCEEDED = "paynotify.payment.succeeded"
MISMATCH = "paynotify.payment.amount_mismatch"


@dataclass
class Day:
    """The orders of one messy day and the outcome each payment must end with."""

    notify_url: str
    orders: list[dict] = field(default_factory=list)
    records: dict[str, int] = field(default_factory=dict)  # mch_order -> amount in our book
    # mch_order -> the sum a transfer was asked to pay, as create_order records it in the book
    transfer_sums: dict[str, int] = field(default_factory=dict)
    expected: dict[str, str] = field(default_factory=dict)  # subject -> outcome type
    groups: dict[str, list[str]] = field(default_factory=lambda: defaultdict(list))

    def add(self, group: str, pay_type: int, outcome: str, *, record_delta: int | None = 0,
            underpaid_by: int = 0, **scenario: object) -> None:  # fmt: skip
        order = f"e{uuid.uuid4().hex[:14]}"
        amt = 1000 + len(self.orders)
        if "paid_amt" in scenario:
            # A transfer asks for a slightly different sum; the payer may send less than that.
            self.transfer_sums[order] = amt - 3
            scenario["paid_amt"] = amt - 3 - underpaid_by
        self.orders.append(
            {"mch_id": TEST_MCH_ID, "mch_order": order, "amt": amt, "pay_type": pay_type,
             "notify_url": self.notify_url, "scenario": scenario}
        )  # fmt: skip
        if record_delta is not None:
            self.records[order] = amt + record_delta
        if outcome:
            self.expected[f"{TEST_MCH_ID}:{order}"] = outcome
        self.groups[group].append(order)

    @classmethod
    def messy(cls, notify_url: str) -> Day:
        day = cls(notify_url)
        for i in range(120):
            day.add("plain", PLAIN_PAY_TYPES[i % len(PLAIN_PAY_TYPES)], SUCCEEDED,
                    duplicates=2 if i % 4 == 0 else 0,
                    concurrent_duplicates=2 if i % 7 == 0 else 0)  # fmt: skip
        for i in range(20):
            day.add("repeat", PLAIN_PAY_TYPES[i % 3], SUCCEEDED, repeat_payments=1)
        for i in range(24):
            day.add("transfer", TRANSFER_PAY_TYPES[i % 3], SUCCEEDED, paid_amt=0)
        for i in range(6):  # issue 10, hole 2: an underpaid transfer is never a success
            day.add("underpaid_transfer", TRANSFER_PAY_TYPES[i % 3], MISMATCH,
                    paid_amt=0, underpaid_by=1 + 100 * i)  # fmt: skip
        for _ in range(15):
            day.add("forged_too", 10, SUCCEEDED, forge_notification=True)
        for _ in range(15):
            day.add("mismatch", 20, "paynotify.payment.amount_mismatch", record_delta=7)
        for _ in range(10):
            day.add("unknown", 10, "paynotify.payment.unknown_order", record_delta=None)
        for _ in range(5):
            day.add("forged_answers", 10, "", forge_answers=True)
        for _ in range(10):
            day.add("unpaid_forged", 10, "")
        return day

    def subjects(self, group: str) -> set[str]:
        return {f"{TEST_MCH_ID}:{order}" for order in self.groups[group]}


async def play(base: str, day: Day, book: OrderBook) -> None:
    """Record the orders, create them at the sandbox, pay all but the unpaid, forge the rest."""
    for order, amount in day.records.items():
        pay_type = next(o["pay_type"] for o in day.orders if o["mch_order"] == order)
        asked = day.transfer_sums.get(order)
        await book.record_pending(
            OrderRecord(TEST_MCH_ID, order, amount, pay_type, 1, transfer_amt=asked)
        )
    await control(base, "POST", "orders", {"orders": day.orders})
    unpaid = set(day.groups["unpaid_forged"])
    paying = [o["mch_order"] for o in day.orders if o["mch_order"] not in unpaid]
    await control(base, "POST", "pay", {"orders": [order_ref(o) for o in paying]})
    for order in unpaid:
        await control(base, "POST", "forge", order_ref(order))
    for order in day.groups["repeat"]:
        detail = await control(base, "GET", f"order?mch_id={TEST_MCH_ID}&mch_order={order}")
        for note in detail["notifications"]:
            if note["kind"] == "repeat":
                day.expected[f"{TEST_MCH_ID}:{note['mch_order']}"] = "paynotify.payment.repeated"


def order_ref(order: str) -> dict[str, str]:
    return {"mch_id": TEST_MCH_ID, "mch_order": order}


async def test_a_messy_day_settles_every_payment_once(pipeline, module_kafka, module_redis) -> None:
    """A few hundred orders with duplicates, concurrent duplicates, repeat payments, transfer
    amounts, forged notifications, forged answers, amount mismatches, unknown orders and query
    errors: each payment gets the one outcome its facts call for."""
    pipeline.start_ingress()
    for index in range(2):
        pipeline.start_worker(index)
    base = pipeline.sandbox_url
    await control(base, "PUT", "chaos", {"query_error_rate": 0.15, "query_error_code": 113})
    redis = open_redis(module_redis)
    book = OrderBook(redis, SystemClock())
    day = Day.messy(pipeline.notify_url)
    try:
        await play(base, day, book)
        events = await collect_events(module_kafka, set(day.expected), deadline=150)
        outcomes = one_outcome_each(events)
        missing = set(day.expected) - outcomes.keys()
        assert not missing, f"{len(missing)} payments without an outcome: {sorted(missing)[:3]}"
        wrong = {s: (outcomes[s], t) for s, t in day.expected.items() if outcomes[s] != t}
        assert not wrong, f"unexpected outcomes: {list(wrong.items())[:5]}"
        # A forgery never becomes a payment: only-forged orders and forged answers decide nothing.
        assert not (day.subjects("unpaid_forged") | day.subjects("forged_answers")) & set(outcomes)
        for subject, found in events.items():
            for event in found:
                assert "sign" not in event["data"]
                assert subject == f"{event['data']['mch_id']}:{event['data']['mch_order']}"
        # Forged answers are retried over the horizon, then dead-lettered with the reason.
        letters = await dead_letters(module_kafka, day.subjects("forged_answers"), deadline=60)
        assert {letters[s]["reason"] for s in day.subjects("forged_answers")} == {
            "retries_exhausted"
        }
        await check_deliveries(base)
        for order in day.groups["plain"] + day.groups["transfer"]:
            record = await book.get(TEST_MCH_ID, order)
            assert record is not None
            assert record.state == "settled"
    finally:
        await redis.aclose()


async def check_deliveries(base: str) -> None:
    """Every forged delivery was refused with 401; every genuine notification ended in success."""
    deliveries = await all_deliveries(base)
    forged = [d for d in deliveries if d["kind"] == "forged"]
    assert len(forged) >= 25
    assert {(d["outcome"], d["http_status"]) for d in forged} == {("fail", 401)}
    genuine = {d["mch_order"] for d in deliveries if d["kind"] in {"notify", "repeat"}}
    delivered = {
        d["mch_order"]
        for d in deliveries
        if d["kind"] in {"notify", "repeat"} and d["outcome"] == "success"
    }
    assert genuine == delivered


async def all_deliveries(base: str) -> list[dict]:
    found: list[dict] = []
    since = 0
    while True:
        page = await control(base, "GET", f"deliveries?since={since}&limit=1000")
        found.extend(page["deliveries"])
        if not page["deliveries"]:
            return found
        since = page["next"]
