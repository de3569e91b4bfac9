"""Property tests over the ingress's parser and verifier together, as the handler uses them.

Whatever arrives - arbitrary bytes, any content type, any encoding of any field set, forged or
tampered forms - the outcome is a 4xx refusal or a notification that really verifies. Nothing
raises (which the handler would turn into a 500), and nothing unverified is accepted.
"""

from __future__ import annotations

import hashlib
from urllib.parse import quote

import orjson
import pytest
from hypothesis import HealthCheck, assume, example, given, settings
from hypothesis import strategies as st

from ingress.forms import parse_request
from ingress.refusals import Reason, Refusal
from ingress.verification import Verified, Verifier
from shared.merchants import parse_merchants
from shared.protocol.catalog import PayTypeCatalog
from shared.protocol.fields import FieldError
from shared.protocol.payment import parse_payment_report
from shared.protocol.signing import signed

pytestmark = pytest.mark.unit

MCH, KEY, OLD_KEY = "t9awtvk6dn", "25e72d96d0ffe0bb74373344d986df3c", "0a1b2c3d4e5f6071"
FENCED, FENCED_KEY = "m2fenced", "f00dfeedf00dfeedf00dfeedf00dfeed"
MERCHANTS = parse_merchants(
    {
        "merchants": {
            MCH: {"keys": [KEY, OLD_KEY]},
            FENCED: {"keys": [FENCED_KEY], "allow_from": ["10.9.8.0/24"]},
        }
    }
)
KEYS = {MCH: (KEY, OLD_KEY), FENCED: (FENCED_KEY,)}
PAY_TYPES = frozenset(PayTypeCatalog.documented().by_code)
VERIFIER = Verifier(MERCHANTS, PAY_TYPES)
LIMIT = 8192
BOUNDARY = "fuzzBoundary0123456789"
FORM = "application/x-www-form-urlencoded"
MULTIPART = f"multipart/form-data; boundary={BOUNDARY}"
JSON = "application/json"
FUZZ = settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def oracle_sign(fields: dict[str, str], key: str) -> str:
    """The document's rule, written again independently of shared.protocol.signing."""
    pairs = sorted((k, v) for k, v in {**fields, "mch_key": key}.items() if k != "sign" and v)
    return hashlib.md5("&".join(f"{k}={v}" for k, v in pairs).encode()).hexdigest()  # noqa: S324


def take(body: bytes, content_type: str | None, query: str = "", peer: str | None = "127.0.0.1"):
    """What the handler does with a request, minus the network."""
    form = parse_request(body, content_type, query, LIMIT)
    if isinstance(form, Refusal):
        return form
    return VERIFIER.check(form, peer)


def assert_sound(result: object) -> None:
    """A refusal is a 4xx; an acceptance really verifies under one of the merchant's keys."""
    if isinstance(result, Refusal):
        assert 400 <= result.status < 500
        return
    assert isinstance(result, Verified)
    keys = KEYS[result.fields["mch_id"]]
    assert any(oracle_sign(result.fields, key) == result.fields["sign"].lower() for key in keys)
    assert "mch_key" not in result.fields


CONTENT_TYPES = st.one_of(
    st.sampled_from([FORM, MULTIPART, JSON, f"{FORM}; charset=utf-8", "text/plain"]),
    st.text(max_size=60),
    st.none(),
)


@FUZZ
@given(body=st.binary(max_size=LIMIT + 64), content_type=CONTENT_TYPES, query=st.text(max_size=8))
def test_arbitrary_bytes_never_crash_and_never_verify(
    body: bytes, content_type: str | None, query: str
) -> None:
    """Random bodies under any content type are refused with a 4xx (they cannot carry a valid
    signature), and parsing never raises."""
    result = take(body, content_type, query)
    assert_sound(result)


def notification(mch_id: str) -> dict[str, str]:
    return {
        "mch_id": mch_id,
        "service": "10",
        "mch_order": "o-1",
        "amt": "1000",
        "mch_amt": "1000",
        "sign_type": "md5",
        "amt_type": "cny",
        "status": "2",
        "created_at": "1512541824",
    }


NAMES = st.from_regex(r"[A-Za-z0-9_.\-]{1,20}", fullmatch=True)
VALUES = st.one_of(st.from_regex(r"[0-9]{1,4}", fullmatch=True), st.text(max_size=30))


@st.composite
def forms(draw: st.DrawFn) -> tuple[dict[str, str], bool]:
    """A notification, signed right, wrong or not at all, then maybe tampered with.
    Returns the fields and whether they are exactly as one of the merchant's keys signed them."""
    mch_id = draw(st.sampled_from([MCH, MCH, MCH, FENCED, "nobody"]))
    fields = notification(mch_id)
    fields.update(draw(st.dictionaries(st.sampled_from([*fields, "call", "origin_order"]), VALUES,
                                       max_size=2)))  # fmt: skip
    fields.update(draw(st.dictionaries(NAMES, VALUES, max_size=2)))
    fields.pop("sign", None)
    fields.pop("mch_key", None)
    key = draw(st.sampled_from([KEY, OLD_KEY, FENCED_KEY, "wrong-key", None]))
    form = dict(fields) if key is None else signed(fields, key)
    untouched = True
    for _ in range(draw(st.integers(0, 2))):
        name = draw(st.sampled_from(sorted(form)) | NAMES)
        value = None if draw(st.booleans()) else draw(VALUES)
        untouched &= tamper(form, name, value)
    return form, untouched and key in KEYS.get(mch_id, ())


