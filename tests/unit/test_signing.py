"""The platform's MD5 signature: the document's vector and properties that must always hold."""

from __future__ import annotations

import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

from shared.protocol.signing import (
    KEY_FIELD,
    SIGN_FIELD,
    MerchantKey,
    SignatureError,
    sign,
    signed,
    signing_string,
    verify,
)

pytestmark = pytest.mark.unit

DOC_KEY = "25e72d96d0ffe0bb74373344d986df3c"
DOC_SIGN = "5883eb7db6fc28286f440b291c4bc24a"
DOC_FIELDS = {
    "mch_order": "20171206142839049",
    "amt": "1",
    "client_ip": "192.168.1.176",
    "remark": "产品备注",
    "notify_url": "https://app.zlsky.me/notify.php",
    "call": "{user:1}",
    "mch_id": "t9awtvk6dn",
    "sign_type": "md5",
    "created_at": "1512541824",
}
DOC_QUERY_STRING = (
    "amt=1&call={user:1}&client_ip=192.168.1.176&created_at=1512541824&mch_id=t9awtvk6dn"
    "&mch_key=25e72d96d0ffe0bb74373344d986df3c&mch_order=20171206142839049"
    "&notify_url=https://app.zlsky.me/notify.php&remark=产品备注&sign_type=md5"
)

names = st.text(alphabet="abcdefghijklmnopqrstuvwxyz_", min_size=1, max_size=12).filter(
    lambda n: n not in {SIGN_FIELD, KEY_FIELD}
)
values = st.text(st.characters(codec="utf-8"), max_size=40)
non_empty = values.filter(bool)
forms = st.dictionaries(names, values, max_size=12)
secrets = st.text(st.characters(codec="utf-8"), min_size=1, max_size=40)


def test_document_vector() -> None:
    """The document's example fields and key give its published signature and query string."""
    assert signing_string(DOC_FIELDS, DOC_KEY) == DOC_QUERY_STRING
    assert sign(DOC_FIELDS, DOC_KEY) == DOC_SIGN
    assert sign(DOC_FIELDS, MerchantKey.from_secret(DOC_KEY)) == DOC_SIGN


def test_document_vector_verifies_in_either_hex_case() -> None:
    """The document's signed form verifies with the sign in lower or upper case."""
    key = MerchantKey.from_secret(DOC_KEY)
    assert verify({**DOC_FIELDS, "sign": DOC_SIGN}, [key]) == key
    assert verify({**DOC_FIELDS, "sign": DOC_SIGN.upper()}, [key]) == key


def test_signed_form_leaves_out_empty_values_and_adds_sign() -> None:
    """`signed` drops empty optionals (so they are never sent) and appends the sign."""
    form = signed({**DOC_FIELDS, "success_at": "", "origin_order": ""}, DOC_KEY)
    assert form == {**DOC_FIELDS, "sign": DOC_SIGN}


def test_zero_is_a_value_and_is_signed() -> None:
    """ "0" is not empty: it changes the signature, unlike an empty string."""
    assert sign({**DOC_FIELDS, "user_level": ""}, DOC_KEY) == DOC_SIGN
    assert sign({**DOC_FIELDS, "user_level": "0"}, DOC_KEY) != DOC_SIGN


def test_form_carrying_mch_key_is_refused() -> None:
    """A form with its own `mch_key` field could choose the key: refused by sign and verify."""
    key = MerchantKey.from_secret(DOC_KEY)
    with pytest.raises(SignatureError) as caught:
        verify({**DOC_FIELDS, KEY_FIELD: "chosen", "sign": DOC_SIGN}, [key])
    assert caught.value.reason == "key_field_present"
    with pytest.raises(SignatureError):
        sign({**DOC_FIELDS, KEY_FIELD: "chosen"}, key)


@pytest.mark.parametrize(
    ("given_sign", "reason"),
    [
        ("", "sign_missing"),
        ("5883eb7db6fc28286f440b291c4bc24", "sign_malformed"),
        ("5883eb7db6fc28286f440b291c4bc24g", "sign_malformed"),
        ("0" * 32, "sign_mismatch"),
    ],
)
def test_bad_signs_are_named(given_sign: str, reason: str) -> None:
    """Missing, malformed and wrong signatures each fail with their own reason."""
    with pytest.raises(SignatureError) as caught:
        verify({**DOC_FIELDS, "sign": given_sign}, [MerchantKey.from_secret(DOC_KEY)])
    assert caught.value.reason == reason


