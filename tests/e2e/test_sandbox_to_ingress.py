"""The sandbox platform delivering to the real ingress process, on a broker of the module's own.

- Orders paid in the sandbox are acked on the first try, and their envelopes are on the topic.
- The sandbox's forged notification (wrong key, inflated amount) is refused and published nowhere.
- A notification signed with a key the ingress does not hold - a forgery, as far as the ingress
  can tell - is refused on every try, and the sandbox keeps retrying it on the documented
  schedule until it gives up. (The sandbox's own forger delivers once and never retries, so this
  half uses a second ingress that holds another key for the merchant.)

Time runs at the pipeline's scale of 0.001: the 49-minute schedule takes about 3 s.
"""

from __future__ import annotations

import asyncio
import uuid
from typing import TYPE_CHECKING, Any

import aiohttp
import pytest
from aiokafka import AIOKafkaConsumer

from devtools.stack.local import free_port
from devtools.stack.pipeline import ServiceProcess, wait_for_http
from shared import topics
from shared.adapters.kafka import CallbackEnvelope

if TYPE_CHECKING:
    from collections.abc import Iterator

    from devtools.stack.pipeline import Pipeline

pytestmark = pytest.mark.e2e

MCH = "t9awtvk6dn"  # in the session's merchants file, which the sandbox and the ingress share
SCHEDULE = (0, 5, 15, 30, 60, 240, 540, 1140, 2940)  # documented offsets of the nine tries
TIME_SCALE = 0.001  # the pipeline fixture's PAYNOTIFY_TIME_SCALE
WAIT = 60.0


@pytest.fixture(scope="module")
def ingress(pipeline: Pipeline) -> str:
    """The real ingress process of the pipeline; its notify URL."""
    pipeline.start_ingress()
    return pipeline.notify_url