def tamper(form: dict[str, str], name: str, value: str | None) -> bool:
    """Set `name` to `value` (drop it when None); whether the form still reads as signed.
    Adding or dropping an empty field changes nothing the signature covers; emptying `sign`
    does change the form (it then has no signature): that once counted as untouched."""
    before = form.pop(name, "") if value is None else form.get(name, "")
    if value is not None:
        form[name] = value
    return before == ("" if value is None else value)


def test_emptying_the_sign_is_tampering() -> None:
    """The generator's bookkeeping, on the example Hypothesis found (issue 15)."""
    form = signed({**notification(MCH), "0": "0"}, KEY)
    assert not tamper(form, "sign", "")
    assert tamper(form, "extra", "")  # an empty field is outside the signature
    assert not tamper(form, "amt", "1")


def urlencoded(form: dict[str, str], escape_all: bool) -> bytes:
    safe = "" if escape_all else "-_.~!*'(),:;/@{}"
    return "&".join(
        f"{quote(k, safe=safe)}={quote(v, safe=safe)}" for k, v in form.items()
    ).encode()


def multipart(form: dict[str, str]) -> bytes:
    parts = "".join(
        f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n{value}\r\n'
        for name, value in form.items()
    )
    return f"{parts}--{BOUNDARY}--\r\n".encode()


ENCODINGS = st.sampled_from(["urlencoded", "urlencoded-escaped", "plus", "multipart", "json"])


def encode(form: dict[str, str], encoding: str) -> tuple[bytes, str]:
    if encoding == "multipart":
        return multipart(form), MULTIPART
    if encoding == "json":
        return orjson.dumps(form), JSON
    if encoding == "plus":
        pairs = (f"{quote(k)}={quote(v, safe='')}".replace("%20", "+") for k, v in form.items())
        return "&".join(pairs).encode(), FORM
    return urlencoded(form, escape_all=encoding.endswith("escaped")), FORM


@FUZZ
@given(drawn=forms(), encoding=ENCODINGS, peer=st.sampled_from(["127.0.0.1", "10.9.8.7", None]))
@example(  # Hypothesis's falsifying example of issue 15: signed, then `sign` emptied
    drawn=({**signed({**notification(MCH), "0": "0"}, KEY), "sign": ""}, False),
    encoding="urlencoded",
    peer="127.0.0.1",
)
def test_any_encoding_of_any_field_set_reads_back_and_only_verified_forms_pass(
    drawn: tuple[dict[str, str], bool], encoding: str, peer: str | None
) -> None:
    """Each encoding of a form reads back as exactly that form; the verifier then accepts it
    only if it verifies under the merchant's key, and accepts every such valid form."""
    form, untouched = drawn
    assume(BOUNDARY not in "".join(form.values()))
    body, content_type = encode(form, encoding)
    assume(len(body) <= LIMIT)
    assert parse_request(body, content_type, "", LIMIT) == form
    result = take(body, content_type, peer=peer)
    assert_sound(result)
    fenced_out = form.get("mch_id") == FENCED and peer != "10.9.8.7"
    if isinstance(result, Refusal) and untouched and not fenced_out:
        # Signed as sent and still refused: only for the merchant, or a field, its rules refuse.
        assert result == refusal_by_the_field_rules(form), result


def refusal_by_the_field_rules(form: dict[str, str]) -> Refusal:
    """Why a form signed right is refused: its mch_id names no merchant, or a field breaks its
    rule (the first one `parse_payment_report` finds, with the rule it names)."""
    mch_id = form.get("mch_id", "")
    if not mch_id:
        return Refusal(Reason.INVALID_FIELD, field="mch_id", rule="is required")
    if mch_id not in MERCHANTS:
        return Refusal(Reason.UNKNOWN_MERCHANT, field="mch_id")
    try:
        parse_payment_report(form, PAY_TYPES)
    except FieldError as exc:
        return Refusal(Reason.INVALID_FIELD, field=exc.field, rule=exc.rule)
    raise AssertionError(f"a valid, signed form was refused: {form}")


@FUZZ
@given(
    form=st.dictionaries(st.text(max_size=10), st.text(max_size=10), max_size=6),
    encoding=ENCODINGS,
)
def test_arbitrary_names_and_values_in_every_encoding_are_sound(
    form: dict[str, str], encoding: str
) -> None:
    """Names outside the alphabet, empty names, control characters: refused or read back, and
    never accepted unless verified."""
    assume(BOUNDARY not in "".join(form.values()) and all('"' not in k for k in form))
    body, content_type = encode(form, encoding)
    assert_sound(take(body, content_type))


SAFE_TEXT = st.text(
    st.characters(codec="utf-8", exclude_categories=["Cc", "Cs"], exclude_characters="&="),
    min_size=1,
    max_size=20,
)


@FUZZ
@given(
    call=SAFE_TEXT,
    extra=st.dictionaries(st.from_regex(r"x_[a-z]{1,8}", fullmatch=True), SAFE_TEXT, max_size=3),
    key=st.sampled_from([KEY, OLD_KEY]),
    encoding=ENCODINGS,
)
def test_every_valid_signed_notification_is_accepted_in_every_encoding(
    call: str, extra: dict[str, str], key: str, encoding: str
) -> None:
    """The other direction: a valid notification signed with an active key is never refused,
    whichever encoding and whatever (valid) text it carries."""
    form = signed({**notification(MCH), "call": call, **extra}, key)
    assume(BOUNDARY not in "".join(form.values()))
    body, content_type = encode(form, encoding)
    result = take(body, content_type)
    assert isinstance(result, Verified), result
    assert result.fields == form
