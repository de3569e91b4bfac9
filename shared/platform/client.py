"""The platform's HTTP API, as an async client (adapter).

One shared aiohttp `ClientSession` (connection limits, timeouts) carries every call. Requests are
POSTed form-urlencoded and signed with the merchant's current key; answers are decoded, their
signatures verified where the platform signs them, and a code other than 1 raises the named error
from `shared.protocol.errors`. Redirects are never followed (they would re-send a signed form to
another host): a 3xx answer is a `MalformedAnswer`. Transient failures are retried with capped
exponential backoff and jitter; `Clock` and the random source are injected so tests need not sleep.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol, Self, TypeAlias, TypeVar
from urllib.parse import quote_plus

import aiohttp
from aiohttp.payload import BytesPayload
from yarl import URL

from shared.logs import get_logger
from shared.platform.retry import RetryPolicy
from shared.protocol.catalog import PayTypeCatalog
from shared.protocol.errors import (
    MalformedAnswer,
    ParameterCheckFailed,
    PlatformError,
    PlatformUnavailable,
    UnknownMerchant,
    UnroutablePayType,
    error_for,
)
from shared.protocol.models import (
    Answer,
    CreateOrderAnswer,
    CreateOrderRequest,
    OrderQueryAnswer,
    OrderQueryRequest,
    QuickPayConfirmAnswer,
    QuickPayConfirmRequest,
    ReportAnswer,
    decode_answer,
    parse_create_order_answer,
    parse_report_answer,
    verify_answer,
)
from shared.protocol.signing import SIGN_FIELD, signed

if TYPE_CHECKING:
    from collections.abc import Callable, Mapping
    from types import TracebackType

    from shared.clock import Clock
    from shared.merchants import Merchant

QUICK_CONFIRM_PATH = "api/v1/quick_confirm.api"
ORDER_QUERY_PATH = "api/fetch_order.api"  # sic: no v1/
MAX_ANSWER_BYTES = 1 << 20
_RETRY_STATUSES = frozenset({429, 502, 503, 504})
FORM_CONTENT_TYPE = "application/x-www-form-urlencoded"

_A = TypeVar("_A", bound=ReportAnswer)


class OrderRecorder(Protocol):
    """Where create_order notes an order before sending it, and a refusal after (the order book)."""

    async def record_pending(self, request: CreateOrderRequest) -> None: ...

    async def mark_failed(self, mch_id: str, mch_order: str, reason: str) -> None: ...

    async def record_transfer_amount(self, mch_id: str, mch_order: str, amt: int) -> None: ...


@dataclass(frozen=True, slots=True)
class ClientConfig:
    base_url: str  # the sandbox by default (Settings); never the production host in tests
    pay_types: PayTypeCatalog = field(default_factory=PayTypeCatalog.documented)
    timeout: float = 10.0  # seconds for one attempt, connect to last byte
    answer_sign_includes_envelope: bool = False
    retry: RetryPolicy = field(default_factory=RetryPolicy)
    max_answer_bytes: int = MAX_ANSWER_BYTES

    def __post_init__(self) -> None:
        url = URL(self.base_url)
        if url.scheme not in {"http", "https"} or not url.host:
            raise ValueError("the platform URL must be an absolute http(s) URL")
        if not self.timeout > 0:
            raise ValueError("the platform timeout must be positive")

    def url(self, path: str) -> str:
        return f"{self.base_url.rstrip('/')}/{path.lstrip('/')}"


def open_session(*, limit: int = 100, limit_per_host: int = 100) -> aiohttp.ClientSession:
    """The one session a process shares for platform calls (call inside the running loop)."""
    return aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=limit, limit_per_host=limit_per_host),
        raise_for_status=False,
    )


# Told of every attempt: (endpoint, result, seconds); result is the answer code ("1": success,
# "113", ...), or the failure's class without one ("PlatformUnavailable", "MalformedAnswer").
CallObserver: TypeAlias = "Callable[[str, str, float], None]"


class PlatformClient:
    """Typed calls to the platform for the merchants whose keys it holds."""

    def __init__(
        self,
        session: aiohttp.ClientSession,
        config: ClientConfig,
        merchants: Mapping[str, Merchant],
        *,
        clock: Clock,
        random: Callable[[], float],
        owns_session: bool = False,
        observe: CallObserver | None = None,
    ) -> None:
        self._session = session
        self._observe = observe
        self._config = config
        self._merchants = merchants
        self._clock = clock
        self._random = random
        self._owns_session = owns_session
        self._log = get_logger("platform.client")
        # Prepared once: each endpoint's URL, parsed, and the per-attempt deadline.
        self._urls: dict[str, URL] = {}
        self._timeout = aiohttp.ClientTimeout(total=config.timeout)

    @classmethod
    def open(
        cls,
        config: ClientConfig,
        merchants: Mapping[str, Merchant],
        *,
        clock: Clock,
        random: Callable[[], float],
        limit: int = 100,
        observe: CallObserver | None = None,
    ) -> Self:
        """A client with its own session, closed by `close()` / `async with`."""
        session = open_session(limit=limit, limit_per_host=limit)
        return cls(
            session, config, merchants, clock=clock, random=random, owns_session=True,
            observe=observe,
        )  # fmt: skip

    async def close(self) -> None:
        if self._owns_session:
            await self._session.close()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    # --- the platform's endpoints -----------------------------------------------------------

    async def create_order(
        self, request: CreateOrderRequest, *, recorder: OrderRecorder | None = None
    ) -> CreateOrderAnswer:
        """创建订单. With a `recorder`, the order is recorded as pending before it is sent and
        marked failed if the platform refuses it (an answer code, after any retries). A transport
        failure or an unverifiable answer leaves it pending: the order may exist at the platform.
        """
        merchant = self._merchant(request.mch_id)
        path = self._config.pay_types.get(request.pay_type).path
        if path is None:
            raise UnroutablePayType(request.pay_type)
        if recorder is not None:
            await recorder.record_pending(request)
        try:
            answer = await self._call("create_order", path, request.form(), merchant)
            if SIGN_FIELD in answer.raw:  # the document shows none; verify if one comes
                verify_answer(
                    answer,
                    merchant.keys,
                    include_envelope=self._config.answer_sign_includes_envelope,
                )
            result = parse_create_order_answer(answer)
        except PlatformError as exc:
            if recorder is not None and exc.code:
                await recorder.mark_failed(request.mch_id, request.mch_order, exc.reason)
            raise
        if (result.mch_id, result.mch_order) != (request.mch_id, request.mch_order):
            raise MalformedAnswer("the answer is about another order")
        if recorder is not None and result.amt is not None and self._is_transfer(request.pay_type):
            # The odd sum the payer is asked to transfer: the only one that settles the order.
            await recorder.record_transfer_amount(request.mch_id, request.mch_order, result.amt)
        return result

    async def confirm_quick_pay(
        self, mch_id: str, mch_order: str, sms_code: str
    ) -> QuickPayConfirmAnswer:
        """快捷支付确认下单: confirm a quick-pay pre-order with the payer's SMS code."""
        request = QuickPayConfirmRequest(
            mch_id=mch_id, mch_order=mch_order, code=sms_code, created_at=self._now()
        )
        return await self._report_call(
            QuickPayConfirmAnswer, "confirm_quick_pay", QUICK_CONFIRM_PATH, request.form()
        )

    async def query_order(self, mch_id: str, mch_order: str) -> OrderQueryAnswer:
        """订单查询: the platform's view of one order, signature verified."""
        request = OrderQueryRequest(mch_id=mch_id, mch_order=mch_order, created_at=self._now())
        return await self._report_call(
            OrderQueryAnswer, "query_order", ORDER_QUERY_PATH, request.form()
        )

    # --- plumbing ---------------------------------------------------------------------------

    def _is_transfer(self, pay_type: int) -> bool:
        return self._config.pay_types.get(pay_type).transfer

    def _now(self) -> int:
        return int(self._clock.time())

    def _merchant(self, mch_id: str) -> Merchant:
        try:
            return self._merchants[mch_id]
        except KeyError:
            raise UnknownMerchant(mch_id) from None

    async def _report_call(
        self, kind: type[_A], endpoint: str, path: str, form: dict[str, str]
    ) -> _A:
        merchant = self._merchant(form["mch_id"])
        answer = await self._call(endpoint, path, form, merchant)
        result = parse_report_answer(
            kind,
            answer,
            merchant.keys,
            self._config.pay_types,
            include_envelope=self._config.answer_sign_includes_envelope,
        )
        report = result.report
        # A repeat payment is reported under the upstream order number, naming ours as origin.
        if report.mch_id != form["mch_id"] or form["mch_order"] not in {
            report.mch_order,
            report.origin_order,
        }:
            raise MalformedAnswer("the answer is about another order")
        return result

    async def _call(
        self, endpoint: str, path: str, form: dict[str, str], merchant: Merchant
    ) -> Answer:
        """POST the signed form; retry transient failures; return a success answer or raise.
        Signed with the merchant's first key; a `101` (signature refused) is tried again with
        each further key once, so that a key rotation (docs/operations.md) never fails a call
        whichever key the platform holds at that moment."""
        keys = iter(merchant.keys)
        body = signed(form, next(keys))
        url = self._urls.get(path)
        if url is None:
            url = self._urls[path] = URL(self._config.url(path))
        policy = self._config.retry
        bound = self._log.bind(
            endpoint=endpoint, mch_id=merchant.mch_id, mch_order=form.get("mch_order")
        )
        retry = 0
        while True:
            began = self._clock.monotonic()
            try:
                try:
                    answer = await self._attempt(url, body)
                    if not answer.ok:
                        raise error_for(answer.code, answer.msg)
                except PlatformError as exc:
                    self._observed(
                        endpoint, began, str(exc.code) if exc.code else type(exc).__name__
                    )
                    raise
                self._observed(endpoint, began, "1")
            except PlatformError as exc:
                if isinstance(exc, ParameterCheckFailed) and (key := next(keys, None)):
                    bound.info("platform_signature_refused", next_key_id=key.key_id)
                    body = signed(form, key)
                    continue
                if not exc.transient or retry >= policy.retries:
                    # An answer like 103 is routine for callers; giving up on a transient is not.
                    report = bound.warning if exc.transient else bound.info
                    report(
                        "platform_call_failed", error=type(exc).__name__, code=exc.code,
                        attempts=retry + 1,
                    )  # fmt: skip
                    raise
                delay = policy.backoff(retry, self._random)
                bound.info(
                    "platform_call_retrying", error=type(exc).__name__, code=exc.code,
                    attempt=retry + 1, delay=round(delay, 3),
                )  # fmt: skip
                await self._clock.sleep(delay)
                retry += 1
            else:
                bound.debug("platform_call_ok", attempts=retry + 1)
                return answer

    def _observed(self, endpoint: str, began: float, result: str) -> None:
        if self._observe is not None:
            self._observe(endpoint, result, self._clock.monotonic() - began)

    async def _attempt(self, url: URL, body: dict[str, str]) -> Answer:
        try:
            # A redirect would re-send the signed form to wherever it points: never followed.
            async with self._session.post(
                url, data=form_payload(body), timeout=self._timeout, allow_redirects=False
            ) as response:
                status = response.status
                if 300 <= status < 400:
                    # The Location is not named: it is the platform's (or an attacker's) text.
                    raise MalformedAnswer(
                        f"the platform answered HTTP {status} (3xx: redirects are not followed)"
                    )
                payload = await self._read(response)
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise PlatformUnavailable(
                f"no answer from the platform: {type(exc).__name__}"
            ) from None
        try:
            return decode_answer(payload)
        except MalformedAnswer:
            if status >= 500 or status in _RETRY_STATUSES:
                raise PlatformUnavailable(f"the platform answered HTTP {status}") from None
            raise

    async def _read(self, response: aiohttp.ClientResponse) -> bytes:
        limit = self._config.max_answer_bytes
        if response.content_length is not None and response.content_length > limit:
            raise MalformedAnswer("the answer is too large")
        chunks: list[bytes] = []
        size = 0
        async for chunk in response.content.iter_chunked(64 * 1024):
            size += len(chunk)
            if size > limit:
                raise MalformedAnswer("the answer is too large")
            chunks.append(chunk)
        return b"".join(chunks)


