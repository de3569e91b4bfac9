"""Request body -> form fields, or a `Refusal`. Pure: bytes and header text in, plain values out.

The body is read once by the handler and parsed here, strictly: UTF-8 only, every field name
given once, field names from a small ASCII alphabet (they are sorted and joined into the signed
string, so a name holding `&` or `=` could forge another form's signature), no query string.
Whether the fields are a valid, authentic notification is `verification`'s business.
"""

from __future__ import annotations

import json
import re
from functools import lru_cache
from typing import Any
from urllib.parse import unquote_to_bytes

from ingress.refusals import Reason, Refusal
from shared.protocol.payment import KNOWN_FIELDS

Fields = dict[str, str]

URLENCODED = "application/x-www-form-urlencoded"
MULTIPART = "multipart/form-data"
JSON = "application/json"
_UTF8 = frozenset({"utf-8", "utf8"})
_IDENTITY_ENCODINGS = frozenset({"7bit", "8bit", "binary"})

_NAME = re.compile(r"[A-Za-z0-9_.\-]{1,64}")
_BAD_ESCAPE = re.compile(rb"%(?![0-9A-Fa-f]{2})")
_SURROGATE = re.compile("[\ud800-\udfff]")
_BOUNDARY = re.compile(r"[0-9A-Za-z'()+_,\-./:=? ]{0,69}[0-9A-Za-z'()+_,\-./:=?]")

# Refusals without detail are shared: building them per request is work that can be done once.
_QUERY_STRING = Refusal(Reason.QUERY_STRING)
_TOO_LARGE = Refusal(Reason.BODY_TOO_LARGE)
_NO_CONTENT_TYPE = Refusal(Reason.UNSUPPORTED_MEDIA_TYPE, rule="a content type is required")
_BAD_CHARSET = Refusal(Reason.UNSUPPORTED_CHARSET, rule="only UTF-8 is accepted")
_BAD_ENCODING = Refusal(Reason.BAD_ENCODING, rule="must be UTF-8 with valid percent escapes")
_NO_EQUALS = Refusal(Reason.MALFORMED_BODY, rule="every pair needs '='")


class _MalformedError(ValueError):
    def __init__(self, refusal: Refusal) -> None:
        super().__init__(refusal.reason)
        self.refusal = refusal


def parse_request(
    body: bytes, content_type: str | None, query_string: str, max_body_bytes: int
) -> Fields | Refusal:
    """The form a notification request carries, or why it cannot be taken."""
    if query_string:
        return _QUERY_STRING
    if len(body) > max_body_bytes:
        return _TOO_LARGE
    media = _NO_CONTENT_TYPE if content_type is None else media_type(content_type)
    if isinstance(media, Refusal):
        return media
    mime, params = media
    try:
        if mime == MULTIPART:
            return parse_multipart(body, params["boundary"])
        return parse_json(body) if mime == JSON else parse_urlencoded(body)
    except _MalformedError as exc:
        return exc.refusal


@lru_cache(maxsize=256)
def media_type(header: str) -> tuple[str, dict[str, str]] | Refusal:
    """`type/subtype` (lower case) and its parameters, if it is one the ingress accepts.

    Cached: the platform sends the same header every time. Callers must not mutate the result.
    """
    try:
        mime, params = _split_parameters(header)
    except _MalformedError:
        return Refusal(Reason.UNSUPPORTED_MEDIA_TYPE, rule="the content type is malformed")
    if mime not in (URLENCODED, MULTIPART, JSON):
        return Refusal(
            Reason.UNSUPPORTED_MEDIA_TYPE, rule=f"must be one of {URLENCODED}, {MULTIPART}, {JSON}"
        )
    charset = params.get("charset")
    if charset is not None and charset.lower() not in _UTF8:
        return _BAD_CHARSET
    if mime == MULTIPART and not _BOUNDARY.fullmatch(params.get("boundary", "")):
        return Refusal(Reason.UNSUPPORTED_MEDIA_TYPE, rule="multipart needs a valid boundary")
    return mime, params


