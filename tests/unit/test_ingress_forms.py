"""The ingress's request parser: body bytes, content type and query string -> fields or refusal."""

from __future__ import annotations

import pytest

from ingress.forms import parse_request
from ingress.refusals import Reason, Refusal

pytestmark = pytest.mark.unit

FORM = "application/x-www-form-urlencoded"
LIMIT = 8192


def parse(body: bytes, content_type: str | None = FORM, query: str = "") -> object:
    return parse_request(body, content_type, query, LIMIT)


def refused(result: object, reason: Reason) -> Refusal:
    assert isinstance(result, Refusal), result
    assert result.reason is reason, result
    return result


# -- urlencoded ------------------------------------------------------------------------------


def test_urlencoded_fields_in_order() -> None:
    """A plain form gives its fields, in the order received."""
    result = parse(b"mch_id=m1&amt=100&sign=abc")
    assert result == {"mch_id": "m1", "amt": "100", "sign": "abc"}
    assert isinstance(result, dict)
    assert list(result) == ["mch_id", "amt", "sign"]


def test_urlencoded_decodes_plus_and_percent_escapes_as_utf8() -> None:
    """`+` is a space and %XX escapes are UTF-8 bytes, as PHP's http_build_query writes them."""
    result = parse(b"remark=%E4%BA%A7%E5%93%81+x&call=%7Buser%3A1%7D")
    assert result == {"remark": "产品 x", "call": "{user:1}"}


def test_urlencoded_raw_utf8_is_accepted() -> None:
    """Unescaped UTF-8 bytes in a value are taken as text."""
    assert parse("remark=产品".encode()) == {"remark": "产品"}


def test_urlencoded_keeps_empty_values_and_skips_empty_segments() -> None:
    """`a=` is an empty field (left out of the signature later); `&&` and a trailing `&` carry
    no field at all."""
    assert parse(b"a=&&b=2&") == {"a": "", "b": "2"}


def test_empty_body_is_an_empty_form() -> None:
    """No body, no fields: the verifier then refuses it for the missing mch_id."""
    assert parse(b"") == {}


def test_duplicate_field_is_refused_by_name() -> None:
    """A field given twice could be read two ways; it is refused, naming the field."""
    refusal = refused(parse(b"amt=1&mch_id=m&amt=2"), Reason.DUPLICATE_FIELD)
    assert refusal.field == "amt"
    assert refusal.status == 400


def test_duplicate_hidden_by_escaping_is_refused() -> None:
    """`amt` and `%61mt` are the same name once decoded."""
    refused(parse(b"amt=1&%61mt=2"), Reason.DUPLICATE_FIELD)


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        (b"amt", Reason.MALFORMED_BODY),  # no `=`
        (b"a=1&b", Reason.MALFORMED_BODY),
        (b"=1", Reason.BAD_FIELD_NAME),  # an `=`, but an empty name
    ],
)
def test_pair_without_name_or_equals_is_refused(body: bytes, reason: Reason) -> None:
    """Every segment must be `name=value` with a name: a segment without `=` is malformed, an
    empty name is not a field name."""
    refusal = refused(parse(body), reason)
    assert refusal.status == 400


@pytest.mark.parametrize("body", [b"a=%zz", b"a=%4", b"a=%", b"a=%ff", b"a=\xff", b"%ff=1"])
def test_bad_escapes_and_invalid_utf8_are_refused(body: bytes) -> None:
    """Malformed percent escapes and bytes that are not UTF-8 are refused, not guessed at."""
    refused(parse(body), Reason.BAD_ENCODING)


@pytest.mark.parametrize(
    "name", [b"a%26b", b"a%3Db", b"a+b", b"a%00", "产品".encode(), b"x" * 65, b"a%5Bb%5D"]
)
def test_field_names_are_a_small_ascii_alphabet(name: bytes) -> None:
    """A name is signed raw: `&`, `=`, spaces, controls and non-ASCII could forge another form."""
    refused(parse(name + b"=1"), Reason.BAD_FIELD_NAME)


# -- request framing ---------------------------------------------------------------------------


@pytest.mark.parametrize("query", ["a=1", "mch_id=m", "x"])
def test_query_string_is_refused(query: str) -> None:
    """Parameters belong in the body; a query string could smuggle a second reading."""
    refusal = refused(parse(b"a=1", query=query), Reason.QUERY_STRING)
    assert refusal.status == 400


def test_body_over_the_limit_is_refused_with_413() -> None:
    """The size limit is checked on the bytes themselves, whatever the headers said."""
    refusal = refused(parse(b"a=" + b"x" * LIMIT), Reason.BODY_TOO_LARGE)
    assert refusal.status == 413
    assert isinstance(parse(b"a=" + b"x" * (LIMIT - 2)), dict)


@pytest.mark.parametrize(
    "content_type",
    [None, "", "text/plain", "application/xml", "application/octet-stream", "multipart/mixed"],
)
def test_unsupported_content_types_are_refused_with_415(content_type: str | None) -> None:
    """Only urlencoded, multipart/form-data and JSON are accepted."""
    result = parse(b"a=1", content_type)
    refusal = refused(result, Reason.UNSUPPORTED_MEDIA_TYPE)
    assert refusal.status == 415


