"""Typed requests and answers: per-pay-type rules, limits, answer decoding and verification."""

from __future__ import annotations

import json
from dataclasses import replace
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from shared.protocol.catalog import DOCUMENTED_PAY_TYPES, PayTypeCatalog
from shared.protocol.errors import AnswerSignatureError, MalformedAnswer
from shared.protocol.fields import FieldError
from shared.protocol.models import (
    Answer,
    CreateOrderRequest,
    OrderQueryAnswer,
    OrderQueryRequest,
    QuickPayConfirmAnswer,
    QuickPayConfirmRequest,
    _check_kinds,
    decode_answer,
    encode_answer,
    parse_create_order_answer,
    parse_report_answer,
    signature_fields,
    verify_answer,
)
from shared.protocol.payment import PaymentStatus
from shared.protocol.signing import MerchantKey, sign

pytestmark = pytest.mark.unit

KEY = MerchantKey.from_secret("25e72d96d0ffe0bb74373344d986df3c")
PAY_TYPES = PayTypeCatalog.documented()
BANK = {
    "bank_account": "6222020000000000",
    "bank_phone": "13800000000",
    "bank_user_name": "张三",
    "bank_id_card": "110101199001011234",
}
PORTRAIT = {"user_portrait_id": "payer@example.com", "user_portrait_name": "张三"}


def doc_request(**changes: Any) -> CreateOrderRequest:
    fields: dict[str, Any] = {
        "pay_type": 10,
        "mch_id": "t9awtvk6dn",
        "mch_order": "20171206142839049",
        "amt": 1,
        "remark": "产品备注",
        "created_at": 1512541824,
        "client_ip": "192.168.1.176",
        "notify_url": "https://app.zlsky.me/notify.php",
        "call": "{user:1}",
    }
    fields.update(changes)
    return CreateOrderRequest(**fields)


def extras_for(pay_type: int) -> dict[str, str]:
    rules = PAY_TYPES.get(pay_type)
    extra: dict[str, str] = {}
    if rules.needs_portrait_id or rules.needs_portrait_name:
        extra.update(PORTRAIT)
    if rules.needs_bank_details:
        extra.update(BANK)
    return extra


def test_document_example_request_signs_to_the_vector() -> None:
    """The document's example, built as a typed request, gives its form and signature."""
    form = doc_request().form()
    assert "pay_type" not in form
    assert sign(form, KEY) == "5883eb7db6fc28286f440b291c4bc24a"


@pytest.mark.parametrize("pay_type", [p.code for p in DOCUMENTED_PAY_TYPES])
def test_every_pay_type_builds_with_its_required_fields(pay_type: int) -> None:
    """Each documented pay type accepts a request carrying the fields its rules require."""
    request = doc_request(pay_type=pay_type, **extras_for(pay_type))
    assert CreateOrderRequest.from_form(pay_type, request.form()) == request


@pytest.mark.parametrize(
    ("pay_type", "missing"),
    [
        (23, "user_portrait_id"),
        *((code, name) for code in (42, 43, 44) for name in PORTRAIT),
        *((3, name) for name in BANK),
        (6, "bank_account"),
    ],
)
def test_pay_type_rules_require_fields(pay_type: int, missing: str) -> None:
    """portrait id for 23/42/43/44, portrait name for 42/43/44, bank fields for 3 and 6."""
    extra = {k: v for k, v in extras_for(pay_type).items() if k != missing}
    with pytest.raises(FieldError) as caught:
        doc_request(pay_type=pay_type, **extra)
    assert caught.value.field == missing


def test_quick_pay_web_with_bank_card_needs_only_the_account() -> None:
    """Pay type 6 takes the card number; phone, holder and id card are for 3 (direct) only."""
    assert doc_request(pay_type=6, bank_account="6222020000000000").bank_phone is None


def test_undocumented_pay_type_is_refused() -> None:
    """A pay type that is not in the document cannot be built."""
    with pytest.raises(FieldError, match="pay_type"):
        doc_request(pay_type=7)


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("mch_id", "m" * 33),
        ("mch_order", "o" * 51),
        ("remark", "备" * 33),
        ("call", "c" * 33),
        ("client_ip", "1234:5678:9abc::1"),
        ("notify_url", "https://x.example/" + "u" * 240),
    ],
)
def test_length_limits(field: str, value: str) -> None:
    """The document's string(n) limits are enforced."""
    with pytest.raises(FieldError) as caught:
        doc_request(**{field: value})
    assert caught.value.field == field