def _split_parameters(header: str) -> tuple[str, dict[str, str]]:
    """`value; name=value; name="value"` -> (lower-cased value, {lower-cased name: value})."""
    value, _, rest = header.partition(";")
    params: dict[str, str] = {}
    for item in rest.split(";"):
        if not item.strip():
            continue
        name, sep, param = item.partition("=")
        name, param = name.strip().lower(), param.strip()
        if not sep or not name or name in params:
            raise _MalformedError(
                Refusal(Reason.MALFORMED_BODY, rule="malformed header parameters")
            )
        if len(param) >= 2 and param[0] == param[-1] == '"':
            param = param[1:-1]
        params[name] = param
    return value.strip().lower(), params


def _add(fields: Fields, name: str, value: str) -> None:
    if name not in KNOWN_FIELDS and not _NAME.fullmatch(name):
        raise _MalformedError(
            Refusal(Reason.BAD_FIELD_NAME, rule="names are 1-64 of A-Z a-z 0-9 _ . -")
        )
    if name in fields:
        raise _MalformedError(
            Refusal(Reason.DUPLICATE_FIELD, field=name, rule="given more than once")
        )
    fields[name] = value


def _percent_decode(raw: bytes) -> str:
    if b"%" in raw or b"+" in raw:
        if _BAD_ESCAPE.search(raw):
            raise _MalformedError(_BAD_ENCODING)
        raw = unquote_to_bytes(raw.replace(b"+", b" "))
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        raise _MalformedError(_BAD_ENCODING) from None


def parse_urlencoded(body: bytes) -> Fields:
    """`a=1&b=2`, as PHP's http_build_query writes it. Empty segments (`a=1&&b=2`) carry no
    field and are skipped; a segment without `=` is malformed."""
    fields: Fields = {}
    if b"%" in body or b"+" in body:
        for pair in body.split(b"&"):
            if pair:
                name, sep, value = pair.partition(b"=")
                if not sep:
                    raise _MalformedError(_NO_EQUALS)
                _add(fields, _percent_decode(name), _percent_decode(value))
        return fields
    # Nothing escaped: decode once. UTF-8 never has `&` or `=` bytes inside a multi-byte
    # character, so splitting the text gives what splitting the bytes would.
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        raise _MalformedError(_BAD_ENCODING) from None
    for item in text.split("&"):
        if item:
            key, equals, text_value = item.partition("=")
            if not equals:
                raise _MalformedError(_NO_EQUALS)
            _add(fields, key, text_value)
    return fields


def parse_multipart(body: bytes, boundary: str) -> Fields:
    """RFC 7578 form-data: text parts only (a file part is refused), UTF-8, no transfer
    encodings beyond identity. A preamble and an epilogue are ignored, as RFC 2046 says."""
    delimiter = b"\r\n--" + boundary.encode("ascii")
    chunks = (b"\r\n" + body).split(delimiter)
    if len(chunks) < 2 or not chunks[-1].startswith(b"--"):
        raise _MalformedError(Refusal(Reason.MALFORMED_BODY, rule="multipart body is not closed"))
    fields: Fields = {}
    for chunk in chunks[1:-1]:
        if chunk.startswith(b"--"):
            raise _MalformedError(Refusal(Reason.MALFORMED_BODY, rule="part after the close"))
        line_end = chunk.find(b"\r\n")
        if line_end < 0 or chunk[:line_end].strip(b" \t"):
            raise _MalformedError(Refusal(Reason.MALFORMED_BODY, rule="malformed part delimiter"))
        name, value = _multipart_part(chunk[line_end + 2 :])
        _add(fields, name, value)
    return fields


