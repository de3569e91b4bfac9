"""What can go wrong when talking to the platform, as named exceptions.

Each answer code of the document (返回码, 100-114) has its own class, so callers catch what they
mean (`except OrderNotFound`) and retry logic asks one question: `error.transient`. Messages hold
the code and the platform's short `msg`, cleaned and cut; never a key, a signature or a form.
"""

# The answer codes' names read as what happened (`OrderNotFound`), as other modules already use
# them; an `Error` suffix on each would add noise, not meaning.
# ruff: noqa: N818

from __future__ import annotations

from typing import ClassVar

from shared.protocol.fields import has_control_characters

MAX_MSG_LENGTH = 120  # the document types msg as string(32); anything longer is cut


def clean_msg(msg: str) -> str:
    """The platform's `msg` as safe one-line text: controls dropped, length capped."""
    text = "".join(" " if has_control_characters(ch) else ch for ch in msg).strip()
    return text if len(text) <= MAX_MSG_LENGTH else text[: MAX_MSG_LENGTH - 1] + "…"


class PlatformError(Exception):
    """The platform did not do what was asked. `code` is the answer code (0 when it gave none)."""

    code_value: ClassVar[int] = 0
    transient: ClassVar[bool] = False

    def __init__(self, code: int, msg: str) -> None:
        self.code = code
        self.msg = clean_msg(msg)
        super().__init__(f"platform answered code {code}: {self.msg}" if code else self.msg)

    @property
    def reason(self) -> str:
        """A short machine-readable reason, e.g. for an order book's `mark_failed`."""
        return f"{type(self).__name__}({self.code})" if self.code else type(self).__name__


class MissingParameter(PlatformError):
    """100: a required parameter is missing."""

    code_value = 100


class ParameterCheckFailed(PlatformError):
    """101: merchant id or signature does not check out."""

    code_value = 101


class MerchantNotFound(PlatformError):
    """102: the platform does not know the merchant id."""

    code_value = 102


class OrderNotFound(PlatformError):
    """103: the platform does not know the order."""

    code_value = 103


class QueryError(PlatformError):
    """110: bad query parameters."""

    code_value = 110


class WrongMethod(PlatformError):
    """111: the endpoint does not take this HTTP method."""

    code_value = 111


class NoChannelAvailable(PlatformError):
    """112: no payment channel is configured for the merchant."""

    code_value = 112


class SystemApiError(PlatformError):
    """113: the payment API failed or does not exist (also: a pay type without an endpoint)."""

    code_value = 113
    transient = True


class OrderPlacementError(PlatformError):
    """114: placing the order or the payment channel failed."""

    code_value = 114
    transient = True


class PlatformUnavailable(PlatformError):
    """No usable answer: connection refused or reset, timeout, or an HTTP 5xx without JSON."""

    transient = True

    def __init__(self, msg: str) -> None:
        super().__init__(0, msg)


class AnswerSignatureError(PlatformError):
    """An answer that should be signed did not verify (`reason` from `SignatureError`)."""

    def __init__(self, reason: str) -> None:
        super().__init__(0, f"the answer's signature was not accepted ({reason})")
        self.signature_reason = reason


class MalformedAnswer(PlatformError):
    """An answer that is not the JSON object the document describes, or is about another order."""

    def __init__(self, msg: str) -> None:
        super().__init__(0, msg)


class UnknownMerchant(LookupError):
    """The client was asked to act for a merchant it has no key for (a local mistake)."""

    def __init__(self, mch_id: str) -> None:
        super().__init__(f"no key configured for merchant {mch_id!r}")
        self.mch_id = mch_id


class UnroutablePayType(ValueError):
    """A pay type without a create-order path (5 and 21, unless configuration supplies one)."""

    def __init__(self, pay_type: int) -> None:
        super().__init__(
            f"pay type {pay_type} has no create-order path; set one in PAYNOTIFY_PAY_TYPE_PATHS"
        )
        self.pay_type = pay_type


ANSWER_ERRORS: tuple[type[PlatformError], ...] = (
    MissingParameter, ParameterCheckFailed, MerchantNotFound, OrderNotFound, QueryError,
    WrongMethod, NoChannelAvailable, SystemApiError, OrderPlacementError,
)  # fmt: skip
_BY_CODE: dict[int, type[PlatformError]] = {cls.code_value: cls for cls in ANSWER_ERRORS}


def error_for(code: int, msg: str) -> PlatformError:
    """The named error for an answer code; an undocumented code gives a plain `PlatformError`."""
    return _BY_CODE.get(code, PlatformError)(code, msg)
