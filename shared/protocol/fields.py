"""Strict validation of field values that arrive from outside (forms, answers, messages).

Errors name the field and the rule, never the value: a value may be attacker-chosen, huge, or a
secret sent by mistake.
"""

from __future__ import annotations

import re

# Fields whose values the merchant chose and the platform echoes back. Since signed values are
# joined raw, `&` or `=` inside one could make two different forms sign the same (NOTES.md).
ECHOED_FIELDS = frozenset({"call", "remark", "mch_order", "origin_order", "mch_id"})
_SEPARATORS = frozenset("&=")
MAX_INT_DIGITS = 18  # keeps every integer inside a signed 64-bit range


class FieldError(ValueError):
    """One field broke one rule: `field` and `rule` are machine-readable; no value is held."""

    def __init__(self, field: str, rule: str) -> None:
        super().__init__(f"field {field!r}: {rule}")
        self.field = field
        self.rule = rule


def parse_int(field: str, value: str, *, minimum: int = 0, maximum: int | None = None) -> int:
    """Plain ASCII digits only: no sign, no spaces, no underscores, no other scripts' digits."""
    if not value or not value.isascii() or not value.isdigit():
        raise FieldError(field, "must be plain decimal digits")
    if len(value) > MAX_INT_DIGITS:
        raise FieldError(field, f"must have at most {MAX_INT_DIGITS} digits")
    number = int(value)
    if number < minimum:
        raise FieldError(field, f"must be at least {minimum}")
    if maximum is not None and number > maximum:
        raise FieldError(field, f"must be at most {maximum}")
    return number


# C0, DEL and C1 controls; also lone surrogates, which cannot be valid UTF-8 text. A regex scans
# in C: this runs for every field of every notification.
_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f\ud800-\udfff]")


def has_control_characters(value: str) -> bool:
    return _CONTROL.search(value) is not None


def check_text(
    field: str,
    value: str,
    *,
    max_length: int | None = None,
    required: bool = True,
    signed: bool = False,
) -> str:
    """Text without control characters, within a length (in characters), and, for echoed fields
    and every field of a signed report (`signed`), without `&` or `=`: the signed string joins
    values raw, so one of those inside a value could re-cut the form into another that signs
    alike."""
    if required and value == "":
        raise FieldError(field, "must not be empty")
    if max_length is not None and len(value) > max_length:
        raise FieldError(field, f"must be at most {max_length} characters")
    if has_control_characters(value):
        raise FieldError(field, "must not contain control characters")
    if (signed or field in ECHOED_FIELDS) and not _SEPARATORS.isdisjoint(value):
        raise FieldError(field, "must not contain '&' or '='")
    return value


def check_choice(field: str, value: str, allowed: frozenset[str]) -> str:
    if value not in allowed:
        raise FieldError(field, f"must be one of {', '.join(sorted(allowed))}")
    return value
