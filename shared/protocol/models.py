"""Typed, frozen requests and answers of the platform's API (创建订单, 快捷支付确认下单, 订单查询).

Requests validate themselves when built, so an invalid one cannot be sent: the client refuses
`&` or `=` in `call`, `remark` and `mch_order` (NOTES.md: values are signed raw) and enforces each
pay type's required fields. `from_form` parses the same requests strictly from a received form
(the sandbox uses it). Answers are JSON objects whose values may be numbers or strings; they are
decoded into text once (`decode_answer`), keeping every member as received, because the document
gives two create-order answer fields the same name `code` (status and transfer memo). Numbers stay
the literal text they were sent as, and any body that is not such an object, however hostile, is a
`MalformedAnswer` reached with bounded work.

Pure code: no I/O, no clock.
"""

from __future__ import annotations

import ipaddress
import itertools
import json
import re
from dataclasses import dataclass, fields
from decimal import Decimal
from itertools import accumulate
from json.encoder import encode_basestring
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, ClassVar, NoReturn, Self, TypeVar

from shared.protocol.catalog import ANSWER_OK, BANK_CODES, DOCUMENTED_PAY_TYPES
from shared.protocol.errors import AnswerSignatureError, MalformedAnswer
from shared.protocol.fields import FieldError, check_choice, check_text, parse_int
from shared.protocol.payment import (
    KNOWN_FIELDS,
    MAX_AMOUNT_LI,
    PaymentReport,
    parse_payment_report,
)
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
        if rules.needs_card_holder:  # 快捷支付直连: phone, card holder name and id card
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


# Decoding is the first thing an answer meets, before any signature check, so it must turn every
# body, however hostile, into an `Answer` or a `MalformedAnswer` with bounded work and memory.
MAX_ANSWER_DEPTH = 32  # the document's answers are flat; 32 leaves room for nested pay_info
MAX_NUMBER_CHARS = 64  # numbers are kept as sent; an int64 needs 20 characters
_STRING_TOKEN = re.compile(rb'"[^"\\]*(?:\\(?:.|\Z)[^"\\]*)*(?:"|\Z)', re.DOTALL)
_NOT_BRACKETS = bytes(b for b in range(256) if b not in b"[]{}")
_DEPTH_STEP = [{ord("["): 1, ord("{"): 1, ord("]"): -1, ord("}"): -1}.get(b, 0) for b in range(256)]
_LONE_SURROGATE = re.compile("[\ud800-\udfff]")
_TEXT_KINDS = frozenset({"string", "number", "null"})  # what a field typed string or int may be


class _Members(list[tuple[str, Any]]):
    """A JSON object as decoded: its members in order, duplicates kept."""


class _Number(str):
    """A JSON number, kept as the literal text it was sent as (never converted)."""

    __slots__ = ()


class _RefusedJsonError(Exception):
    """Raised by json.loads' hooks; `decode_answer` turns it into `MalformedAnswer`."""


def _number(literal: str) -> _Number:
    if len(literal) > MAX_NUMBER_CHARS:
        raise _RefusedJsonError(
            f"the answer has a number longer than {MAX_NUMBER_CHARS} characters"
        )
    return _Number(literal)


def _not_finite(_literal: str) -> NoReturn:
    raise _RefusedJsonError("the answer has NaN or Infinity, which JSON does not allow")


def _depth(body: bytes) -> int:
    """How deep arrays and objects nest, brackets inside strings not counted, in linear time and
    without recursion. Exact for every text that json.loads accepts; an unterminated string runs
    to the end (json.loads refuses such text anyway)."""
    brackets = _STRING_TOKEN.sub(b"", body).translate(None, _NOT_BRACKETS)
    return max(accumulate(map(_DEPTH_STEP.__getitem__, brackets)), default=0)