@pytest.mark.parametrize("amt", [0, -1, True, 10**16])
def test_amount_is_a_positive_integer_in_li(amt: object) -> None:
    """amt must be a positive integer (li); zero, negatives, booleans and absurd sums fail."""
    with pytest.raises(FieldError, match="amt"):
        doc_request(amt=amt)


@pytest.mark.parametrize("field", ["call", "remark", "mch_order"])
@pytest.mark.parametrize("bad", ["a&b", "a=b"])
def test_client_refuses_separators_in_echoed_fields(field: str, bad: str) -> None:
    """A request with `&` or `=` in call, remark or mch_order cannot be built, so never sent."""
    with pytest.raises(FieldError, match="'&' or '='"):
        doc_request(**{field: bad})


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("notify_url", "ftp://x.example/n"),
        ("notify_url", "https://x.example/a b"),
        ("client_ip", "not-an-ip"),
        ("user_level", 3),
        ("bank_card_type", 12),
        ("bank_code", 1028),
        ("user_portrait_lon", "181"),
        ("user_portrait_lat", "-90.5"),
        ("user_portrait_lat", "north"),
        ("call", ""),
        ("sign_type", "sha1"),
    ],
)
def test_value_rules(field: str, value: object) -> None:
    """URLs, IPs, enumerations and coordinates are checked; optionals may not be empty."""
    with pytest.raises(FieldError) as caught:
        doc_request(**{field: value})
    assert caught.value.field == field


def test_optional_fields_are_left_out_of_the_form() -> None:
    """Unset optionals are not sent, not even empty; set ones are rendered as text."""
    form = doc_request(call=None, user_level=0, bank_code=1001, user_portrait_lon="-120.5").form()
    assert "call" not in form
    assert form["user_level"] == "0"
    assert form["bank_code"] == "1001"
    assert form["user_portrait_lon"] == "-120.5"


def test_from_form_names_missing_and_malformed_fields() -> None:
    """Parsing a received form says which field is missing ("is required") or malformed."""
    form = doc_request().form()
    with pytest.raises(FieldError) as caught:
        CreateOrderRequest.from_form(10, {k: v for k, v in form.items() if k != "remark"})
    assert (caught.value.field, caught.value.rule) == ("remark", "is required")
    with pytest.raises(FieldError) as caught:
        CreateOrderRequest.from_form(10, {**form, "amt": "1.5"})
    assert caught.value.field == "amt"


def test_confirm_and_query_requests() -> None:
    """Quick-pay confirm and order query requests validate and render their forms."""
    confirm = QuickPayConfirmRequest(mch_id="m", mch_order="o1", code="123456", created_at=5)
    assert confirm.form() == {
        "mch_id": "m", "mch_order": "o1", "code": "123456", "created_at": "5", "sign_type": "md5",
    }  # fmt: skip
    assert QuickPayConfirmRequest.from_form(confirm.form()) == confirm
    query = OrderQueryRequest(mch_id="m", mch_order="o1", created_at=5)
    assert OrderQueryRequest.from_form(query.form()) == query
    with pytest.raises(FieldError, match="code"):
        replace(confirm, code="12345678901")
    with pytest.raises(FieldError, match="mch_order"):
        OrderQueryRequest(mch_id="m", mch_order="a&b", created_at=5)


# --- answers -------------------------------------------------------------------------------


def test_answer_values_may_be_numbers_or_strings() -> None:
    """Numbers keep the literal text they were sent as; null/false become empty; true "1"."""
    answer = decode_answer(
        b'{"code":1,"msg":"ok","amt":1000,"f":1.50,"e":1e3,"s":"x","n":null,"t":true,"b":false}'
    )
    assert answer.ok
    assert dict(answer.raw) == {
        "code": "1", "msg": "ok", "amt": "1000", "f": "1.50", "e": "1e3", "s": "x", "n": "",
        "t": "1", "b": "",
    }  # fmt: skip


def test_code_may_be_a_string() -> None:
    """A status code sent as a JSON string is the same code."""
    assert decode_answer(b'{"code":"103","msg":"no order"}').code == 103


@pytest.mark.parametrize(
    "body",
    [b"", b"not json", b"[1]", b'"x"', b'{"msg":"no code"}', b'{"code":"one"}', b"\xff\xfe"],
)
def test_malformed_answers(body: bytes) -> None:
    """Anything but a JSON object with a numeric code is a MalformedAnswer."""
    with pytest.raises(MalformedAnswer):
        decode_answer(body)


def nested(depth: int, inner: str = "1") -> bytes:
    """An answer whose member `x` nests `depth` arrays, the object itself being one level more."""
    return ('{"code":1,"x":' + "[" * depth + inner + "]" * depth + "}").encode()