@pytest.mark.parametrize("charset", ["gbk", "iso-8859-1", "utf-16"])
def test_charsets_other_than_utf8_are_refused(charset: str) -> None:
    """The ingress decodes UTF-8 only, and says so instead of misreading other charsets."""
    refusal = refused(parse(b"a=1", f"{FORM}; charset={charset}"), Reason.UNSUPPORTED_CHARSET)
    assert refusal.status == 415


@pytest.mark.parametrize(
    "content_type",
    [
        f"{FORM}; charset=UTF-8",
        f'{FORM}; charset="utf-8"',
        "Application/X-WWW-Form-Urlencoded",
        f"  {FORM} ;charset=utf8 ",
    ],
)
def test_content_type_spelling_variants_are_accepted(content_type: str) -> None:
    """Type names are case-insensitive; a UTF-8 charset may be spelled several ways."""
    assert parse(b"a=1", content_type) == {"a": "1"}


@pytest.mark.parametrize("content_type", [f"{FORM}; charset", f"{FORM}; a=1; a=2", f"{FORM};=x"])
def test_malformed_content_type_parameters_are_refused(content_type: str) -> None:
    """A header that cannot be parsed is not guessed at."""
    assert refused(parse(b"a=1", content_type), Reason.UNSUPPORTED_MEDIA_TYPE).status == 415


# -- multipart/form-data -----------------------------------------------------------------------

BOUNDARY = "----paynotify7MA4YWxkTrZu0gW"
MULTIPART = f"multipart/form-data; boundary={BOUNDARY}"


def multipart(*parts: tuple[str, str], headers: str = "", epilogue: str = "\r\n") -> bytes:
    body = "".join(
        f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="{name}"\r\n{headers}\r\n{value}\r\n'
        for name, value in parts
    )
    return (body + f"--{BOUNDARY}--{epilogue}").encode()


def test_multipart_text_parts_are_fields() -> None:
    """Each form-data part is one field; values keep their bytes exactly, CRLFs inside too."""
    body = multipart(("mch_id", "m1"), ("remark", "产品\r\nline"), ("empty", ""))
    assert parse(body, MULTIPART) == {"mch_id": "m1", "remark": "产品\r\nline", "empty": ""}


def test_multipart_parts_may_say_text_plain_utf8() -> None:
    """aiohttp, requests and browsers label text parts `text/plain; charset=utf-8`."""
    body = multipart(("a", "1"), headers="Content-Type: text/plain; charset=utf-8\r\n")
    assert parse(body, MULTIPART) == {"a": "1"}


def test_multipart_preamble_and_epilogue_are_ignored() -> None:
    """RFC 2046 lets a body carry text before the first and after the last delimiter."""
    body = b"preamble\r\n" + multipart(("a", "1"), epilogue="\r\nepilogue")
    assert parse(body, MULTIPART) == {"a": "1"}


def test_multipart_quoted_boundary_is_accepted() -> None:
    """The boundary parameter may be quoted."""
    body = multipart(("a", "1"))
    assert parse(body, f'multipart/form-data; boundary="{BOUNDARY}"') == {"a": "1"}


def test_multipart_duplicate_name_is_refused() -> None:
    """Two parts with one name are a duplicate field."""
    refused(parse(multipart(("a", "1"), ("a", "2")), MULTIPART), Reason.DUPLICATE_FIELD)


def test_multipart_file_part_is_refused() -> None:
    """A notification has no files."""
    body = (
        f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="a"; filename="x.txt"\r\n\r\n1\r\n'
        f"--{BOUNDARY}--\r\n"
    ).encode()
    refused(parse(body, MULTIPART), Reason.MALFORMED_BODY)


NOT_CLOSED = "multipart body is not closed"
NOT_FORM_DATA = "each part needs Content-Disposition: form-data"


@pytest.mark.parametrize(
    ("body", "rule"),
    [
        (
            f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="a"\r\n\r\n1\r\n'.encode(),
            NOT_CLOSED,
        ),
        (f"--{BOUNDARY}\r\n\r\n1\r\n--{BOUNDARY}--".encode(), NOT_FORM_DATA),
        (
            f'--{BOUNDARY}\r\nContent-Disposition: attachment; name="a"\r\n\r\n1\r\n'
            f"--{BOUNDARY}--".encode(),
            NOT_FORM_DATA,
        ),
        (
            f"--{BOUNDARY}\r\nContent-Disposition: form-data\r\n\r\n1\r\n--{BOUNDARY}--".encode(),
            NOT_FORM_DATA,
        ),
        (
            f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="a"\r\n1\r\n'
            f"--{BOUNDARY}--".encode(),
            "part headers are not closed",
        ),
        (
            f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="a"\r\n'
            f" folded\r\n\r\n1\r\n--{BOUNDARY}--".encode(),
            "malformed part header",
        ),
        (
            f'--{BOUNDARY}--\r\n--{BOUNDARY}\r\nContent-Disposition: form-data; name="a"\r\n\r\n1'
            f"\r\n--{BOUNDARY}--".encode(),
            "part after the close",
        ),
        (b"no delimiter at all", NOT_CLOSED),
    ],
    ids=[
        "unclosed",
        "no-headers",
        "not-form-data",
        "no-name",
        "headers-not-closed",
        "folded-header",
        "part-after-close",
        "no-delimiter",
    ],
)
def test_malformed_multipart_is_refused_with_400(body: bytes, rule: str) -> None:
    """Anything but a well-formed form-data body is refused as malformed, by the rule it breaks."""
    refusal = refused(parse(body, MULTIPART), Reason.MALFORMED_BODY)
    assert (refusal.status, refusal.rule) == (400, rule)