def form_payload(body: Mapping[str, str]) -> BytesPayload:
    """The signed form as the request's body: the bytes and Content-Type aiohttp's `FormData`
    makes of a dict (urlencoded, UTF-8), without building a FormData per request."""
    return BytesPayload(encode_form(body), content_type=FORM_CONTENT_TYPE)


def encode_form(body: Mapping[str, str]) -> bytes:
    """`urlencode(list(body.items()), doseq=True, encoding="utf-8")` as bytes, byte for byte."""
    return "&".join(f"{_quoted(name)}={_quoted(value)}" for name, value in body.items()).encode()


# What `quote_plus` leaves as it is: letters, digits and `_.-~` (most of a signed form's values).
_UNQUOTED = re.compile(r"[A-Za-z0-9_.~-]*")


def _quoted(text: str) -> str:
    """`quote_plus(text)` as `urlencode(..., doseq=True, encoding="utf-8")` applies it to each
    name and value, skipping the call for text it would return unchanged."""
    return text if _UNQUOTED.fullmatch(text) else quote_plus(text, encoding="utf-8")


__all__ = [
    "ORDER_QUERY_PATH",
    "QUICK_CONFIRM_PATH",
    "ClientConfig",
    "OrderRecorder",
    "PlatformClient",
    "RetryPolicy",
    "open_session",
]
