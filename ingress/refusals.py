"""Why a notification was refused, as an HTTP status an operator can read and a reason code.

The reply body is always `fail` (the platform retries on anything but `success`); the status and
reason say why. `field` and `rule` name what broke, never the value.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from http import HTTPStatus


class Reason(StrEnum):
    # 400: the request is not a well-formed, valid notification
    QUERY_STRING = "query_string"
    MALFORMED_BODY = "malformed_body"
    BAD_ENCODING = "bad_encoding"
    BAD_FIELD_NAME = "bad_field_name"
    DUPLICATE_FIELD = "duplicate_field"
    KEY_FIELD_PRESENT = "key_field_present"
    MCH_ID_MISMATCH = "mch_id_mismatch"
    INVALID_FIELD = "invalid_field"
    # 401: the signature does not hold
    SIGN_MISSING = "sign_missing"
    SIGN_MALFORMED = "sign_malformed"
    SIGN_MISMATCH = "sign_mismatch"
    # 403: the merchant's allow_from does not include the sender
    PEER_NOT_ALLOWED = "peer_not_allowed"
    # 404
    UNKNOWN_MERCHANT = "unknown_merchant"
    NOT_FOUND = "not_found"
    # 405, 408, 413, 415
    METHOD_NOT_ALLOWED = "method_not_allowed"
    BODY_TIMEOUT = "body_timeout"
    BODY_TOO_LARGE = "body_too_large"
    UNSUPPORTED_MEDIA_TYPE = "unsupported_media_type"
    UNSUPPORTED_CHARSET = "unsupported_charset"
    # 503: not durably taken; the platform will retry
    KAFKA_TIMEOUT = "kafka_timeout"
    KAFKA_ERROR = "kafka_error"
    NOT_READY = "not_ready"


STATUS: dict[Reason, HTTPStatus] = {
    **dict.fromkeys(
        (
            Reason.QUERY_STRING,
            Reason.MALFORMED_BODY,
            Reason.BAD_ENCODING,
            Reason.BAD_FIELD_NAME,
            Reason.DUPLICATE_FIELD,
            Reason.KEY_FIELD_PRESENT,
            Reason.MCH_ID_MISMATCH,
            Reason.INVALID_FIELD,
        ),
        HTTPStatus.BAD_REQUEST,
    ),
    **dict.fromkeys(
        (Reason.SIGN_MISSING, Reason.SIGN_MALFORMED, Reason.SIGN_MISMATCH),
        HTTPStatus.UNAUTHORIZED,
    ),
    # Not in the list: a source outside allow_from is neither a bad signature (401)
    # nor an unknown merchant (404), and an operator must be able to tell them apart.
    Reason.PEER_NOT_ALLOWED: HTTPStatus.FORBIDDEN,
    Reason.UNKNOWN_MERCHANT: HTTPStatus.NOT_FOUND,
    Reason.NOT_FOUND: HTTPStatus.NOT_FOUND,
    Reason.METHOD_NOT_ALLOWED: HTTPStatus.METHOD_NOT_ALLOWED,
    Reason.BODY_TIMEOUT: HTTPStatus.REQUEST_TIMEOUT,
    Reason.BODY_TOO_LARGE: HTTPStatus.REQUEST_ENTITY_TOO_LARGE,
    Reason.UNSUPPORTED_MEDIA_TYPE: HTTPStatus.UNSUPPORTED_MEDIA_TYPE,
    Reason.UNSUPPORTED_CHARSET: HTTPStatus.UNSUPPORTED_MEDIA_TYPE,
    Reason.KAFKA_TIMEOUT: HTTPStatus.SERVICE_UNAVAILABLE,
    Reason.KAFKA_ERROR: HTTPStatus.SERVICE_UNAVAILABLE,
    Reason.NOT_READY: HTTPStatus.SERVICE_UNAVAILABLE,
}


@dataclass(frozen=True, slots=True)
class Refusal:
    reason: Reason
    field: str | None = None  # the field at fault, when one is
    rule: str | None = None  # the rule it broke, in words without the value

    @property
    def status(self) -> int:
        return STATUS[self.reason].value
