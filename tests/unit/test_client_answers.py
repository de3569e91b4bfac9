"""Property tests: whatever the platform answers, decoding and parsing it raise only the
platform's own errors (`PlatformError` subclasses) or return, with bounded work.

Documents are generated as JSON *text*, so that what Python's json module would never write
(huge exponents, NaN, duplicate members, lone surrogate escapes, deep nesting) is generated too.
"""

from __future__ import annotations

import contextlib
import json
from typing import Any

import pytest
from hypothesis import HealthCheck, event, example, given, settings
from hypothesis import strategies as st

from shared.protocol.catalog import PayTypeCatalog
from shared.protocol.errors import MalformedAnswer, PlatformError
from shared.protocol.models import (
    MAX_ANSWER_DEPTH,
    OrderQueryAnswer,
    decode_answer,
    parse_create_order_answer,
    parse_report_answer,
    verify_answer,
)
from shared.protocol.signing import MerchantKey, sign

pytestmark = pytest.mark.unit

KEY = MerchantKey.from_secret("25e72d96d0ffe0bb74373344d986df3c")
PAY_TYPES = PayTypeCatalog.documented()
REPORT = (
    ("sign_type", "md5"), ("mch_id", "t9awtvk6dn"), ("service", "10"), ("mch_order", "o1"),
    ("amt", "1000"), ("mch_amt", "1000"), ("amt_type", "cny"), ("status", "2"),
    ("created_at", "1700000000"), ("success_at", "1700000001"),
)  # fmt: skip
NAMES = [
    *(name for name, _ in REPORT), "code", "msg", "sign", "mch_key", "origin_order", "call",
    "pay_type", "pay_info", "op_amt", "",
]  # fmt: skip

# The three reproductions: decimal.Overflow, a megabyte per member, RecursionError.
OVERFLOW = b'{"code":1,"msg":"ok","x":1e999999999}'
EXPANSION = b'{"code":1,"msg":"ok",' + b",".join(b'"x%d":1e999999' % i for i in range(8)) + b"}"
DEEP = b'{"code":1,"msg":"ok","x":' + b"[" * 500 + b"]" * 500 + b"}"


def _number(mantissa: int, fraction: int | None, exponent: int | None) -> str:
    text = str(mantissa)
    if fraction is not None:
        text += f".{fraction}"
    return text if exponent is None else f"{text}e{exponent}"


numbers = st.one_of(
    st.sampled_from(
        ["0", "-0", "1.50", "1e999999999", "-1E-999999999", "1e999999", "1.0", "1e3", "9" * 70]
    ),
    st.integers().map(str),
    st.builds(
        _number,
        st.integers(-(10**20), 10**20),
        st.none() | st.integers(0, 10**6),
        st.none() | st.integers(-(10**12), 10**12),
    ),
)
strings = st.one_of(
    st.text().map(json.dumps),  # ASCII escapes, lone surrogates included
    st.text(st.characters(codec="utf-8")).map(lambda s: json.dumps(s, ensure_ascii=False)),
    st.sampled_from(['"md5"', '"cny"', '"1"', '"2"', '"10"', '"t9awtvk6dn"', '"o1"', '"a&b=c"']),
)
scalars = st.one_of(
    numbers, strings, st.sampled_from(["true", "false", "null", "NaN", "Infinity", "-Infinity"])
)
names = st.one_of(st.sampled_from(NAMES), st.text(max_size=6))


def _object(members: list[tuple[str, str]]) -> str:
    return "{" + ",".join(f"{json.dumps(name)}:{value}" for name, value in members) + "}"


def _extend(children: st.SearchStrategy[str]) -> st.SearchStrategy[str]:
    return st.one_of(
        st.lists(children, max_size=4).map(lambda items: "[" + ",".join(items) + "]"),
        st.lists(st.tuples(names, children), max_size=4).map(_object),
    )