@pytest.mark.parametrize(
    ("body", "member", "text"),
    [
        # The reproductions: decimal.Overflow, then a megabyte of zeros per member.
        (b'{"code":1,"msg":"ok","x":1e999999999}', "x", "1e999999999"),
        (b'{"code":1,"msg":"ok","x":1e999999}', "x", "1e999999"),
        (b'{"code":1,"x":-1E-999999999}', "x", "-1E-999999999"),
        (b'{"code":1,"x":123456789012345678901234567890}', "x", "123456789012345678901234567890"),
        (b'{"code":1,"x":-0}', "x", "-0"),
        (b'{"code":1,"x":{"a":1.50,"b":[1e3,true,null,"\\u00e9"]}}', "x",
         '{"a":1.50,"b":[1e3,true,null,"é"]}'),
    ],
)  # fmt: skip
def test_numbers_keep_their_literal_text(body: bytes, member: str, text: str) -> None:
    """A number is never converted: huge exponents neither overflow nor expand, and nested
    numbers keep their text in the member's compact JSON."""
    answer = decode_answer(body)
    assert answer.raw[member] == text
    assert len(answer.raw[member]) <= len(body)


def test_depth_is_bounded_before_parsing() -> None:
    """32 levels decode; 33 and the issue's 500 are refused; brackets inside strings, escaped
    quotes included, do not count."""
    assert decode_answer(nested(31)).raw["x"] == "[" * 31 + "1" + "]" * 31
    for depth in (32, 500, 100_000):
        with pytest.raises(MalformedAnswer, match="deeper than 32 levels"):
            decode_answer(nested(depth))
    in_string = '"\\\\\\"' + "[{" * 400 + '"'  # a JSON string: \\, \" and 800 brackets
    assert decode_answer(nested(30, in_string)).raw["x"].count("[{") == 400


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b"", "is empty"),
        (b" \r\n", "is empty"),
        (b'{"code":1,"secret-sauce":"\xff"}', "not valid UTF-8 (at byte 26)"),
        (b"<html>secret-sauce</html>", "not valid JSON: Expecting value (character 0)"),
        (b'{"code":1,"x":"secret-sauce', "not valid JSON: Unterminated string"),
        (b'{"code":1}{"secret-sauce":1}', "not valid JSON: Extra data"),
        (b'\xef\xbb\xbf{"code":1}', "not valid JSON: Unexpected UTF-8 BOM"),
        (b'{"code":1,"x":NaN}', "NaN or Infinity"),
        (b'{"code":1,"x":-Infinity}', "NaN or Infinity"),
        (b'{"code":1,"x":' + b"9" * 65 + b"}", "number longer than 64 characters"),
        (b'{"code":1,"x":"\\ud800"}', "unpaired surrogate"),
        (b'{"code":1,"\\udfff":"secret-sauce"}', "unpaired surrogate"),
        (b'["secret-sauce"]', "is a JSON array, not an object"),
        (b"1e999999999", "is a JSON number, not an object"),
        (b"null", "is a JSON null, not an object"),
        (b'{"msg":"secret-sauce"}', "has no code"),
        (b'{"code":true}', "code is a JSON true, not a number"),
        (b'{"code":null}', "code is a JSON null, not a number"),
        (b'{"code":[1]}', "code is a JSON array, not a number"),
        (b'{"code":1.0}', "code is not a plain decimal integer"),
        (b'{"code":"-1"}', "code is not a plain decimal integer"),
    ],
)
def test_malformed_answers_say_what_is_wrong(body: bytes, message: str) -> None:
    """Each way of being malformed has its own message, which never quotes the body."""
    with pytest.raises(MalformedAnswer) as caught:
        decode_answer(body)
    assert message in str(caught.value)
    assert "secret-sauce" not in str(caught.value)


def test_transfer_memo_named_code_is_kept() -> None:
    """The document's second `code` (the transfer memo) survives next to the status code."""
    body = encode_answer(
        [("code", 1), ("msg", "ok"), ("mch_id", "m"), ("mch_order", "o1"), ("pay_type", 42),
         ("op_amt", "100000"), ("amt", "99990"), ("bank_card", "6222"), ("bank_name", "ICBC"),
         ("real_name", "李四"), ("code", "memo-8842")]
    )  # fmt: skip
    answer = decode_answer(body)
    assert answer.code == 1
    assert answer.values_of("code") == ("1", "memo-8842")
    parsed = parse_create_order_answer(answer)
    assert parsed.transfer_memo == "memo-8842"
    assert (parsed.op_amt, parsed.amt) == (100000, 99990)
    assert parsed.raw["real_name"] == "李四"


