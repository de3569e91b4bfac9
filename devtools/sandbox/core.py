"""The sandbox platform's behaviour, without HTTP: orders in memory, the document's answer codes,
payments, notifications, scenarios, faults, and the records the control API reads.

Handlers in `routes` turn requests into calls here and `Reply` values into responses; side
effects that take time (payment after a delay, delivering notifications) go through the injected
`Scheduler` (the delivery engine). Time and randomness are injected.
"""

from __future__ import annotations

import bisect
from collections import Counter, deque
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any, Protocol, TypeVar
from urllib.parse import urlencode

from devtools.sandbox.answers import Pair, created_answer, error_answer, report_answer
from devtools.sandbox.delivery import Notification
from devtools.sandbox.model import (
    NEVER,
    Chaos,
    ControlError,
    DeliveryAttempt,
    Fault,
    Order,
    OrderKey,
    Scenario,
)
from shared.logs import get_logger
from shared.protocol.catalog import ANSWER_CODES, ANSWER_OK
from shared.protocol.fields import FieldError
from shared.protocol.models import (
    CreateOrderRequest,
    OrderQueryRequest,
    QuickPayConfirmRequest,
)
from shared.protocol.payment import PaymentStatus, report_fields
from shared.protocol.signing import SIGN_FIELD, SignatureError, signed, verify

if TYPE_CHECKING:
    import random
    from collections.abc import Callable, Iterable, Mapping

    from devtools.sandbox.delivery import TryResult
    from devtools.sandbox.model import DeliveryKind, SandboxConfig
    from shared.clock import Clock
    from shared.merchants import Merchant

_T = TypeVar("_T")
QUICK_PAY_TYPES = frozenset({3, 4, 5, 6})
_REQUIRED = {
    "create": ("sign_type", "mch_id", "mch_order", "amt", "remark", "created_at", "client_ip",
               "notify_url", "sign"),
    "confirm": ("mch_id", "mch_order", "code", "created_at", "sign_type", "sign"),
    "query": ("mch_id", "mch_order", "created_at", "sign_type", "sign"),
}  # fmt: skip


class Scheduler(Protocol):
    def deliver(self, notification: Notification) -> None: ...

    def call_later(self, seconds: float, callback: Callable[[], None]) -> None: ...


@dataclass(frozen=True, slots=True)
class Reply:
    """What to answer one platform API call."""

    code: int
    pairs: tuple[Pair, ...] = ()  # a JSON object's members, in order (names may repeat)
    http_status: int = 200  # not 200: answer this status with a plain text body instead
    delay: float = 0.0  # real seconds to wait before answering
    body: bytes | None = None  # answer these bytes as they are, instead of `pairs`


@dataclass(frozen=True, slots=True)
class NotificationStatus:
    id: int
    kind: DeliveryKind
    mch_id: str
    mch_order: str
    origin_order: str | None
    state: str  # "pending", "delivered", "exhausted"
    attempts: int

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id, "kind": self.kind, "mch_order": self.mch_order,
            "origin_order": self.origin_order, "state": self.state, "attempts": self.attempts,
        }  # fmt: skip


class _Refused(Exception):  # noqa: N818 - control flow inside this module, never escapes
    def __init__(self, code: int, msg: str | None = None) -> None:
        super().__init__(code)
        self.code = code
        self.msg = msg or ANSWER_CODES.get(code, "error")


def _error(code: int, msg: str | None = None) -> Reply:
    return Reply(code, error_answer(code, msg))