def _multipart_part(part: bytes) -> tuple[str, str]:
    if part.startswith(b"\r\n"):
        head, content = b"", part[2:]
    else:
        head, sep, content = part.partition(b"\r\n\r\n")
        if not sep:
            raise _MalformedError(
                Refusal(Reason.MALFORMED_BODY, rule="part headers are not closed")
            )
    headers = _part_headers(head)
    disposition, params = _split_parameters(headers.get("content-disposition", ""))
    if disposition != "form-data" or "name" not in params:
        raise _MalformedError(
            Refusal(Reason.MALFORMED_BODY, rule="each part needs Content-Disposition: form-data")
        )
    if "filename" in params or "filename*" in params:
        raise _MalformedError(Refusal(Reason.MALFORMED_BODY, rule="file parts are not accepted"))
    if "content-type" in headers:
        media, media_params = _split_parameters(headers["content-type"])
        if media != "text/plain" or media_params.get("charset", "utf-8").lower() not in _UTF8:
            raise _MalformedError(
                Refusal(Reason.UNSUPPORTED_MEDIA_TYPE, rule="parts must be UTF-8 text/plain")
            )
    if headers.get("content-transfer-encoding", "binary").lower() not in _IDENTITY_ENCODINGS:
        raise _MalformedError(Refusal(Reason.MALFORMED_BODY, rule="no content transfer encodings"))
    try:
        return params["name"], content.decode("utf-8")
    except UnicodeDecodeError:
        raise _MalformedError(_BAD_ENCODING) from None


def _part_headers(head: bytes) -> dict[str, str]:
    headers: dict[str, str] = {}
    for line in head.split(b"\r\n") if head else ():
        raw_name, sep, raw_value = line.partition(b":")
        try:
            name = raw_name.decode("ascii").strip().lower()
            value = raw_value.strip().decode("utf-8")
        except UnicodeDecodeError:
            raise _MalformedError(_BAD_ENCODING) from None
        # A line starting with white space would be an obsolete folded header.
        if not sep or not name or name in headers or raw_name[:1] in (b" ", b"\t"):
            raise _MalformedError(Refusal(Reason.MALFORMED_BODY, rule="malformed part header"))
        headers[name] = value
    return headers


class _DuplicateKeyError(ValueError):
    def __init__(self, name: str) -> None:
        super().__init__("duplicate key")
        self.name = name


def _object_pairs(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    document: dict[str, Any] = {}
    for name, value in pairs:
        if name in document:
            raise _DuplicateKeyError(name)
        document[name] = value
    return document


def _no_fraction(_: str) -> Any:
    raise _MalformedError(
        Refusal(Reason.MALFORMED_BODY, rule="JSON numbers must be integers: a fraction has no "
                "single text to sign")
    )  # fmt: skip


def _no_constant(_: str) -> Any:
    raise _MalformedError(Refusal(Reason.MALFORMED_BODY, rule="NaN and Infinity are not JSON"))


def parse_json(body: bytes) -> Fields:
    """A JSON object of strings and integers. An integer's field value is its text as sent,
    which is what the sender signed."""
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        raise _MalformedError(_BAD_ENCODING) from None
    try:
        document = json.loads(
            text,
            object_pairs_hook=_object_pairs,
            parse_int=str,
            parse_float=_no_fraction,
            parse_constant=_no_constant,
        )
    except _MalformedError:
        raise
    except _DuplicateKeyError as exc:
        if _NAME.fullmatch(exc.name):
            raise _MalformedError(
                Refusal(Reason.DUPLICATE_FIELD, field=exc.name, rule="given more than once")
            ) from None
        raise _MalformedError(Refusal(Reason.BAD_FIELD_NAME)) from None
    except (ValueError, RecursionError):
        raise _MalformedError(Refusal(Reason.MALFORMED_BODY, rule="not valid JSON")) from None
    if not isinstance(document, dict):
        raise _MalformedError(Refusal(Reason.MALFORMED_BODY, rule="the JSON must be an object"))
    fields: Fields = {}
    for name, value in document.items():
        if not isinstance(value, str):
            raise _MalformedError(
                Refusal(Reason.MALFORMED_BODY, rule="values must be strings or integers")
            )
        # "\ud800" is valid JSON but not text: it could never be signed as UTF-8.
        if _SURROGATE.search(name) or _SURROGATE.search(value):
            raise _MalformedError(_BAD_ENCODING)
        _add(fields, name, value)
    return fields
