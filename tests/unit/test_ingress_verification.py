"""The ingress's verifier: which forms are authentic, valid notifications, and why not."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ingress.refusals import STATUS, Reason, Refusal
from ingress.verification import Verified, Verifier
from shared.merchants import parse_merchants
from shared.protocol.catalog import PayTypeCatalog
from shared.protocol.signing import MerchantKey, signed

pytestmark = pytest.mark.unit

MCH = "t9awtvk6dn"
KEY = "25e72d96d0ffe0bb74373344d986df3c"
OLD_KEY = "0a1b2c3d4e5f60718293a4b5c6d7e8f9"
FENCED = "m2fenced"
FENCED_KEY = "f00dfeedf00dfeedf00dfeedf00dfeed"
MERCHANTS = parse_merchants(
    {
        "merchants": {
            MCH: {"keys": [KEY, OLD_KEY]},
            FENCED: {"keys": [FENCED_KEY], "allow_from": ["10.9.8.0/24", "2001:db8::/32"]},
        }
    }
)
VERIFIER = Verifier(MERCHANTS, frozenset(PayTypeCatalog.documented().by_code))
PEER = "127.0.0.1"


def notification(mch_id: str = MCH, **overrides: str) -> dict[str, str]:
    fields = {
        "mch_id": mch_id,
        "service": "10",
        "mch_order": "20171206142839049",
        "amt": "1000",
        "mch_amt": "1000",
        "sign_type": "md5",
        "amt_type": "cny",
        "status": "2",
        "created_at": "1512541824",
        "success_at": "1512541900",
    }
    fields.update(overrides)
    return fields


def refusal_of(result: object) -> Refusal:
    assert isinstance(result, Refusal), result
    return result


def test_a_signed_notification_verifies_under_the_current_key() -> None:
    """The verified result keeps the fields as received and names the key by id only."""
    form = signed(notification(), KEY)
    result = VERIFIER.check(form, PEER)
    assert isinstance(result, Verified)
    assert result.fields is form
    assert result.key_id == MerchantKey.from_secret(KEY).key_id
    assert KEY not in result.key_id
    assert result.order_key == f"{MCH}:20171206142839049"
    assert result.report.paid


def test_the_previous_key_still_verifies_and_is_named() -> None:
    """During key rotation both keys verify; the envelope says which one did."""
    result = VERIFIER.check(signed(notification(), OLD_KEY), PEER)
    assert isinstance(result, Verified)
    assert result.key_id == MerchantKey.from_secret(OLD_KEY).key_id


def test_upper_case_signature_verifies() -> None:
    """NOTES.md: either hex case is accepted."""
    form = signed(notification(), KEY)
    form["sign"] = form["sign"].upper()
    assert isinstance(VERIFIER.check(form, PEER), Verified)


def test_unknown_extra_fields_are_signed_over_and_passed_on() -> None:
    """A field the document does not name (added by the platform later) is kept, not refused."""
    form = signed(notification(new_field="v2", origin_order="o-1"), KEY)
    result = VERIFIER.check(form, PEER)
    assert isinstance(result, Verified)
    assert result.fields["new_field"] == "v2"
    assert result.report.repeat


def test_unknown_merchant_is_404() -> None:
    """A form for a merchant the ingress does not know."""
    result = refusal_of(VERIFIER.check(signed(notification("nobody"), KEY), PEER))
    assert (result.status, result.reason) == (404, Reason.UNKNOWN_MERCHANT)


def test_missing_mch_id_is_400() -> None:
    """Without mch_id there is no key to check against."""
    form = signed(notification(), KEY)
    del form["mch_id"]
    result = refusal_of(VERIFIER.check(form, PEER))
    assert (result.status, result.reason, result.field) == (400, Reason.INVALID_FIELD, "mch_id")


def test_per_merchant_url_must_match_the_form() -> None:
    """`/notify/{mch_id}`: an unknown URL merchant is 404, a different form merchant is 400."""
    form = signed(notification(), KEY)
    assert isinstance(VERIFIER.check(form, PEER, url_mch_id=MCH), Verified)
    unknown = refusal_of(VERIFIER.check(form, PEER, url_mch_id="nobody"))
    assert (unknown.status, unknown.reason) == (404, Reason.UNKNOWN_MERCHANT)
    mismatch = refusal_of(VERIFIER.check(form, "10.9.8.7", url_mch_id=FENCED))
    assert (mismatch.status, mismatch.reason) == (400, Reason.MCH_ID_MISMATCH)


def test_mch_key_field_is_refused_before_anything_else() -> None:
    """A form carrying `mch_key` is refused, whatever else it holds."""
    form = {**signed(notification(), KEY), "mch_key": "anything"}
    result = refusal_of(VERIFIER.check(form, PEER))
    assert (result.status, result.reason, result.field) == (
        400,
        Reason.KEY_FIELD_PRESENT,
        "mch_key",
    )


@pytest.mark.parametrize(
    ("sign", "reason"),
    [
        (None, Reason.SIGN_MISSING),
        ("", Reason.SIGN_MISSING),
        ("xyz", Reason.SIGN_MALFORMED),
        ("g" * 32, Reason.SIGN_MALFORMED),
        ("0" * 32, Reason.SIGN_MISMATCH),
    ],
)
def test_bad_signatures_are_401(sign: str | None, reason: Reason) -> None:
    """Missing, malformed and wrong signatures are told apart, all with 401."""
    form = notification()
    if sign is not None:
        form["sign"] = sign
    result = refusal_of(VERIFIER.check(form, PEER))
    assert (result.status, result.reason) == (401, reason)


def test_signature_of_another_merchants_key_is_401() -> None:
    """A form signed with the wrong merchant's key does not verify."""
    result = refusal_of(VERIFIER.check(signed(notification(), FENCED_KEY), PEER))
    assert result.reason is Reason.SIGN_MISMATCH


