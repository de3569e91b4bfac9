"""Typed, frozen requests and answers of the platform's API (创建订单, 快捷支付确认下单, 订单查询).

Requests validate themselves when built, so an invalid one cannot be sent: the client refuses
`&` or `=` in `call`, `remark` and `mch_order` (NOTES.md: values are signed raw) and enforces each
pay type's required fields. `from_form` parses the same requests strictly from a received form
(the sandbox uses it). Answers are JSON objects whose values may be numbers or strings; they are
decoded into text once (`decode_answer`), keeping every member as received, because the document
gives two create-order answer fields the same name `code` (status and transfer memo).

Pure code: no I/O, no clock.
"""

from __future__ import annotations

import ipaddress
import json
import re
from dataclasses import dataclass, fields
from decimal import Decimal
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, ClassVar, Self, TypeVar

from shared.protocol.catalog import ANSWER_OK, BANK_CODES, DOCUMENTED_PAY_TYPES
from shared.protocol.errors import AnswerSignatureError, MalformedAnswer
from shared.protocol.fields import FieldError, check_choice, check_text, parse_int
from shared.protocol.payment import MAX_AMOUNT_LI, PaymentReport, parse_payment_report
from shared.protocol.signing import SIGN_FIELD, SignatureError, verify

if TYPE_CHECKING:
    from collections.abc import Container, Iterable, Mapping, Sequence

    from shared.protocol.signing import MerchantKey

SIGN_TYPE = "md5"
SIGN_TYPES = frozenset({SIGN_TYPE})
ENVELOPE_FIELDS = ("code", "msg")
MAX_TEXT = 255  # for text fields the document gives no length
MAX_TIMESTAMP = 10**11  # Unix seconds far beyond year 5000; keeps garbage out
_COORDINATE = re.compile(r"[+-]?[0-9]{1,3}(\.[0-9]{1,15})?")
_RULES = {p.code: p for p in DOCUMENTED_PAY_TYPES}
_QUICK_DIRECT = 3  # 快捷支付直连 also needs phone, card holder name and id card


def _text(name: str, value: str, max_length: int = MAX_TEXT) -> str:
    return check_text(name, value, max_length=max_length)


def _optional_text(name: str, value: str | None, max_length: int = MAX_TEXT) -> None:
    # An optional field is left out, never sent empty (NOTES.md "Signature").
    if value is not None:
        check_text(name, value, max_length=max_length)


def _int(name: str, value: int, minimum: int = 0, maximum: int = MAX_TIMESTAMP) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise FieldError(name, "must be an integer")
    if not minimum <= value <= maximum:
        raise FieldError(name, f"must be between {minimum} and {maximum}")


def _url(name: str, value: str | None, max_length: int = MAX_TEXT) -> None:
    if value is None:
        return
    check_text(name, value, max_length=max_length)
    if not value.startswith(("http://", "https://")) or any(ch.isspace() for ch in value):
        raise FieldError(name, "must be an http(s) URL without spaces")


def _coordinate(name: str, value: str | None, limit: int) -> None:
    if value is None:
        return
    if not _COORDINATE.fullmatch(value) or abs(Decimal(value)) > limit:
        raise FieldError(name, f"must be a decimal number within ±{limit}")


def _form(values: Iterable[tuple[str, object]]) -> dict[str, str]:
    return {name: str(value) for name, value in values if value is not None}


def _required(form: Mapping[str, str], name: str) -> str:
    value = form.get(name, "")
    if value == "":
        raise FieldError(name, "is required")
    return value


def _optional(form: Mapping[str, str], name: str) -> str | None:
    return form.get(name) or None


def _optional_int(form: Mapping[str, str], name: str) -> int | None:
    value = form.get(name, "")
    return None if value == "" else parse_int(name, value)


