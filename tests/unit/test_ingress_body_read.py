"""The ingress reads a body that is already buffered without a timer, and keeps the body
deadline for one still arriving (a trickling client is cut off, not waited for)."""

from __future__ import annotations

import asyncio
from typing import Any
from unittest import mock

import pytest
from aiohttp import streams
from aiohttp.test_utils import make_mocked_request

from ingress import app
from ingress.app import Ingress
from ingress.counters import IngressCounters
from ingress.refusals import Reason, Refusal
from ingress.verification import Verifier
from shared.clock import ManualClock
from shared.logs import get_logger
from shared.settings import Settings

pytestmark = pytest.mark.unit

BODY = b"mch_id=m1&mch_order=o1"


def _ingress(body_timeout: float) -> Ingress:
    settings = Settings(ingress_body_timeout=body_timeout)
    return Ingress(
        settings, Verifier({}, frozenset()), ManualClock(0.0), IngressCounters(), get_logger("t")
    )


def _request(body: bytes, *, complete: bool) -> Any:
    payload = streams.StreamReader(
        mock.Mock(_reading_paused=False), 2**16, loop=asyncio.get_running_loop()
    )
    payload.feed_data(body)
    if complete:
        payload.feed_eof()
    headers = {"Content-Type": "application/x-www-form-urlencoded"}
    return make_mocked_request("POST", "/notify", headers=headers, payload=payload)


async def test_a_buffered_body_is_read_without_a_timer(monkeypatch: pytest.MonkeyPatch) -> None:
    """The whole body is there: parsed as usual, and no asyncio.timeout is armed for it."""

    def no_timer(_: float) -> Any:
        raise AssertionError("no timer expected for a buffered body")

    monkeypatch.setattr(app.asyncio, "timeout", no_timer)
    form = await _ingress(5.0)._read_form(_request(BODY, complete=True))
    assert form == {"mch_id": "m1", "mch_order": "o1"}


async def test_a_body_still_arriving_keeps_its_deadline() -> None:
    """Part of the body, no end: refused `body_timeout` once the deadline passes."""
    form = await _ingress(0.05)._read_form(_request(BODY, complete=False))
    assert isinstance(form, Refusal)
    assert form.reason is Reason.BODY_TIMEOUT