def _kind(value: Any) -> str:
    """The JSON type of a decoded value."""
    kind = "null"
    if isinstance(value, _Number):
        kind = "number"
    elif isinstance(value, str):
        kind = "string"
    elif isinstance(value, _Members):
        kind = "object"
    elif isinstance(value, list):
        kind = "array"
    elif isinstance(value, bool):
        kind = "true" if value else "false"
    return kind


def _as_text(value: Any) -> str:
    """A JSON value as text, for signing and parsing: a string as itself, a number as the literal
    it was sent as, true as "1", false and null as "" (so left out of the signature, as the
    platform's PHP concatenates them), an array or object as compact JSON with numbers as sent."""
    if isinstance(value, str):
        return str(value)  # a plain str, also for a _Number
    if isinstance(value, list):
        return _compact(value)
    return "1" if value is True else ""


def _compact(value: Any) -> str:
    """Compact JSON of a decoded value, members in the order and number as sent. The depth was
    bounded before decoding, so the recursion is too."""
    if isinstance(value, _Number):
        text = str(value)
    elif isinstance(value, str):
        text = encode_basestring(value)  # json.dumps(value, ensure_ascii=False), 20 times faster
    elif isinstance(value, _Members):
        members = (f"{encode_basestring(k)}:{_compact(v)}" for k, v in value)
        text = "{" + ",".join(members) + "}"
    elif isinstance(value, list):
        text = "[" + ",".join(_compact(v) for v in value) + "]"
    else:
        text = "null" if value is None else ("true" if value else "false")
    return text


@dataclass(frozen=True, slots=True)
class Answer:
    """A decoded answer: the status `code`, `msg`, and every member as text, in order.

    `kinds` gives each member's JSON type ("string", "number", "null", "true", "false", "array",
    "object"), aligned with `pairs`; an answer built without it counts every member a string."""

    code: int
    msg: str
    pairs: tuple[tuple[str, str], ...]
    kinds: tuple[str, ...] = ()

    @property
    def raw(self) -> Mapping[str, str]:
        """Members by name; where a name repeats, its first occurrence."""
        return first_occurrences(self.pairs)

    @property
    def ok(self) -> bool:
        return self.code == ANSWER_OK

    def values_of(self, name: str) -> tuple[str, ...]:
        return tuple(value for key, value in self.pairs if key == name)

    def kind_of(self, name: str) -> str | None:
        """The JSON type of `name`'s first occurrence; None when the answer has no such member."""
        for index, (key, _) in enumerate(self.pairs):
            if key == name:
                return self.kinds[index] if index < len(self.kinds) else "string"
        return None


def decode_answer(body: bytes) -> Answer:
    """Decode the platform's JSON answer, or raise `MalformedAnswer` saying what is wrong (never
    quoting the body).

    Numbers keep the literal text they were sent as, for signing and parsing alike: `1.50` stays
    "1.50" and `1e3` stays "1e3" (they used to be normalised to "1.5" and "1000"). The platform's
    PHP signs the values it then encodes, and for integers, the only numbers the document uses,
    literal and value agree; a literal is never expanded, so no member's text is longer than the
    body. Refused: arrays and objects nested deeper than `MAX_ANSWER_DEPTH` (a linear scan before
    parsing), NaN and Infinity, numbers longer than `MAX_NUMBER_CHARS`, strings with unpaired
    surrogate escapes, and a `code` that is not a plain integer (as a JSON number or string). The
    caller bounds the body's size (the client reads at most `ClientConfig.max_answer_bytes`).
    """
    document = _parse_object(body)
    pairs = tuple((name, _as_text(value)) for name, value in document)
    if any(_LONE_SURROGATE.search(name + value) for name, value in pairs):
        raise MalformedAnswer("the answer has a string with an unpaired surrogate escape")
    kinds = tuple(_kind(value) for _, value in document)
    msgs = [value for name, value in pairs if name == "msg"]
    return Answer(code=_status(pairs, kinds), msg=msgs[0] if msgs else "", pairs=pairs, kinds=kinds)