@dataclass(frozen=True, slots=True)
class CreateOrderRequest:
    """创建订单. `pay_type` picks the endpoint; it is not itself a form field."""

    pay_type: int
    mch_id: str
    mch_order: str
    amt: int  # li (1 yuan = 1000 li), positive
    remark: str
    created_at: int  # Unix seconds, when the merchant created the order
    client_ip: str
    notify_url: str
    sign_type: str = SIGN_TYPE
    user_channel_id: int | None = None
    user_portrait_id: str | None = None  # required for 23, 42, 43, 44
    user_level: int | None = None  # 0 any, 1 normal, 2 premium
    user_portrait_name: str | None = None  # required for 42, 43, 44
    user_portrait_lon: str | None = None
    user_portrait_lat: str | None = None
    bank_card_type: int | None = None  # 10 debit, 11 credit
    bank_code: int | None = None  # BANK_CODES
    callback_url: str | None = None
    bank_account: str | None = None  # required for 3 and 6
    bank_phone: str | None = None  # required for 3
    bank_user_name: str | None = None  # required for 3
    bank_id_card: str | None = None  # required for 3
    call: str | None = None  # echoed in the notification

    FORM_FIELDS: ClassVar[tuple[str, ...]] = (
        "sign_type", "mch_id", "mch_order", "amt", "remark", "created_at", "client_ip",
        "notify_url", "user_channel_id", "user_portrait_id", "user_level", "user_portrait_name",
        "user_portrait_lon", "user_portrait_lat", "bank_card_type", "bank_code", "callback_url",
        "bank_account", "bank_phone", "bank_user_name", "bank_id_card", "call",
    )  # fmt: skip

    def __post_init__(self) -> None:
        rules = _RULES.get(self.pay_type) if isinstance(self.pay_type, int) else None
        if rules is None:
            raise FieldError("pay_type", "is not a documented pay type")
        self._check_required_fields()
        self._check_optional_fields()
        needed: list[str] = []
        if rules.needs_portrait_id:
            needed.append("user_portrait_id")
        if rules.needs_portrait_name:
            needed.append("user_portrait_name")
        if rules.needs_bank_details:
            needed.append("bank_account")
            if self.pay_type == _QUICK_DIRECT:
                needed += ["bank_phone", "bank_user_name", "bank_id_card"]
        for name in needed:
            if getattr(self, name) is None:
                raise FieldError(name, f"is required for pay type {self.pay_type}")

    def _check_required_fields(self) -> None:
        check_choice("sign_type", self.sign_type, SIGN_TYPES)
        _text("mch_id", self.mch_id, 32)
        _text("mch_order", self.mch_order, 50)
        _int("amt", self.amt, minimum=1, maximum=MAX_AMOUNT_LI)
        _text("remark", self.remark, 32)
        _int("created_at", self.created_at)
        _text("client_ip", self.client_ip, 16)
        try:
            ipaddress.ip_address(self.client_ip)
        except ValueError:
            raise FieldError("client_ip", "must be an IP address") from None
        _url("notify_url", self.notify_url)

    def _check_optional_fields(self) -> None:
        if self.user_channel_id is not None:
            _int("user_channel_id", self.user_channel_id, maximum=10**9)
        if self.user_level is not None and self.user_level not in {0, 1, 2}:
            raise FieldError("user_level", "must be 0, 1 or 2")
        if self.bank_card_type is not None and self.bank_card_type not in {10, 11}:
            raise FieldError("bank_card_type", "must be 10 (debit) or 11 (credit)")
        if self.bank_code is not None and self.bank_code not in BANK_CODES:
            raise FieldError("bank_code", "is not a documented bank code")
        for name in (
            "user_portrait_id", "user_portrait_name", "bank_account", "bank_phone",
            "bank_user_name", "bank_id_card",
        ):  # fmt: skip
            _optional_text(name, getattr(self, name))
        _optional_text("call", self.call, 32)
        _url("callback_url", self.callback_url)
        _coordinate("user_portrait_lon", self.user_portrait_lon, 180)
        _coordinate("user_portrait_lat", self.user_portrait_lat, 90)

    def form(self) -> dict[str, str]:
        """The unsigned form, optional fields left out."""
        return _form((name, getattr(self, name)) for name in self.FORM_FIELDS)

    @classmethod
    def from_form(cls, pay_type: int, form: Mapping[str, str]) -> Self:
        """Parse a received form strictly; raises `FieldError` (rule "is required" if missing)."""
        return cls(
            pay_type=pay_type,
            sign_type=_required(form, "sign_type"),
            mch_id=_required(form, "mch_id"),
            mch_order=_required(form, "mch_order"),
            amt=parse_int("amt", _required(form, "amt"), maximum=MAX_AMOUNT_LI),
            remark=_required(form, "remark"),
            created_at=parse_int("created_at", _required(form, "created_at")),
            client_ip=_required(form, "client_ip"),
            notify_url=_required(form, "notify_url"),
            user_channel_id=_optional_int(form, "user_channel_id"),
            user_portrait_id=_optional(form, "user_portrait_id"),
            user_level=_optional_int(form, "user_level"),
            user_portrait_name=_optional(form, "user_portrait_name"),
            user_portrait_lon=_optional(form, "user_portrait_lon"),
            user_portrait_lat=_optional(form, "user_portrait_lat"),
            bank_card_type=_optional_int(form, "bank_card_type"),
            bank_code=_optional_int(form, "bank_code"),
            callback_url=_optional(form, "callback_url"),
            bank_account=_optional(form, "bank_account"),
            bank_phone=_optional(form, "bank_phone"),
            bank_user_name=_optional(form, "bank_user_name"),
            bank_id_card=_optional(form, "bank_id_card"),
            call=_optional(form, "call"),
        )