def test_multipart_part_of_another_type_is_refused_with_415() -> None:
    """Parts must be UTF-8 text."""
    body = multipart(("a", "1"), headers="Content-Type: application/octet-stream\r\n")
    refused(parse(body, MULTIPART), Reason.UNSUPPORTED_MEDIA_TYPE)


def test_multipart_transfer_encoding_is_refused() -> None:
    """Base64 or quoted-printable parts would be a second encoding to get wrong."""
    body = multipart(("a", "MQ=="), headers="Content-Transfer-Encoding: base64\r\n")
    refused(parse(body, MULTIPART), Reason.MALFORMED_BODY)


def test_multipart_invalid_utf8_is_refused() -> None:
    """A part's value must be UTF-8."""
    body = multipart(("a", "X")).replace(b"\r\nX\r\n", b"\r\n\xff\r\n")
    refused(parse(body, MULTIPART), Reason.BAD_ENCODING)


@pytest.mark.parametrize("content_type", ["multipart/form-data", "multipart/form-data; boundary="])
def test_multipart_without_boundary_is_refused_with_415(content_type: str) -> None:
    """Without a boundary the body cannot be split."""
    refused(parse(multipart(("a", "1")), content_type), Reason.UNSUPPORTED_MEDIA_TYPE)


# -- JSON --------------------------------------------------------------------------------------

JSON = "application/json"


def test_json_strings_and_integers_are_fields() -> None:
    """An integer's value is its text exactly as sent, which is what its sender signed."""
    body = b'{"mch_id": "m1", "amt": 1000, "status": 2, "big": 123456789012345678901234567890}'
    assert parse(body, JSON) == {
        "mch_id": "m1",
        "amt": "1000",
        "status": "2",
        "big": "123456789012345678901234567890",
    }


def test_json_with_utf8_charset_and_unicode_escapes() -> None:
    """`\\u4ea7` escapes decode to text like raw UTF-8 does."""
    body = '{"remark": "\\u4ea7品"}'.encode()
    assert parse(body, f"{JSON}; charset=utf-8") == {"remark": "产品"}


@pytest.mark.parametrize(
    "body",
    [
        b'{"amt": 1.5}',
        b'{"amt": 1e3}',
        b'{"amt": true}',
        b'{"amt": null}',
        b'{"amt": [1]}',
        b'{"amt": {"x": 1}}',
        b'{"amt": NaN}',
        b"[1, 2]",
        b'"text"',
        b"{",
        b"",
        b'{"a": 1} trailing',
        b"[" * 4000 + b"]" * 4000,
    ],
)
def test_json_that_is_not_an_object_of_strings_and_integers_is_refused(body: bytes) -> None:
    """Fractions have no single text to sign; other types, broken and deep JSON are refused."""
    result = parse(body, JSON)
    assert isinstance(result, Refusal)
    assert result.reason is Reason.MALFORMED_BODY


def test_json_duplicate_key_is_refused() -> None:
    """JSON parsers disagree on duplicate keys (first or last wins), so none is accepted."""
    refusal = refused(parse(b'{"amt": 1, "amt": 2}', JSON), Reason.DUPLICATE_FIELD)
    assert refusal.field == "amt"


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        (b'{"a": "\\ud800"}', Reason.BAD_ENCODING),
        (b'{"a": "x\\udfffy"}', Reason.BAD_ENCODING),
        (b'{"a": "\xff"}', Reason.BAD_ENCODING),
        (b'\xef\xbb\xbf{"a":"1"}', Reason.MALFORMED_BODY),
    ],
)
def test_json_text_that_is_not_utf8_is_refused(body: bytes, reason: Reason) -> None:
    """Lone surrogates are valid JSON escapes but not text, and bad bytes are not UTF-8: both
    bad_encoding. A byte order mark is UTF-8, but JSON text may not start with one (RFC 8259):
    malformed_body."""
    refusal = refused(parse(body, JSON), reason)
    assert refusal.status == 400


def test_json_bad_names_are_refused() -> None:
    """JSON keys follow the same name alphabet as form fields."""
    refused(parse(b'{"a&b": "1"}', JSON), Reason.BAD_FIELD_NAME)
