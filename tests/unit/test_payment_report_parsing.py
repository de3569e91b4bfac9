"""parse_payment_report's shortcuts keep its answers: no unknown fields gives no extras, unknown
ones are still validated and kept sorted, and an empty optional field counts as absent."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from shared.protocol.catalog import DOCUMENTED_PAY_TYPES
from shared.protocol.fields import FieldError
from shared.protocol.payment import KNOWN_FIELDS, parse_payment_report

pytestmark = pytest.mark.unit

PAY_TYPES = frozenset(p.code for p in DOCUMENTED_PAY_TYPES)
FORM = {
    "mch_id": "1900000001", "service": str(min(PAY_TYPES)), "mch_order": "o-1", "amt": "100",
    "mch_amt": "100", "sign_type": "md5", "amt_type": "cny", "status": "2",
    "created_at": "1795766400", "success_at": "1795766461", "sign": "0" * 32,
}  # fmt: skip


def test_known_fields_only_have_no_extras() -> None:
    """Only documented fields: `extra` is empty."""
    assert parse_payment_report(FORM, PAY_TYPES).extra == ()


def test_unknown_fields_are_kept_sorted() -> None:
    """Fields the document does not name travel along, sorted by name."""
    report = parse_payment_report({**FORM, "zeta": "z", "alpha": "a"}, PAY_TYPES)
    assert report.extra == (("alpha", "a"), ("zeta", "z"))


def test_an_unknown_field_is_still_validated() -> None:
    """An unknown field holding `&` is refused, naming that field."""
    with pytest.raises(FieldError) as caught:
        parse_payment_report({**FORM, "remark": "a&b"}, PAY_TYPES)
    assert (caught.value.field, caught.value.rule) == ("remark", "must not contain '&' or '='")


@pytest.mark.parametrize("name", ["success_at", "origin_order", "call"])
def test_an_empty_optional_field_is_absent(name: str) -> None:
    """`name=` (empty) reads as the field left out."""
    report = parse_payment_report({**FORM, name: ""}, PAY_TYPES)
    assert getattr(report, name) is None


@given(st.dictionaries(st.from_regex(r"[a-z_]{1,12}", fullmatch=True), st.text(max_size=8)))
def test_extras_are_exactly_the_unknown_fields(added: dict[str, str]) -> None:
    """Whatever is added, `extra` holds exactly the unknown names (or the form is refused)."""
    form = {**FORM, **{k: v for k, v in added.items() if k not in KNOWN_FIELDS and k != "mch_key"}}
    try:
        report = parse_payment_report(form, PAY_TYPES)
    except FieldError:
        return
    assert report.extra == tuple(sorted((k, v) for k, v in form.items() if k not in KNOWN_FIELDS))