values = st.recursive(scalars, _extend, max_leaves=12)
deep_values = st.builds(
    lambda depth, bracket, inner: bracket[0] * depth + inner + bracket[1] * depth,
    st.integers(MAX_ANSWER_DEPTH - 2, 2000),
    st.sampled_from(["[]", ("{" + '"a":', "}")]),
    scalars,
)
# Objects whose members repeat names, put `code` anywhere or not at all, and hold any value.
objects = st.lists(st.tuples(names, values | deep_values), max_size=12).map(_object)
documents = st.one_of(objects, values, deep_values).map(str.encode)


def _check(body: bytes) -> None:
    """decode_answer raises only MalformedAnswer, and the answer's consumers only PlatformError;
    no member's text is longer than the body (nothing expands)."""
    try:
        answer = decode_answer(body)
    except MalformedAnswer:
        return
    assert sum(len(name) + len(value) for name, value in answer.pairs) <= len(body)
    assert len(answer.kinds) == len(answer.pairs)
    for consume in (
        lambda: verify_answer(answer, [KEY], include_envelope=False),
        lambda: verify_answer(answer, [KEY], include_envelope=True),
        lambda: parse_report_answer(
            OrderQueryAnswer, answer, [KEY], PAY_TYPES, include_envelope=False
        ),
        lambda: parse_create_order_answer(answer),
    ):
        with contextlib.suppress(PlatformError):
            consume()


@settings(suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=2000))
@example(OVERFLOW)
@example(EXPANSION)
@example(DEEP)
def test_any_bytes(body: bytes) -> None:
    """Arbitrary bytes, and the issue's three reproductions, raise only platform errors."""
    _check(body)


@settings(suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(documents)
@example(OVERFLOW)
@example(EXPANSION)
@example(DEEP)
@example(b'{"code":1,"code":"x","amt":1,"amt":2,"sign":[],"mch_key":{}}')
@example(b'[{"code":1}]')
def test_any_json_like_document(body: bytes) -> None:
    """JSON-ish documents of every shape raise only platform errors."""
    _check(body)


def _text(value: str) -> str:
    """What the platform's PHP concatenates for a JSON value written as `value` (independent of
    the decoder under test): strings as themselves, true as "1", false and null empty, anything
    else as its JSON text."""
    decoded = json.loads(value, parse_float=str, parse_int=str, parse_constant=str)
    if isinstance(decoded, str):
        return decoded
    if isinstance(decoded, bool) or decoded is None:
        return "1" if decoded else ""
    return value


@settings(suppress_health_check=[HealthCheck.too_slow])
@given(
    st.sampled_from([name for name, _ in REPORT]),
    scalars | values,
    st.lists(st.tuples(names, scalars), max_size=3),
)
def test_signed_reports_with_any_field(name: str, value: str, extra: list[Any]) -> None:
    """A correctly signed report with one field replaced by any JSON value (and extra members)
    either parses into sane values or raises only platform errors: it is never read loosely."""
    members = [(n, value if n == name else json.dumps(v)) for n, v in REPORT]
    members += [(n, v) for n, v in extra if n not in {"sign", "code", "msg"}]
    try:
        covered = {n: _text(v) for n, v in members}
        signature = sign(covered, KEY)
    except (ValueError, UnicodeError):
        return  # NaN and lone surrogates cannot be signed; _check covers them unsigned
    body = _object([("code", "1"), ("msg", '"ok"'), *members, ("sign", json.dumps(signature))])
    _check(body.encode())
    try:
        parsed = parse_report_answer(
            OrderQueryAnswer, decode_answer(body.encode()), [KEY], PAY_TYPES,
            include_envelope=False,
        )  # fmt: skip
    except PlatformError as exc:
        event(f"refused: {type(exc).__name__}")
        return
    event("parsed")
    report = parsed.report
    assert 0 <= report.amt <= 10**15
    assert 0 <= report.mch_amt <= 10**15
    assert report.status in {1, 2}
    assert report.pay_type in PAY_TYPES
