"""Strict validation of values that arrive from outside: integers, text, choices."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from shared.protocol.fields import (
    MAX_INT_DIGITS,
    FieldError,
    check_choice,
    check_text,
    parse_int,
)

pytestmark = pytest.mark.unit


@pytest.mark.parametrize("value", ["0", "1", "1512541824", "9" * MAX_INT_DIGITS])
def test_plain_digits_parse(value: str) -> None:
    """Plain ASCII digits parse to their integer."""
    assert parse_int("amt", value) == int(value)


@pytest.mark.parametrize(
    "value",
    [
        "",
        "+1",
        "-1",
        " 1",
        "1 ",
        "1_000",
        "1.0",
        "1e3",
        "0x10",
        "١٢",
        "\uff11\uff12",  # fullwidth digits
        "9" * (MAX_INT_DIGITS + 1),
    ],
)
def test_anything_but_plain_digits_is_refused(value: str) -> None:
    """Signs, spaces, underscores, decimals, other scripts' digits and huge numbers are refused."""
    with pytest.raises(FieldError) as caught:
        parse_int("amt", value)
    assert caught.value.field == "amt"


def test_integer_range_is_enforced() -> None:
    """`minimum` and `maximum` bound the value; the error names the rule, not the value."""
    with pytest.raises(FieldError, match="at least 1"):
        parse_int("status", "0", minimum=1)
    with pytest.raises(FieldError, match="at most 2") as caught:
        parse_int("status", "3", minimum=1, maximum=2)
    assert "3" not in caught.value.rule.replace("at most 2", "")


@given(st.integers(min_value=0, max_value=10**MAX_INT_DIGITS - 1))
def test_every_in_range_integer_round_trips(number: int) -> None:
    """str(n) always parses back to n."""
    assert parse_int("amt", str(number)) == number


@pytest.mark.parametrize("field", ["call", "remark", "mch_order", "origin_order", "mch_id"])
@pytest.mark.parametrize("value", ["a&b", "a=b", "&", "="])
def test_echoed_fields_refuse_separators(field: str, value: str) -> None:
    """Echoed fields may not hold `&` or `=`, which would blur the raw signed string."""
    with pytest.raises(FieldError, match="'&' or '='"):
        check_text(field, value)


@pytest.mark.parametrize("field", ["remark", "attach", "amt_type", "x"])
def test_every_field_of_a_signed_report_refuses_separators(field: str) -> None:
    """Issue 10, hole 6: in a signed report no field may hold `&` or `=`."""
    with pytest.raises(FieldError, match="'&' or '='"):
        check_text(field, "a=b", signed=True)
    assert check_text(field, "ab", signed=True) == "ab"


def test_other_text_fields_may_hold_separators() -> None:
    """A URL's query string is legitimate in fields that are not echoed."""
    url = "https://shop.example/notify?a=1&b=2"
    assert check_text("notify_url", url) == url


@pytest.mark.parametrize(
    "value", ["a\x00b", "line\nbreak", "tab\there", "del\x7f", "c1\x85", "\ud800"]
)
def test_control_characters_are_refused(value: str) -> None:
    """C0, DEL, C1 controls and lone surrogates are refused in any text field."""
    with pytest.raises(FieldError, match="control"):
        check_text("remark", value)


def test_length_is_counted_in_characters() -> None:
    """Limits count characters, so 32 Chinese characters fit a string(32) remark."""
    assert check_text("remark", "备" * 32, max_length=32)
    with pytest.raises(FieldError, match="at most 32"):
        check_text("remark", "备" * 33, max_length=32)


def test_required_and_optional_empty_text() -> None:
    """Empty text is refused when required and accepted when optional."""
    with pytest.raises(FieldError, match="empty"):
        check_text("remark", "")
    assert check_text("call", "", required=False) == ""


def test_choice() -> None:
    """A choice accepts only the listed values and names them in the rule."""
    assert check_choice("sign_type", "md5", frozenset({"md5"})) == "md5"
    with pytest.raises(FieldError, match="one of md5"):
        check_choice("sign_type", "MD5", frozenset({"md5"}))