@pytest.mark.parametrize("peer", ["10.9.8.1", "10.9.8.254", "2001:db8::1"])
def test_allow_from_admits_its_networks(peer: str) -> None:
    """A merchant with allow_from accepts notifications from inside those networks."""
    assert isinstance(VERIFIER.check(signed(notification(FENCED), FENCED_KEY), peer), Verified)


@pytest.mark.parametrize("peer", ["10.9.9.1", "127.0.0.1", None, "not-an-ip"])
def test_allow_from_refuses_other_sources_with_403(peer: str | None) -> None:
    """Outside the allow-list (or with no known peer) the notification is refused, even signed."""
    result = refusal_of(VERIFIER.check(signed(notification(FENCED), FENCED_KEY), peer))
    assert (result.status, result.reason) == (403, Reason.PEER_NOT_ALLOWED)


@pytest.mark.parametrize(
    ("overrides", "field"),
    [
        ({"status": "3"}, "status"),
        ({"amt": "1.5"}, "amt"),
        ({"amt": "-1"}, "amt"),
        ({"amt": "١٢"}, "amt"),
        ({"service": "99"}, "service"),
        ({"sign_type": "sha1"}, "sign_type"),
        ({"mch_order": "a&b=c"}, "mch_order"),
        ({"call": "x=1"}, "call"),
        ({"remark_x": "line\nbreak"}, "remark_x"),
        ({"amt_type": ""}, "amt_type"),
        # Issue 10, hole 6: the document's only amount type, and no separator in any field.
        ({"amt_type": "usd"}, "amt_type"),
        ({"amt_type": "cny&a"}, "amt_type"),
        ({"amt_type": "CNY"}, "amt_type"),
        ({"attach": "a&b"}, "attach"),
        ({"remark": "x=1"}, "remark"),
        ({"zz": "="}, "zz"),
        ({"remark": "tab\there"}, "remark"),
        ({"origin_order": "o&1"}, "origin_order"),
    ],
)
def test_invalid_fields_under_a_valid_signature_are_400(
    overrides: dict[str, str], field: str
) -> None:
    """A valid signature does not make a field valid: every field is checked strictly."""
    result = refusal_of(VERIFIER.check(signed(notification(**overrides), KEY), PEER))
    assert (result.status, result.reason, result.field) == (400, Reason.INVALID_FIELD, field)
    assert result.rule


def test_a_signed_form_cannot_be_re_cut_into_another_with_the_same_signature() -> None:
    """Issue 10, hole 6: the signed string joins `name=value` pairs with `&`, so a value holding
    `&...=` signs exactly like a form with one more field. The cut with a separator is refused."""
    # `b` sorts between amt_type and created_at, so both forms give one signed string.
    form = signed(notification(amt_type="cny&b=x"), KEY)
    recut = {**form, "amt_type": "cny", "b": "x"}
    assert recut["sign"] == signed({k: v for k, v in recut.items() if k != "sign"}, KEY)["sign"]
    result = refusal_of(VERIFIER.check(form, PEER))
    assert (result.reason, result.field) == (Reason.INVALID_FIELD, "amt_type")
    # Of the two readings of one signed string, only the one without separators in values is
    # ever taken, so a signature means one form.
    assert isinstance(VERIFIER.check(recut, PEER), Verified)


def test_every_reason_has_a_status_and_only_kafka_reasons_are_5xx() -> None:
    """The status table is complete; 503 is the only server-side status a refusal can have."""
    assert set(STATUS) == set(Reason)
    for reason, status in STATUS.items():
        assert 400 <= status < 500 or status == 503, reason


FIELD_NAMES = st.sampled_from(sorted(notification()))


@given(name=FIELD_NAMES, data=st.data())
def test_changing_any_field_breaks_the_signature(name: str, data: st.DataObject) -> None:
    """Any change to any signed field's value is refused as sign_mismatch (401): the signature
    is checked before the fields' rules, so a value that is also invalid changes nothing. Another
    mch_id is another merchant: unknown (404), or outside its allow_from (403)."""
    form = signed(notification(), KEY)
    new = data.draw(st.text(min_size=1, max_size=20).filter(lambda v: v != form[name]))
    form[name] = new
    result = refusal_of(VERIFIER.check(form, PEER))
    if name != "mch_id":
        expected = Reason.SIGN_MISMATCH
    else:
        expected = Reason.PEER_NOT_ALLOWED if new == FENCED else Reason.UNKNOWN_MERCHANT
    assert result.reason is expected, (name, new, result)


@given(extra=st.from_regex(r"[a-z_]{1,12}", fullmatch=True), value=st.text(min_size=1))
def test_adding_a_non_empty_field_breaks_the_signature(extra: str, value: str) -> None:
    """Every non-empty field is covered by the signature, named in the document or not."""
    form = signed(notification(), KEY)
    if extra in form:
        return
    form[extra] = value
    assert isinstance(VERIFIER.check(form, PEER), Refusal)