def test_key_rotation_names_the_matching_key() -> None:
    """With several active keys, verification says which one matched."""
    current = MerchantKey.from_secret("new-key")
    previous = MerchantKey.from_secret(DOC_KEY)
    form = {**DOC_FIELDS, "sign": DOC_SIGN}
    assert verify(form, [current, previous]).key_id == previous.key_id
    assert verify(signed(DOC_FIELDS, current), [current, previous]).key_id == current.key_id
    with pytest.raises(SignatureError):
        verify(form, [current])


def test_key_never_shows_in_repr_or_errors() -> None:
    """A MerchantKey's repr and a mismatch's message do not contain the secret."""
    key = MerchantKey.from_secret(DOC_KEY)
    assert DOC_KEY not in repr(key)
    with pytest.raises(SignatureError) as caught:
        verify({**DOC_FIELDS, "sign": "0" * 32}, [key])
    assert DOC_KEY not in str(caught.value)


@given(form=forms, secret=secrets)
def test_sign_then_verify_holds(form: dict[str, str], secret: str) -> None:
    """Any form signed with a key verifies with that key."""
    key = MerchantKey.from_secret(secret)
    assert verify(signed(form, key), [key]) == key


@given(form=forms, secret=secrets, data=st.data())
def test_changing_a_value_breaks_it(form: dict[str, str], secret: str, data: st.DataObject) -> None:
    """Changing any field to another non-empty value breaks the signature."""
    assume(any(form.values()))
    key = MerchantKey.from_secret(secret)
    sent = signed(form, key)
    name = data.draw(st.sampled_from(sorted(n for n in sent if n != SIGN_FIELD)))
    new = data.draw(non_empty.filter(lambda v: v != sent[name]))
    with pytest.raises(SignatureError):
        verify({**sent, name: new}, [key])


@given(form=forms, secret=secrets, name=names, value=non_empty)
def test_adding_a_field_breaks_it(form: dict[str, str], secret: str, name: str, value: str) -> None:
    """Adding any non-empty field breaks the signature."""
    assume(name not in form)
    key = MerchantKey.from_secret(secret)
    with pytest.raises(SignatureError):
        verify({**signed(form, key), name: value}, [key])


@given(form=forms, secret=secrets, data=st.data())
def test_dropping_a_field_breaks_it(form: dict[str, str], secret: str, data: st.DataObject) -> None:
    """Dropping any (non-empty) field breaks the signature."""
    key = MerchantKey.from_secret(secret)
    sent = signed(form, key)
    assume(len(sent) > 1)
    name = data.draw(st.sampled_from(sorted(n for n in sent if n != SIGN_FIELD)))
    with pytest.raises(SignatureError):
        verify({n: v for n, v in sent.items() if n != name}, [key])


@given(
    form=st.dictionaries(names, st.text(st.characters(max_codepoint=127), min_size=1), min_size=1),
    secret=secrets,
    data=st.data(),
)
def test_flipping_any_byte_breaks_it(
    form: dict[str, str], secret: str, data: st.DataObject
) -> None:
    """Flipping one bit of any byte of any value (or of the sign) breaks the signature."""
    key = MerchantKey.from_secret(secret)
    sent = signed(form, key)
    name = data.draw(st.sampled_from(sorted(sent)))
    raw = bytearray(sent[name].encode())
    index = data.draw(st.integers(0, len(raw) - 1))
    raw[index] ^= 1 << data.draw(st.integers(0, 6))
    flipped = raw.decode()
    if name == SIGN_FIELD:
        assume(flipped.lower() != sent[name])  # a case flip of a hex letter is the same sign
    with pytest.raises(SignatureError):
        verify({**sent, name: flipped}, [key])


@given(form=forms, secret=secrets)
def test_upper_case_sign_is_accepted(form: dict[str, str], secret: str) -> None:
    """Either hex case of a correct sign verifies."""
    key = MerchantKey.from_secret(secret)
    sent = signed(form, key)
    assert verify({**sent, SIGN_FIELD: sent[SIGN_FIELD].upper()}, [key]) == key
