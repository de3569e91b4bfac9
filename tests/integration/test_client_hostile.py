"""The real platform client against a hostile platform on 127.0.0.1: every answer of the corpus
(`tests/data/hostile_answers.json`) is refused with its own `PlatformError`, never another
exception and never a paid report; and no redirect is ever followed.
"""

from __future__ import annotations

import random
import time
from dataclasses import replace
from typing import TYPE_CHECKING

import pytest

from shared.clock import SystemClock
from shared.merchants import Merchant, load_merchants
from shared.platform.client import ClientConfig, PlatformClient
from shared.platform.retry import RetryPolicy
from shared.protocol.errors import MalformedAnswer, PlatformError
from shared.protocol.models import CreateOrderRequest
from tests.conftest import TEST_MCH_ID
from tests.support.hostile_answers import (
    HOSTILE_ORDER,
    HostileAnswer,
    HostilePlatform,
    load_hostile_answers,
)

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Mapping
    from pathlib import Path

pytestmark = pytest.mark.integration

CORPUS = load_hostile_answers()


@pytest.fixture(scope="module")
def merchants(merchants_file: Path) -> Mapping[str, Merchant]:
    return load_merchants(merchants_file)


@pytest.fixture(scope="module")
async def platform() -> AsyncIterator[HostilePlatform]:
    async with HostilePlatform() as hostile:
        yield hostile


def client_for(base_url: str, merchants: Mapping[str, Merchant]) -> PlatformClient:
    """The client as workers build it: one try per call, the default answer limit."""
    config = ClientConfig(base_url=base_url + "/", timeout=10.0, retry=RetryPolicy(retries=0))
    return PlatformClient.open(config, merchants, clock=SystemClock(), random=random.random)


def test_the_corpus_is_large_and_varied() -> None:
    """At least 25 cases, and every kind of refusal the client has is among them."""
    assert len(CORPUS) >= 25
    expected = {case.expected_error.__name__ for case in CORPUS}
    assert {"MalformedAnswer", "AnswerSignatureError", "PlatformUnavailable"} <= expected


@pytest.mark.parametrize("case", CORPUS, ids=[case.name for case in CORPUS])
async def test_hostile_answer_is_refused(
    case: HostileAnswer, platform: HostilePlatform, merchants: Mapping[str, Merchant]
) -> None:
    """query_order raises exactly the case's PlatformError subclass, for the case's reason; the
    message quotes neither the request's sign nor a redirect's Location."""
    platform.answer = case
    platform.requests.clear()
    async with client_for(platform.base_url, merchants) as client:
        with pytest.raises(PlatformError) as caught:
            await client.query_order(TEST_MCH_ID, HOSTILE_ORDER)
    message = str(caught.value)
    assert type(caught.value) is case.expected_error, message
    assert case.says in message
    assert len(platform.requests) == 1
    assert "127.0.0.1:9" not in message
    assert platform.requests[0]["sign"] not in message


@pytest.mark.parametrize("status", [301, 302, 303, 307, 308])
async def test_redirects_are_not_followed(status: int, merchants: Mapping[str, Merchant]) -> None:
    """A redirect to another host is refused; the other host receives nothing, not even when it
    would answer a genuine paid report."""
    redirected = next(case for case in CORPUS if case.name == "redirect_308_with_paid_report")
    genuine = replace(redirected, status=200, headers=())  # a plain, genuine paid report
    async with HostilePlatform(genuine) as elsewhere, HostilePlatform() as platform:
        location = f"{elsewhere.base_url}/api/fetch_order.api"
        platform.answer = HostileAnswer(
            name=f"redirect_{status}", why="", status=status, headers=(("Location", location),),
            expected_error=MalformedAnswer, says="", chunked=False, build_body=lambda *_: b"",
        )  # fmt: skip
        async with client_for(platform.base_url, merchants) as client:
            with pytest.raises(MalformedAnswer) as caught:
                await client.query_order(TEST_MCH_ID, HOSTILE_ORDER)
            with pytest.raises(MalformedAnswer):
                await client.create_order(
                    CreateOrderRequest(
                        pay_type=10, mch_id=TEST_MCH_ID, mch_order=HOSTILE_ORDER, amt=12_340,
                        remark="hostile", created_at=int(time.time()), client_ip="127.0.0.1",
                        notify_url="http://127.0.0.1:9/notify",
                    )
                )  # fmt: skip
    assert len(platform.requests) == 2
    assert elsewhere.requests == []
    assert f"HTTP {status}" in str(caught.value)
    assert elsewhere.base_url.rsplit(":", 1)[1] not in str(caught.value)