@dataclass(frozen=True, slots=True)
class QuickPayConfirmRequest:
    """快捷支付确认下单: confirm a quick-pay pre-order with the payer's SMS code."""

    mch_id: str
    mch_order: str
    code: str  # the SMS verification code (手机验证码), string(10)
    created_at: int  # Unix seconds, time of the request
    sign_type: str = SIGN_TYPE

    def __post_init__(self) -> None:
        check_choice("sign_type", self.sign_type, SIGN_TYPES)
        _text("mch_id", self.mch_id, 32)
        _text("mch_order", self.mch_order, 50)
        _text("code", self.code, 10)
        _int("created_at", self.created_at)

    def form(self) -> dict[str, str]:
        return _form((f.name, getattr(self, f.name)) for f in fields(self))

    @classmethod
    def from_form(cls, form: Mapping[str, str]) -> Self:
        return cls(
            mch_id=_required(form, "mch_id"),
            mch_order=_required(form, "mch_order"),
            code=_required(form, "code"),
            created_at=parse_int("created_at", _required(form, "created_at")),
            sign_type=_required(form, "sign_type"),
        )


@dataclass(frozen=True, slots=True)
class OrderQueryRequest:
    """订单查询 (`api/fetch_order.api`)."""

    mch_id: str
    mch_order: str
    created_at: int  # Unix seconds, time of the query
    sign_type: str = SIGN_TYPE

    def __post_init__(self) -> None:
        check_choice("sign_type", self.sign_type, SIGN_TYPES)
        _text("mch_id", self.mch_id, 32)
        _text("mch_order", self.mch_order, 50)
        _int("created_at", self.created_at)

    def form(self) -> dict[str, str]:
        return _form((f.name, getattr(self, f.name)) for f in fields(self))

    @classmethod
    def from_form(cls, form: Mapping[str, str]) -> Self:
        return cls(
            mch_id=_required(form, "mch_id"),
            mch_order=_required(form, "mch_order"),
            created_at=parse_int("created_at", _required(form, "created_at")),
            sign_type=_required(form, "sign_type"),
        )


# --- Answers -------------------------------------------------------------------------------


def first_occurrences(pairs: Iterable[tuple[str, str]]) -> Mapping[str, str]:
    first: dict[str, str] = {}
    for name, value in pairs:
        first.setdefault(name, value)
    return MappingProxyType(first)


class _Members(list[tuple[str, Any]]):
    """A JSON object as decoded: its members in order, duplicates kept."""


def _as_text(value: Any) -> str:
    """A JSON value as the platform's PHP would concatenate it when signing: numbers as plain
    decimals, true as "1", false and null as "" (left out of the signature), nested as JSON."""
    if isinstance(value, str):
        text = value
    elif value is None or isinstance(value, bool):
        text = "1" if value else ""
    elif isinstance(value, int):
        text = str(value)
    elif isinstance(value, Decimal):
        text = format(value.normalize(), "f")
    else:
        text = json.dumps(_plain(value), ensure_ascii=False, separators=(",", ":"), default=str)
    return text