def test_create_order_answer_requires_identity() -> None:
    """A success answer without the order's identity is malformed."""
    with pytest.raises(MalformedAnswer):
        parse_create_order_answer(decode_answer(b'{"code":1,"pay_type":10}'))
    with pytest.raises(MalformedAnswer, match="pay_type"):
        parse_create_order_answer(
            decode_answer(b'{"code":1,"mch_id":"m","mch_order":"o","pay_type":"x"}')
        )


def report_body(key: MerchantKey = KEY, **changes: str) -> dict[str, str]:
    body = {
        "sign_type": "md5", "mch_id": "m", "service": "10", "mch_order": "o1", "amt": "1000",
        "mch_amt": "1000", "amt_type": "cny", "status": "2", "created_at": "1700000000",
        "success_at": "1700000001", "origin_order": "",
    }  # fmt: skip
    body.update(changes)
    body["sign"] = sign(body, key)
    return body


def as_answer(body: dict[str, str], code: int = 1, msg: str = "ok") -> bytes:
    return encode_answer([("code", code), ("msg", msg), *body.items()])


def test_report_answer_verifies_and_parses() -> None:
    """A signed query answer verifies (envelope excluded) and parses into a PaymentReport."""
    old = MerchantKey.from_secret("old")
    answer = parse_report_answer(
        OrderQueryAnswer, decode_answer(as_answer(report_body(old))), [KEY, old], PAY_TYPES,
        include_envelope=False,
    )  # fmt: skip
    assert answer.key_id == old.key_id
    assert answer.report.status is PaymentStatus.PAID
    assert answer.report.origin_order is None
    assert answer.raw["msg"] == "ok"


def test_report_answer_with_bad_signature_is_rejected() -> None:
    """Changing a signed field after signing makes the answer fail verification."""
    body = {**report_body(), "amt": "999999"}
    with pytest.raises(AnswerSignatureError) as caught:
        parse_report_answer(
            QuickPayConfirmAnswer, decode_answer(as_answer(body)), [KEY], PAY_TYPES,
            include_envelope=False,
        )  # fmt: skip
    assert caught.value.signature_reason == "sign_mismatch"
    assert body["sign"] not in str(caught.value)
    assert not caught.value.transient


def test_envelope_switch() -> None:
    """With the switch on, code and msg are covered; without it, they are not."""
    body = report_body()
    assert "code" not in signature_fields({"code": "1", **body}, include_envelope=False)
    assert "code" in signature_fields({"code": "1", **body}, include_envelope=True)
    answer = decode_answer(as_answer(body))
    verify_answer(answer, [KEY], include_envelope=False)
    with pytest.raises(AnswerSignatureError):
        verify_answer(answer, [KEY], include_envelope=True)
    enveloped = {"code": "1", "msg": "ok", **{k: v for k, v in body.items() if k != "sign"}}
    enveloped_answer = decode_answer(
        encode_answer([*enveloped.items(), ("sign", sign(enveloped, KEY))])
    )
    verify_answer(enveloped_answer, [KEY], include_envelope=True)


def test_duplicate_names_in_a_signed_answer_are_refused() -> None:
    """A signed answer that repeats a field name is ambiguous and refused."""
    body = report_body()
    dup = encode_answer([("code", 1), *body.items(), ("amt", "1")])
    with pytest.raises(AnswerSignatureError, match="duplicate"):
        verify_answer(decode_answer(dup), [KEY], include_envelope=False)


def test_unsigned_report_answer_is_rejected() -> None:
    """A query answer without a sign is rejected, never trusted."""
    body = {k: v for k, v in report_body().items() if k != "sign"}
    with pytest.raises(AnswerSignatureError, match="sign_missing"):
        parse_report_answer(
            OrderQueryAnswer, decode_answer(as_answer(body)), [KEY], PAY_TYPES,
            include_envelope=False,
        )  # fmt: skip


def test_report_answer_fields_are_checked_strictly() -> None:
    """A verified answer with a malformed field is still a MalformedAnswer."""
    body = report_body(status="3")
    with pytest.raises(MalformedAnswer, match="status"):
        parse_report_answer(
            OrderQueryAnswer, decode_answer(as_answer(body)), [KEY], PAY_TYPES,
            include_envelope=False,
        )  # fmt: skip