def _parse_object(body: bytes) -> _Members:
    if not body.strip():
        raise MalformedAnswer("the answer is empty")
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise MalformedAnswer(f"the answer is not valid UTF-8 (at byte {exc.start})") from None
    if _depth(body) > MAX_ANSWER_DEPTH:
        raise MalformedAnswer(
            f"the answer nests arrays or objects deeper than {MAX_ANSWER_DEPTH} levels"
        )
    try:
        document = json.loads(
            text,
            object_pairs_hook=_Members,
            parse_float=_number,
            parse_int=_number,
            parse_constant=_not_finite,
        )
    except _RefusedJsonError as exc:
        raise MalformedAnswer(str(exc)) from None
    except json.JSONDecodeError as exc:
        what = exc.msg.removesuffix(" at")
        raise MalformedAnswer(
            f"the answer is not valid JSON: {what} (character {exc.pos})"
        ) from None
    if not isinstance(document, _Members):
        raise MalformedAnswer(f"the answer is a JSON {_kind(document)}, not an object")
    return document


def _status(pairs: Sequence[tuple[str, str]], kinds: Sequence[str]) -> int:
    # The status comes first; a later `code` is the transfer memo (see module docstring).
    index = next((i for i, (name, _) in enumerate(pairs) if name == "code"), None)
    if index is None:
        raise MalformedAnswer("the answer has no code")
    if kinds[index] not in {"number", "string"}:
        raise MalformedAnswer(f"the answer's code is a JSON {kinds[index]}, not a number")
    try:
        return parse_int("code", pairs[index][1], maximum=10**6)
    except FieldError:
        raise MalformedAnswer("the answer's code is not a plain decimal integer") from None


def _check_kinds(answer: Answer, names: Iterable[str]) -> None:
    """Fields the document types as string or int may arrive as a JSON string or number, or
    null where empty; true, false, an array or an object there is malformed (true would read
    as "1")."""
    wanted = set(names)
    refused: dict[str, str] = {}  # name -> the JSON type of its first occurrence, if refused
    kinds = itertools.chain(answer.kinds, itertools.repeat("string"))
    for (name, _), kind in zip(answer.pairs, kinds, strict=False):  # one pass, not one per name
        if name in wanted:
            wanted.discard(name)
            if kind not in _TEXT_KINDS:
                refused[name] = kind
    for name in names:  # the first refused in the caller's order, as a scan per name found it
        if name in refused:
            kind = refused[name]
            raise MalformedAnswer(f"the answer's {name} is a JSON {kind}, not a string or number")


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
    raw = answer.raw
    covered = signature_fields(raw, include_envelope=include_envelope)
    covered[SIGN_FIELD] = raw.get(SIGN_FIELD, "")
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


# Every field but pay_info (kept verbatim: it may be JSON) and the memo (the second `code`).
_CREATE_ORDER_TYPED_FIELDS = (
    "mch_id", "mch_order", "pay_type", "channel_id", "op_channel_id", "api_id", "created_at",
    "pay_url", "code_url", "redirect_pay_url", "code_img_url", "services", "token_id", "op_amt",
    "amt", "bank_card", "bank_name", "real_name", "account",
)  # fmt: skip


def parse_create_order_answer(answer: Answer) -> CreateOrderAnswer:
    """Build the typed answer from a decoded success answer, or raise `MalformedAnswer`."""
    _check_kinds(answer, _CREATE_ORDER_TYPED_FIELDS)
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


_KNOWN_FIELDS_SORTED = tuple(sorted(KNOWN_FIELDS))


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
    _check_kinds(answer, _KNOWN_FIELDS_SORTED)
    raw = answer.raw
    body = {name: value for name, value in raw.items() if name not in ENVELOPE_FIELDS}
    try:
        report = parse_payment_report(body, pay_types)
    except FieldError as exc:
        raise MalformedAnswer(f"the answer's {exc.field} {exc.rule}") from None
    return kind(report=report, key_id=key.key_id, raw=raw)