def _plain(value: Any) -> Any:
    if isinstance(value, _Members):
        return {k: _plain(v) for k, v in value}
    if isinstance(value, list):
        return [_plain(v) for v in value]
    return value


@dataclass(frozen=True, slots=True)
class Answer:
    """A decoded answer: the status `code`, `msg`, and every member as text, in order."""

    code: int
    msg: str
    pairs: tuple[tuple[str, str], ...]

    @property
    def raw(self) -> Mapping[str, str]:
        """Members by name; where a name repeats, its first occurrence."""
        return first_occurrences(self.pairs)

    @property
    def ok(self) -> bool:
        return self.code == ANSWER_OK

    def values_of(self, name: str) -> tuple[str, ...]:
        return tuple(value for key, value in self.pairs if key == name)


def decode_answer(body: bytes) -> Answer:
    """Decode the platform's JSON answer, or raise `MalformedAnswer` (never quoting the body)."""
    try:
        document = json.loads(body.decode("utf-8"), object_pairs_hook=_Members, parse_float=Decimal)
    except (UnicodeDecodeError, ValueError, RecursionError):
        raise MalformedAnswer("the answer is not valid UTF-8 JSON") from None
    if not isinstance(document, _Members):
        raise MalformedAnswer("the answer is not a JSON object")
    pairs = tuple((str(name), _as_text(value)) for name, value in document)
    codes = [value for name, value in pairs if name == "code"]
    if not codes:
        raise MalformedAnswer("the answer has no code")
    try:
        # The status comes first; a later `code` is the transfer memo (see module docstring).
        code = parse_int("code", codes[0], maximum=10**6)
    except FieldError:
        raise MalformedAnswer("the answer's code is not a number") from None
    msgs = [value for name, value in pairs if name == "msg"]
    return Answer(code=code, msg=msgs[0] if msgs else "", pairs=pairs)


def signature_fields(fields: Mapping[str, str], *, include_envelope: bool) -> dict[str, str]:
    """The members an answer's signature covers (NOTES.md ruling): all but `sign`, and the
    envelope `code`/`msg` only when the platform is configured to sign it."""
    skip = {SIGN_FIELD} if include_envelope else {SIGN_FIELD, *ENVELOPE_FIELDS}
    return {name: value for name, value in fields.items() if name not in skip}


def encode_answer(pairs: Sequence[tuple[str, str | int]]) -> bytes:
    """Write an answer as the platform does: a JSON object, members in the given order; a name may
    repeat (the transfer memo `code`), which a dict could not express."""
    members = (
        f"{json.dumps(name)}:{json.dumps(value, ensure_ascii=False)}" for name, value in pairs
    )
    return ("{" + ",".join(members) + "}").encode()


def verify_answer(
    answer: Answer, keys: Sequence[MerchantKey], *, include_envelope: bool
) -> MerchantKey:
    """Check a signed answer; raise `AnswerSignatureError` naming the reason, never the sign."""
    names = [name for name, _ in answer.pairs]
    if len(names) != len(set(names)):
        raise AnswerSignatureError("duplicate_fields")
    covered = signature_fields(answer.raw, include_envelope=include_envelope)
    covered[SIGN_FIELD] = answer.raw.get(SIGN_FIELD, "")
    try:
        return verify(covered, keys)
    except SignatureError as exc:
        raise AnswerSignatureError(exc.reason) from None


def _answer_int(raw: Mapping[str, str], name: str, *, required: bool = False) -> int | None:
    value = raw.get(name, "")
    if value == "":
        if required:
            raise MalformedAnswer(f"the answer has no {name}")
        return None
    try:
        return parse_int(name, value, maximum=MAX_AMOUNT_LI)
    except FieldError as exc:
        raise MalformedAnswer(f"the answer's {name} {exc.rule}") from None


def _answer_text(raw: Mapping[str, str], name: str, max_length: int | None = None) -> str | None:
    value = raw.get(name, "")
    if value == "":
        return None
    try:
        return check_text(name, value, max_length=max_length)
    except FieldError as exc:
        raise MalformedAnswer(f"the answer's {name} {exc.rule}") from None


