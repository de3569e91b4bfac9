"""The order query's contract (shared.ports.OrderQuery), on the platform's client against the
sandbox platform (`PlatformClient`, every answer verified) and on the scripted fake the use
cases' unit tests use (`ScriptedPlatform`): an order it never saw is `OrderNotFound`, a created
order is unpaid until paid, and an answer carries its report and the signed fields that the
sweeper forwards."""

from __future__ import annotations

import random
import time
import uuid
from dataclasses import dataclass
from typing import TYPE_CHECKING

import aiohttp
import pytest
from aiohttp import web

from devtools.sandbox.model import SandboxConfig
from devtools.sandbox.server import build_app
from shared.clock import SystemClock
from shared.merchants import load_merchants
from shared.platform.client import ClientConfig, PlatformClient
from shared.platform.retry import RetryPolicy
from shared.protocol.catalog import PayTypeCatalog
from shared.protocol.errors import OrderNotFound
from shared.protocol.models import CreateOrderRequest
from shared.protocol.payment import PaymentReport, PaymentStatus
from tests.conftest import TEST_MCH_ID
from tests.support.fakes import ScriptedPlatform

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Awaitable, Callable
    from pathlib import Path

    from shared.ports import OrderQuery

AMOUNT = 12_340


@dataclass
class Backend:
    query: OrderQuery
    create: Callable[[str], Awaitable[None]]  # an order, unpaid
    pay: Callable[[str], Awaitable[None]]


@pytest.fixture(
    params=[
        pytest.param("memory", marks=pytest.mark.unit),
        pytest.param("sandbox", marks=pytest.mark.integration),
    ]
)
def kind(request: pytest.FixtureRequest) -> str:
    return str(request.param)


def _report(mch_order: str, status: PaymentStatus) -> PaymentReport:
    now = int(time.time())
    return PaymentReport(
        mch_id=TEST_MCH_ID, pay_type=10, mch_order=mch_order, amt=AMOUNT, mch_amt=AMOUNT,
        amt_type="cny", status=status, created_at=now,
        success_at=now if status is PaymentStatus.PAID else None, origin_order=None, call=None,
        sign_type="md5",
    )  # fmt: skip


@pytest.fixture
async def backend(kind: str, merchants_file: Path) -> AsyncIterator[Backend]:
    if kind == "memory":
        fake = ScriptedPlatform()

        async def create(mch_order: str) -> None:
            fake.answers[mch_order] = _report(mch_order, PaymentStatus.UNPAID)

        async def pay(mch_order: str) -> None:
            fake.answers[mch_order] = _report(mch_order, PaymentStatus.PAID)

        yield Backend(fake, create, pay)
        return
    merchants = load_merchants(merchants_file)
    app = build_app(SandboxConfig(), merchants, clock=SystemClock(), rng=random.Random(7))
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    try:
        await web.TCPSite(runner, "127.0.0.1", 0).start()
    except BaseException:
        await runner.cleanup()
        raise
    host, port = runner.addresses[0][:2]
    base = f"http://{host}:{port}"
    config = ClientConfig(
        base_url=base + "/",
        pay_types=PayTypeCatalog.documented(),
        timeout=5.0,
        retry=RetryPolicy(retries=0),
    )
    client = PlatformClient.open(
        config, merchants, clock=SystemClock(), random=random.Random(3).random
    )

    async def create_order(mch_order: str) -> None:
        await client.create_order(
            CreateOrderRequest(
                pay_type=10, mch_id=TEST_MCH_ID, mch_order=mch_order, amt=AMOUNT,
                remark="contract", created_at=int(time.time()), client_ip="127.0.0.1",
                notify_url="http://127.0.0.1:9/notify",  # nothing listens: no notification lands
            )
        )  # fmt: skip

    async def pay_order(mch_order: str) -> None:
        async with (
            aiohttp.ClientSession() as control,
            control.post(
                f"{base}/_sandbox/pay", json={"mch_id": TEST_MCH_ID, "mch_order": mch_order}
            ) as answer,
        ):
            assert answer.status == 200, await answer.text()

    try:
        yield Backend(client, create_order, pay_order)
    finally:
        await client.close()
        await runner.cleanup()


def _order() -> str:
    return f"Q{uuid.uuid4().hex[:16]}"


async def test_an_order_never_created_is_not_found(backend: Backend) -> None:
    with pytest.raises(OrderNotFound):
        await backend.query.query_order(TEST_MCH_ID, _order())


async def test_a_created_order_is_unpaid_until_paid(backend: Backend) -> None:
    order = _order()
    await backend.create(order)
    before = await backend.query.query_order(TEST_MCH_ID, order)
    assert (before.report.mch_order, before.report.status) == (order, PaymentStatus.UNPAID)
    assert before.report.success_at is None
    await backend.pay(order)
    after = await backend.query.query_order(TEST_MCH_ID, order)
    assert after.report.paid
    assert (after.report.amt, after.report.mch_amt) == (AMOUNT, AMOUNT)


async def test_an_answer_carries_the_signed_fields_the_sweeper_forwards(
    backend: Backend,
) -> None:
    order = _order()
    await backend.create(order)
    await backend.pay(order)
    answer = await backend.query.query_order(TEST_MCH_ID, order)
    for name in ("mch_id", "mch_order", "amt", "mch_amt", "status", "service", "sign"):
        assert name in answer.raw, name
    assert answer.raw["mch_order"] == order
    assert answer.key_id