def signed_json(members: list[tuple[str, Any]]) -> bytes:
    """A report answer with the given JSON values, signed over the text the decoder gives them
    (true "1", false and null empty), as the platform's PHP would."""

    def text(value: Any) -> str:
        if isinstance(value, str):
            return value
        if isinstance(value, bool) or value is None:
            return "1" if value else ""
        return json.dumps(value, separators=(",", ":"))

    covered = {name: text(value) for name, value in members}
    pairs = [("code", 1), ("msg", "ok"), *members, ("sign", sign(covered, KEY))]
    return ("{" + ",".join(f"{json.dumps(k)}:{json.dumps(v)}" for k, v in pairs) + "}").encode()


@pytest.mark.parametrize(
    ("name", "value", "kind"),
    [("amt", True, "true"), ("status", True, "true"), ("mch_amt", [1000], "array"),
     ("mch_order", {"o": 1}, "object"), ("service", False, "false"), ("sign_type", None, None)],
)  # fmt: skip
def test_report_fields_of_the_wrong_json_type_are_malformed(
    name: str, value: Any, kind: str | None
) -> None:
    """A signed report whose typed field is true, false, an array or an object is malformed,
    even where its text would parse (`true` reads "1"); null is an empty, so a missing field."""
    members: list[tuple[str, Any]] = [
        (k, v) for k, v in report_body().items() if k not in {"sign", "origin_order"}
    ]
    members = [(k, value if k == name else v) for k, v in members]
    with pytest.raises(MalformedAnswer) as caught:
        parse_report_answer(
            OrderQueryAnswer, decode_answer(signed_json(members)), [KEY], PAY_TYPES,
            include_envelope=False,
        )  # fmt: skip
    expected = f"is a JSON {kind}, not a string or number" if kind else "is required"
    assert f"the answer's {name} {expected}" in str(caught.value)


def test_null_optional_report_fields_are_empty() -> None:
    """`success_at` and `origin_order` sent as null are absent, as the platform's PHP says."""
    members = [(k, v) for k, v in report_body(status="1").items() if k != "sign"]
    members = [(k, None if k in {"success_at", "origin_order"} else v) for k, v in members]
    answer = parse_report_answer(
        OrderQueryAnswer, decode_answer(signed_json(members)), [KEY], PAY_TYPES,
        include_envelope=False,
    )  # fmt: skip
    assert (answer.report.success_at, answer.report.origin_order) == (None, None)


def test_create_order_fields_of_the_wrong_json_type_are_malformed() -> None:
    """A create-order answer's typed fields must be strings or numbers; pay_info may be JSON."""
    base = b'{"code":1,"mch_id":"m","mch_order":"o","pay_type":10,"pay_info":{"a":[1]}'
    assert parse_create_order_answer(decode_answer(base + b"}")).pay_info == '{"a":[1]}'
    with pytest.raises(MalformedAnswer, match="amt is a JSON true"):
        parse_create_order_answer(decode_answer(base + b',"amt":true}'))


texts = st.text(st.characters(codec="utf-8"), max_size=20)


@given(
    st.lists(st.tuples(texts, st.one_of(texts, st.integers(-(10**20), 10**20))), max_size=8).map(
        lambda pairs: [("code", 1), *pairs]
    )
)
def test_encode_then_decode_keeps_every_member(pairs: list[tuple[str, str | int]]) -> None:
    """Whatever the sandbox encodes, the client decodes to the same members, in order."""
    answer = decode_answer(encode_answer(pairs))
    assert answer.pairs == tuple((name, str(value)) for name, value in pairs)


_KINDS = ("string", "number", "null", "true", "false", "array", "object")
_NAMES = ("amt", "code", "mch_id", "msg", "status", "zz")


@given(
    st.lists(st.tuples(st.sampled_from(_NAMES), st.sampled_from(_KINDS)), max_size=10),
    st.integers(0, 10),
    st.permutations(_NAMES),
)
def test_the_kind_check_refuses_as_a_scan_per_name_would(
    members: list[tuple[str, str]], known_kinds: int, names: list[str]
) -> None:
    """The one-pass kind check refuses exactly what asking `kind_of` for each name in turn
    refused, with the same message: first occurrences only, a member without a known kind
    counted a string, and the first refused name in the caller's order."""
    answer = Answer(
        code=1,
        msg="",
        pairs=tuple((name, "") for name, _ in members),
        kinds=tuple(kind for _, kind in members)[:known_kinds],
    )
    expected = next(
        (
            f"the answer's {name} is a JSON {kind}, not a string or number"
            for name in names
            if (kind := answer.kind_of(name)) is not None
            and kind not in {"string", "number", "null"}
        ),
        None,
    )
    if expected is None:
        _check_kinds(answer, names)
    else:
        with pytest.raises(MalformedAnswer) as refused:
            _check_kinds(answer, names)
        assert str(refused.value) == expected