class SandboxPlatform:
    def __init__(
        self,
        config: SandboxConfig,
        merchants: Mapping[str, Merchant],
        *,
        clock: Clock,
        rng: random.Random,
    ) -> None:
        self.config = config
        self._merchants = merchants
        self._clock = clock
        self._rng = rng
        self._scheduler: Scheduler | None = None
        self._log = get_logger("sandbox")
        self.reset()

    def attach(self, scheduler: Scheduler) -> None:
        self._scheduler = scheduler

    def reset(self) -> None:
        """Forget every order, record, scenario and fault (deliveries are cancelled by the app)."""
        self.orders: dict[OrderKey, Order] = {}
        self.scenarios: dict[OrderKey, Scenario] = {}
        self.defaults = Scenario()
        self.chaos = Chaos()
        self.faults: deque[Fault] = deque()
        self.notifications: dict[int, NotificationStatus] = {}
        self.payments: list[OrderKey] = []  # the ledger: every payment, in the order made
        self._by_order: dict[OrderKey, list[int]] = {}  # notification ids, repeats included
        self._attempts: list[DeliveryAttempt] = []
        self._attempts_by_notification: dict[int, list[DeliveryAttempt]] = {}
        self._calls: deque[dict[str, Any]] = deque(maxlen=self.config.max_records)
        self._seq = 0
        self._next_notification = 0
        self.counters: Counter[str] = Counter()

    # --- the platform's API ---------------------------------------------------------------

    def handle(
        self, endpoint: str, form: Mapping[str, str] | None, *, pay_type: int | None, base_url: str
    ) -> Reply:
        """Answer one POSTed call; `form` None means the body was not a usable form."""
        fault = self._take_fault(endpoint)
        delay = fault.delay if fault else 0.0
        if endpoint == "query":
            delay += self.chaos.query_latency
        if fault and fault.http_status is not None and fault.http_status != 200:
            reply = Reply(0, http_status=fault.http_status, delay=delay)
        elif fault and fault.body is not None:
            reply = Reply(0, body=fault.body.encode(), delay=delay)
        elif fault and fault.code is not None:
            reply = replace(_error(fault.code), delay=delay)
        elif endpoint == "query" and self._rng.random() < self.chaos.query_error_rate:
            reply = replace(_error(self.chaos.query_error_code), delay=delay)
        else:
            forge = bool(fault and fault.forge_sign)
            try:
                reply = self._dispatch(endpoint, form, pay_type, base_url, forge=forge)
            except _Refused as refusal:
                reply = _error(refusal.code, refusal.msg)
            reply = replace(reply, delay=delay)
        self._note_call(endpoint, form, reply)
        return reply

    def refuse(self, endpoint: str, code: int, form: Mapping[str, str] | None = None) -> Reply:
        """A call refused before dispatch (wrong method 111, unknown API 113), recorded too."""
        reply = _error(code)
        self._note_call(endpoint, form, reply)
        return reply

    def _dispatch(
        self,
        endpoint: str,
        form: Mapping[str, str] | None,
        pay_type: int | None,
        base_url: str,
        *,
        forge: bool,
    ) -> Reply:
        if form is None:
            raise _Refused(101, "the body is not a UTF-8 urlencoded form")
        missing = [name for name in _REQUIRED[endpoint] if form.get(name, "") == ""]
        if missing:
            raise _Refused(100, f"missing {missing[0]}")
        merchant = self._merchants.get(form["mch_id"])
        if merchant is None:
            raise _Refused(102)
        try:
            verify(form, merchant.keys)
        except SignatureError as exc:
            raise _Refused(101, f"sign check failed: {exc.reason}") from None
        if endpoint == "create":
            if pay_type is None:
                raise _Refused(113)
            return self._create(pay_type, form, base_url)
        if endpoint == "confirm":
            return self._confirm(form, merchant, forge=forge)
        return self._query(form, merchant, forge=forge)

    def _create(self, pay_type: int, form: Mapping[str, str], base_url: str) -> Reply:
        request = _parse(lambda: CreateOrderRequest.from_form(pay_type, form))
        key = (request.mch_id, request.mch_order)
        existing = self.orders.get(key)
        if existing is not None:
            same = (existing.pay_type, existing.mch_amt, existing.notify_url) == (
                pay_type, request.amt, request.notify_url,
            )  # fmt: skip
            if not same:
                raise _Refused(101, "mch_order already used for another order")
            return self._created(existing, base_url)
        order = self.add_order(
            Order(
                mch_id=request.mch_id,
                mch_order=request.mch_order,
                pay_type=pay_type,
                mch_amt=request.amt,
                notify_url=request.notify_url,
                call=request.call,
                created_at=self._now(),
                scenario=self.scenarios.pop(key, self.defaults),
            )
        )
        return self._created(order, base_url)

    def _confirm(self, form: Mapping[str, str], merchant: Merchant, *, forge: bool) -> Reply:
        request = _parse(lambda: QuickPayConfirmRequest.from_form(form))
        order = self._order((request.mch_id, request.mch_order))
        if order.pay_type not in QUICK_PAY_TYPES:
            raise _Refused(110, "not a quick-pay order")
        if order.status is PaymentStatus.UNPAID:
            order = self.pay(order.key)
        return self._report_reply(order, merchant, forge=forge)

    def _query(self, form: Mapping[str, str], merchant: Merchant, *, forge: bool) -> Reply:
        request = _parse(lambda: OrderQueryRequest.from_form(form))
        order = self._order((request.mch_id, request.mch_order))
        return self._report_reply(order, merchant, forge=forge)

    def _order(self, key: OrderKey) -> Order:
        order = self.orders.get(key)
        if order is None:
            raise _Refused(103)
        return order

    def _created(self, order: Order, base_url: str) -> Reply:
        checkout = f"{base_url}/_sandbox/checkout?" + urlencode(
            {"mch_id": order.mch_id, "mch_order": order.mch_order}
        )
        return Reply(ANSWER_OK, created_answer(order, checkout))

    def _report_reply(self, order: Order, merchant: Merchant, *, forge: bool) -> Reply:
        forge = forge or order.scenario.forge_answers
        key = self._forged_key() if forge else merchant.signing_key
        return Reply(
            ANSWER_OK,
            report_answer(
                order, self._now(), key,
                include_envelope=self.config.answer_sign_includes_envelope,
            ),
        )  # fmt: skip

    # --- payments and notifications --------------------------------------------------------

    def add_order(self, order: Order) -> Order:
        if order.key in self.orders:
            raise ControlError("the order exists already", status=409)
        if order.mch_id not in self._merchants:
            raise ControlError("unknown merchant", status=404)
        self.orders[order.key] = order
        self.counters["orders"] += 1
        delay = order.scenario.pay_after
        delay = self.config.pay_after if delay is None else delay
        if delay != NEVER and self._scheduler is not None:
            key = order.key
            self._scheduler.call_later(self.config.scaled(delay), lambda: self._auto_pay(key))
        return order

    def _auto_pay(self, key: OrderKey) -> None:
        order = self.orders.get(key)
        if order is not None and order.status is PaymentStatus.UNPAID:
            self.pay(key)

    def pay(self, key: OrderKey, paid_amt: int | None = None) -> Order:
        """Mark the order paid and start its notifications (and the scenario's extras)."""
        order = self.orders.get(key)
        if order is None:
            raise ControlError("no such order", status=404)
        if order.status is PaymentStatus.PAID:
            raise ControlError("the order is paid already", status=409)
        now = self._now()
        amount = paid_amt or order.scenario.paid_amt or order.mch_amt
        order = replace(order, status=PaymentStatus.PAID, amt=amount, success_at=now)
        self.orders[key] = order
        self.payments.append(key)
        self.counters["paid"] += 1
        self._log.debug("order_paid", mch_id=order.mch_id, mch_order=order.mch_order)
        scenario = order.scenario
        if scenario.forge_notification:
            self.forge(key, {"amt": str(amount * 10)})
        self._notify(order, "notify", scenario)
        for number in range(1, scenario.repeat_payments + 1):
            upstream = replace(
                order,
                mch_order=f"UP{now}{self._rng.randrange(10**6):06d}{number}",
                origin_order=order.mch_order,
                scenario=Scenario(),
            )
            self.orders[upstream.key] = upstream
            self.payments.append(upstream.key)
            self.counters["repeat_payments"] += 1
            self._notify(upstream, "repeat", Scenario(), origin_key=key)
        return order

    def forge(
        self, key: OrderKey, changes: Mapping[str, str], notify_url: str | None = None
    ) -> Notification:
        """Deliver, once, a notification for the order with `changes`, signed with a wrong key."""
        order = self.orders.get(key)
        if order is None:
            raise ControlError("no such order", status=404)
        fields = {**report_fields(order.report(created_at=order.created_at)), **changes}
        fields.pop(SIGN_FIELD, None)
        form = signed(fields, self._forged_key())
        notification = self._notification(
            order, "forged", form, url=notify_url or order.notify_url, retry=False
        )
        self._start(notification, key)
        return notification

    def _notify(
        self,
        order: Order,
        kind: DeliveryKind,
        scenario: Scenario,
        origin_key: OrderKey | None = None,
    ) -> None:
        merchant = self._merchants[order.mch_id]
        form = signed(
            report_fields(order.report(created_at=order.created_at)), merchant.signing_key
        )
        notification = replace(
            self._notification(order, kind, form, url=order.notify_url, retry=True),
            drop_attempts=scenario.drop_attempts,
            duplicates=scenario.duplicates,
            concurrent_duplicates=scenario.concurrent_duplicates,
        )
        self._start(notification, order.key)
        if origin_key is not None:
            self._by_order.setdefault(origin_key, []).append(notification.id)

    def _notification(
        self, order: Order, kind: DeliveryKind, form: Mapping[str, str], *, url: str, retry: bool
    ) -> Notification:
        self._next_notification += 1
        return Notification(
            id=self._next_notification, kind=kind, mch_id=order.mch_id,
            mch_order=order.mch_order, origin_order=order.origin_order, url=url, form=form,
            retry=retry,
        )  # fmt: skip

    def _start(self, notification: Notification, key: OrderKey) -> None:
        self.notifications[notification.id] = NotificationStatus(
            id=notification.id, kind=notification.kind, mch_id=notification.mch_id,
            mch_order=notification.mch_order, origin_order=notification.origin_order,
            state="pending", attempts=0,
        )  # fmt: skip
        self._by_order.setdefault(key, []).append(notification.id)
        self.counters["notifications"] += 1
        if self._scheduler is None:
            raise RuntimeError("the sandbox has no delivery engine attached")
        self._scheduler.deliver(notification)

    # --- DeliveryLog: what the engine reports ---------------------------------------------------

    def record(
        self,
        notification: Notification,
        *,
        kind: DeliveryKind,
        attempt: int,
        scheduled_offset: float,
        offset: float,
        result: TryResult,
    ) -> None:
        self._seq += 1
        entry = DeliveryAttempt(
            seq=self._seq, notification=notification.id, mch_id=notification.mch_id,
            mch_order=notification.mch_order, origin_order=notification.origin_order, kind=kind,
            attempt=attempt, scheduled_offset=scheduled_offset, offset=round(offset, 6),
            at=round(self._clock.time(), 6), outcome=result.outcome,
            http_status=result.http_status, answer=result.answer,
            elapsed=round(result.elapsed, 6), error=result.error,
        )  # fmt: skip
        self._attempts.append(entry)
        if len(self._attempts) > self.config.max_records:
            del self._attempts[: len(self._attempts) // 10]
        self._attempts_by_notification.setdefault(notification.id, []).append(entry)
        status = self.notifications.get(notification.id)
        if status is not None and kind == notification.kind:
            self.notifications[notification.id] = replace(status, attempts=status.attempts + 1)
        self.counters[f"attempts_{result.outcome}"] += 1

    def finished(self, notification: Notification, *, delivered: bool) -> None:
        status = self.notifications.get(notification.id)
        state = "delivered" if delivered else "exhausted"
        if status is not None:
            self.notifications[notification.id] = replace(status, state=state)
        self.counters[f"notifications_{state}"] += 1

    # --- reading, for the control API -----------------------------------------------------

    def order_view(self, key: OrderKey) -> dict[str, Any]:
        order = self.orders.get(key)
        if order is None:
            raise ControlError("no such order", status=404)
        ids = self._by_order.get(key, [])
        return {
            "order": order.to_json(),
            "notifications": [self.notifications[i].to_json() for i in ids],
            "deliveries": [
                a.to_json() for i in ids for a in self._attempts_by_notification.get(i, [])
            ],
        }

    def deliveries(
        self, since: int, limit: int, key: OrderKey | None = None
    ) -> list[DeliveryAttempt]:
        if key is not None:
            ids = self._by_order.get(key, [])
            chosen: Iterable[DeliveryAttempt] = sorted(
                (a for i in ids for a in self._attempts_by_notification.get(i, [])),
                key=lambda a: a.seq,
            )
            return [a for a in chosen if a.seq > since][:limit]
        start = bisect.bisect_right(self._attempts, since, key=lambda a: a.seq)
        return self._attempts[start : start + limit]

    def ledger(self, since: int, limit: int) -> list[dict[str, Any]]:
        """Payments after the `since`-th one (1-based `seq`), as orders: what the platform
        took from payers, repeat payments included, for checking what the merchant was told."""
        found = []
        for seq, key in enumerate(self.payments[since : since + limit], start=since + 1):
            found.append({"seq": seq, **self.orders[key].to_json()})
        return found

    def calls(self, since: int, limit: int) -> list[dict[str, Any]]:
        return [c for c in self._calls if c["seq"] > since][:limit]

    def stats(self) -> dict[str, Any]:
        pending = sum(1 for n in self.notifications.values() if n.state == "pending")
        return {"counters": dict(self.counters), "notifications_pending": pending}

    # --- helpers ------------------------------------------------------------------------------

    def _now(self) -> int:
        return int(self._clock.time())

    def _forged_key(self) -> str:
        return f"forged-{self._rng.getrandbits(64):016x}"

    def _take_fault(self, endpoint: str) -> Fault | None:
        for fault in self.faults:
            if fault.endpoint in {None, endpoint}:
                self.faults.remove(fault)
                return fault
        return None

    def _note_call(self, endpoint: str, form: Mapping[str, str] | None, reply: Reply) -> None:
        self._seq += 1
        self._calls.append(
            {
                "seq": self._seq,
                "at": round(self._clock.time(), 6),
                "endpoint": endpoint,
                "mch_id": (form or {}).get("mch_id"),
                "mch_order": (form or {}).get("mch_order"),
                "code": reply.code,
                "http_status": reply.http_status,
            }
        )
        self.counters[f"calls_{endpoint}_{reply.code or reply.http_status}"] += 1


def _parse(build: Callable[[], _T]) -> _T:
    try:
        return build()
    except FieldError as exc:
        raise _Refused(100 if exc.rule.startswith("is required") else 101, str(exc)) from None
