"""The platform client's prepared request (shared.platform.client: a parsed URL per endpoint, one
ClientTimeout, the form encoded by `form_payload`) sends the very bytes aiohttp sends for the
same signed form given as a dict (its FormData path): request line, headers and body. Loopback
sockets only."""

from __future__ import annotations

import asyncio
import contextlib
import random
from urllib.parse import urlencode

import aiohttp
from hypothesis import given, settings
from hypothesis import strategies as st
from yarl import URL

from shared.clock import ManualClock
from shared.merchants import parse_merchants
from shared.platform.client import (
    ORDER_QUERY_PATH,
    ClientConfig,
    PlatformClient,
    encode_form,
    form_payload,
)
from shared.platform.retry import RetryPolicy
from shared.protocol.errors import PlatformError
from shared.protocol.models import OrderQueryRequest
from shared.protocol.signing import signed
from tests.conftest import TEST_KEY, TEST_MCH_ID

FORM = {
    "mch_id": "100001",
    "mch_order": "ord-1 &=+/?#%中文",
    "created_at": "1700000000",
    "note": "a b\tc\n~!*'()",
}


class _Capture:
    """Answers every request with a fixed body and keeps the raw request bytes."""

    def __init__(self) -> None:
        self.requests: list[bytes] = []

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await reader.readuntil(b"\r\n\r\n")
        length = next(
            int(line.split(b":", 1)[1])
            for line in head.split(b"\r\n")
            if line.lower().startswith(b"content-length:")
        )
        self.requests.append(head + await reader.readexactly(length))
        answer = b'{"code":1}'
        writer.write(
            b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: "
            + str(len(answer)).encode()
            + b"\r\nConnection: close\r\n\r\n"
            + answer
        )
        await writer.drain()
        writer.close()


async def _serve() -> tuple[_Capture, asyncio.Server, str]:
    capture = _Capture()
    server = await asyncio.start_server(capture.handle, "127.0.0.1", 0)
    return capture, server, f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}"


async def test_form_payload_is_what_aiohttp_sends_for_the_dict() -> None:
    capture, server, base = await _serve()
    try:
        async with aiohttp.ClientSession() as session:
            url = f"{base}/api/fetch_order.api"
            async with session.post(url, data=dict(FORM)) as answer:
                await answer.read()
            async with session.post(URL(url), data=form_payload(FORM)) as answer:
                await answer.read()
    finally:
        server.close()
        await server.wait_closed()
    via_dict, prepared = capture.requests
    assert prepared == via_dict
    assert b"Content-Type: application/x-www-form-urlencoded\r\n" in prepared


async def test_the_client_sends_the_signed_form_as_aiohttp_would() -> None:
    merchants = parse_merchants({"merchants": {TEST_MCH_ID: {"keys": [TEST_KEY]}}})
    capture, server, base = await _serve()
    try:
        client = PlatformClient.open(
            ClientConfig(base_url=base, retry=RetryPolicy(retries=0)),
            merchants,
            clock=ManualClock(1_700_000_000.0),
            random=random.random,
        )
        async with client:
            for _ in range(2):  # the second call goes through the prepared URL
                # The answer is no report (MalformedAnswer): only the request is checked here.
                with contextlib.suppress(PlatformError):
                    await client.query_order(TEST_MCH_ID, "ord-1")
        request = OrderQueryRequest(mch_id=TEST_MCH_ID, mch_order="ord-1", created_at=1_700_000_000)
        form = signed(request.form(), merchants[TEST_MCH_ID].keys[0])
        async with (
            aiohttp.ClientSession() as session,
            session.post(f"{base}/{ORDER_QUERY_PATH}", data=form, allow_redirects=False) as answer,
        ):
            await answer.read()
    finally:
        server.close()
        await server.wait_closed()
    first, second, reference = capture.requests
    assert first == second == reference


@settings(max_examples=500, deadline=None)
@given(st.dictionaries(st.text(max_size=12), st.text(max_size=40), max_size=8))
def test_form_payload_encodes_any_form_as_urlencode_does(form: dict[str, str]) -> None:
    """The fast path (text quote_plus would leave as is, not quoted) changes no byte: any
    names and values, letters, digits, `_.-~`, spaces, reserved and non-ASCII characters."""
    expected = urlencode(list(form.items()), doseq=True, encoding="utf-8").encode()
    assert encode_form(form) == expected