@dataclass(frozen=True, slots=True)
class CreateOrderAnswer:
    """A successful create-order answer. Which payment fields are set depends on the pay type;
    presence of the always-present ids is not enforced beyond `mch_id`, `mch_order`, `pay_type`."""

    mch_id: str
    mch_order: str
    pay_type: int
    channel_id: int | None
    op_channel_id: int | None
    api_id: int | None
    created_at: int | None
    pay_url: str | None
    code_url: str | None
    redirect_pay_url: str | None
    code_img_url: str | None
    pay_info: str | None  # may be a JSON string (js / mini-program pay); kept verbatim
    services: str | None
    token_id: str | None
    op_amt: int | None  # transfers: what the merchant asked, li
    amt: int | None  # transfers: what the payer must transfer, li (may differ from op_amt)
    bank_card: str | None
    bank_name: str | None
    real_name: str | None
    transfer_memo: str | None  # 附言: the document names it `code` as well; see `raw_pairs`
    account: str | None
    raw_pairs: tuple[tuple[str, str], ...]

    @property
    def raw(self) -> Mapping[str, str]:
        return first_occurrences(self.raw_pairs)


def parse_create_order_answer(answer: Answer) -> CreateOrderAnswer:
    """Build the typed answer from a decoded success answer, or raise `MalformedAnswer`."""
    raw = answer.raw
    mch_id = _answer_text(raw, "mch_id", 32)
    mch_order = _answer_text(raw, "mch_order", 50)
    pay_type = _answer_int(raw, "pay_type", required=True)
    if mch_id is None or mch_order is None or pay_type is None:
        raise MalformedAnswer("the answer lacks mch_id or mch_order")
    codes = answer.values_of("code")
    pay_info = raw.get("pay_info") or None
    return CreateOrderAnswer(
        mch_id=mch_id,
        mch_order=mch_order,
        pay_type=pay_type,
        channel_id=_answer_int(raw, "channel_id"),
        op_channel_id=_answer_int(raw, "op_channel_id"),
        api_id=_answer_int(raw, "api_id"),
        created_at=_answer_int(raw, "created_at"),
        pay_url=_answer_text(raw, "pay_url"),
        code_url=_answer_text(raw, "code_url"),
        redirect_pay_url=_answer_text(raw, "redirect_pay_url"),
        code_img_url=_answer_text(raw, "code_img_url"),
        pay_info=pay_info,
        services=_answer_text(raw, "services"),
        token_id=_answer_text(raw, "token_id"),
        op_amt=_answer_int(raw, "op_amt"),
        amt=_answer_int(raw, "amt"),
        bank_card=_answer_text(raw, "bank_card"),
        bank_name=_answer_text(raw, "bank_name"),
        real_name=_answer_text(raw, "real_name"),
        transfer_memo=codes[1] if len(codes) > 1 else None,
        account=_answer_text(raw, "account"),
        raw_pairs=answer.pairs,
    )


@dataclass(frozen=True, slots=True)
class ReportAnswer:
    """A verified answer that carries a payment report (order query, quick-pay confirm)."""

    report: PaymentReport
    key_id: str  # which of the merchant's keys verified it
    raw: Mapping[str, str]


_A = TypeVar("_A", bound=ReportAnswer)


@dataclass(frozen=True, slots=True)
class OrderQueryAnswer(ReportAnswer):
    """订单查询's answer: the same fields as a notification, `created_at` being the query time."""


@dataclass(frozen=True, slots=True)
class QuickPayConfirmAnswer(ReportAnswer):
    """快捷支付确认下单's answer: shaped like the order query's."""


def parse_report_answer(
    kind: type[_A],
    answer: Answer,
    keys: Sequence[MerchantKey],
    pay_types: Container[int],
    *,
    include_envelope: bool,
) -> _A:
    """Verify a success answer's signature, then parse its report strictly.

    Raises `AnswerSignatureError` or `MalformedAnswer`."""
    key = verify_answer(answer, keys, include_envelope=include_envelope)
    body = {name: value for name, value in answer.raw.items() if name not in ENVELOPE_FIELDS}
    try:
        report = parse_payment_report(body, pay_types)
    except FieldError as exc:
        raise MalformedAnswer(f"the answer's {exc.field} {exc.rule}") from None
    return kind(report=report, key_id=key.key_id, raw=answer.raw)