@pytest.fixture(scope="module")
def ingress_with_other_key(
    pipeline: Pipeline, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[str]:
    """A second ingress process whose merchants file holds a different key for MCH."""
    home = tmp_path_factory.mktemp("other-key-ingress")
    merchants = home / "merchants.toml"
    merchants.write_text(f'[merchants.{MCH}]\nkeys = ["{uuid.uuid4().hex}"]\n')
    port = free_port()
    process = ServiceProcess(
        "ingress-other-key",
        ["-m", "ingress", "--port", str(port)],
        {**pipeline.env, "PAYNOTIFY_MERCHANTS_FILE": str(merchants)},
        home / "ingress.log",
    ).start()
    try:
        wait_for_http(f"http://127.0.0.1:{port}/readyz", process=process)
        yield f"http://127.0.0.1:{port}/notify"
    finally:
        process.stop()
        print(f"----- ingress-other-key (tail)\n{process.tail(1500)}")  # noqa: T201


async def control(pipeline: Pipeline, method: str, path: str, body: Any = None) -> Any:
    async with (
        aiohttp.ClientSession() as session,
        session.request(method, f"{pipeline.sandbox_url}/_sandbox/{path}", json=body) as answer,
    ):
        payload = await answer.json()
        assert answer.status < 300, (method, path, answer.status, payload)
        return payload


async def create_orders(pipeline: Pipeline, notify_url: str, count: int) -> list[str]:
    names = [f"e2e-{uuid.uuid4().hex[:12]}" for _ in range(count)]
    orders = [
        {"mch_id": MCH, "mch_order": name, "amt": 12_340, "pay_type": 10,
         "notify_url": notify_url, "scenario": {"pay_after": "never"}}
        for name in names
    ]  # fmt: skip
    await control(pipeline, "POST", "orders", {"orders": orders})
    return names


async def settled(pipeline: Pipeline, name: str, kind: str) -> dict[str, Any]:
    """Poll the sandbox until the order's notification of `kind` is no longer pending."""
    async with asyncio.timeout(WAIT):
        while True:
            view = await control(pipeline, "GET", f"order?mch_id={MCH}&mch_order={name}")
            notes = [n for n in view["notifications"] if n["kind"] == kind]
            if notes and all(n["state"] != "pending" for n in notes):
                return view
            await asyncio.sleep(0.05)


async def callbacks_for(bootstrap: str, names: set[str], *, settle: float) -> dict[str, list[Any]]:
    """Every callbacks record for the given orders, read from the topic's start until all
    expected ones are there and `settle` seconds have passed without the set changing."""
    consumer = AIOKafkaConsumer(
        topics.CALLBACKS, bootstrap_servers=bootstrap, group_id=None, auto_offset_reset="earliest"
    )
    await consumer.start()
    found: dict[str, list[Any]] = {}
    try:
        loop = asyncio.get_running_loop()
        quiet_since = loop.time()
        async with asyncio.timeout(WAIT):
            while loop.time() - quiet_since < settle:
                batch = await consumer.getmany(timeout_ms=200)
                for records in batch.values():
                    for record in records:
                        order = record.key.decode().partition(":")[2]
                        if order in names:
                            found.setdefault(order, []).append(record)
                            quiet_since = loop.time()
    finally:
        await consumer.stop()
    return found


async def test_paid_orders_are_acked_on_the_first_try(
    pipeline: Pipeline, ingress: str, module_kafka: str
) -> None:
    """Twenty orders paid at once: each notification is answered `success` on its first try,
    and each order's envelope is on paynotify.callbacks exactly once."""
    names = await create_orders(pipeline, ingress, 20)
    await control(
        pipeline, "POST", "pay", {"orders": [{"mch_id": MCH, "mch_order": n} for n in names]}
    )
    for name in names:
        view = await settled(pipeline, name, "notify")
        (note,) = view["notifications"]
        assert (note["state"], note["attempts"]) == ("delivered", 1), view
        (delivery,) = view["deliveries"]
        assert (delivery["attempt"], delivery["outcome"], delivery["http_status"]) == (
            1, "success", 200,
        )  # fmt: skip
        assert delivery["answer"] == "success"
    found = await callbacks_for(module_kafka, set(names), settle=1.0)
    assert set(found) == set(names)
    for name, records in found.items():
        (record,) = records
        envelope = CallbackEnvelope.decode(record.value)
        assert envelope.fields["mch_order"] == name
        assert envelope.fields["amt"] == "12340"
        assert envelope.source == "notification"


async def test_sandbox_forgery_is_refused_and_not_published(
    pipeline: Pipeline, ingress: str, module_kafka: str
) -> None:
    """The sandbox's forger (wrong key, ten times the amount) gets 401 `fail`; the order's genuine
    notification is still acked on its first try; only the genuine report is on the topic."""
    (name,) = await create_orders(pipeline, ingress, 1)
    await control(pipeline, "POST", "scenarios", {"mch_id": MCH, "mch_order": name,
                                                  "forge_notification": True})  # fmt: skip
    await control(pipeline, "POST", "pay", {"mch_id": MCH, "mch_order": name})
    await settled(pipeline, name, "notify")
    view = await settled(pipeline, name, "forged")
    by_kind = {d["kind"]: d for d in view["deliveries"]}
    assert (by_kind["forged"]["outcome"], by_kind["forged"]["http_status"]) == ("fail", 401)
    assert by_kind["forged"]["answer"] == "fail"
    assert (by_kind["notify"]["attempt"], by_kind["notify"]["outcome"]) == (1, "success")
    records = (await callbacks_for(module_kafka, {name}, settle=1.0))[name]
    assert [CallbackEnvelope.decode(r.value).fields["amt"] for r in records] == ["12340"]


async def test_refused_notification_is_retried_on_the_documented_schedule(
    pipeline: Pipeline, ingress_with_other_key: str, module_kafka: str
) -> None:
    """Signed with a key the ingress does not hold, the notification is refused (401 `fail`)
    on each of the nine tries; the sandbox retries at the documented offsets (scaled) and then
    gives up; nothing of it reaches paynotify.callbacks."""
    (name,) = await create_orders(pipeline, ingress_with_other_key, 1)
    await control(pipeline, "POST", "pay", {"mch_id": MCH, "mch_order": name})
    view = await settled(pipeline, name, "notify")
    (note,) = view["notifications"]
    assert (note["state"], note["attempts"]) == ("exhausted", 9), view
    tries = sorted(view["deliveries"], key=lambda d: d["attempt"])
    assert [d["attempt"] for d in tries] == list(range(1, 10))
    assert {(d["outcome"], d["http_status"], d["answer"]) for d in tries} == {("fail", 401, "fail")}
    assert [d["scheduled_offset"] for d in tries] == list(SCHEDULE)
    for delivery in tries:
        due = delivery["scheduled_offset"] * TIME_SCALE
        assert due - 0.001 <= delivery["offset"] <= due + 1.0, delivery
    assert name not in await callbacks_for(module_kafka, {name}, settle=1.0)
