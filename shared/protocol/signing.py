"""The platform's MD5 form signature (spec "sign安全规范", NOTES.md "Signature").

Pure code: no I/O, no clock, no configuration. Keys arrive as `MerchantKey` values whose
secret never shows in a repr, a log line or an error message.
"""

from __future__ import annotations

import hashlib
import hmac
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from collections.abc import Mapping, Sequence

SIGN_FIELD = "sign"
KEY_FIELD = "mch_key"
_HEX_DIGITS = frozenset("0123456789abcdefABCDEF")


class SignatureError(ValueError):
    """A form whose signature cannot be accepted; `reason` is a short machine-readable code."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


@dataclass(frozen=True, slots=True)
class MerchantKey:
    """One active signing key of a merchant. `key_id` names it without revealing it."""

    secret: str = field(repr=False)
    key_id: str

    @classmethod
    def from_secret(cls, secret: str) -> MerchantKey:
        if not secret:
            raise ValueError("a merchant key may not be empty")
        # 48 bits of SHA-256 identify a key in logs and events; they reveal nothing usable.
        fingerprint = hashlib.sha256(secret.encode()).hexdigest()[:12]
        return cls(secret=secret, key_id=f"sha256:{fingerprint}")


def signing_string(fields: Mapping[str, str], secret: str) -> str:
    """The string the platform hashes: every non-empty field but `sign`, plus the key, sorted."""
    if KEY_FIELD in fields:
        raise SignatureError(
            "key_field_present", f"a form may not carry a field named {KEY_FIELD!r}"
        )
    pairs = {name: value for name, value in fields.items() if name != SIGN_FIELD and value != ""}
    pairs[KEY_FIELD] = secret
    # PHP ksort on ASCII keys is plain byte order, which is str order for ASCII.
    return "&".join(f"{name}={pairs[name]}" for name in sorted(pairs))


def sign(fields: Mapping[str, str], key: MerchantKey | str) -> str:
    """The 32 lower-case hex digits of the form's MD5 signature."""
    secret = key.secret if isinstance(key, MerchantKey) else key
    # MD5 is the platform's scheme, not our choice; it is not used for anything else.
    return hashlib.md5(signing_string(fields, secret).encode("utf-8")).hexdigest()  # noqa: S324


def signed(fields: Mapping[str, str], key: MerchantKey | str) -> dict[str, str]:
    """A copy of `fields` with empty values left out and `sign` added, ready to send."""
    form = {name: value for name, value in fields.items() if value != "" and name != SIGN_FIELD}
    form[SIGN_FIELD] = sign(form, key)
    return form


def verify(fields: Mapping[str, str], keys: Sequence[MerchantKey]) -> MerchantKey:
    """Return the key under which `fields` verifies, or raise `SignatureError`.

    Every field except `sign` is covered, so fields the platform adds later are checked without a
    code change. Either hex case is accepted; comparison is constant-time.
    """
    if KEY_FIELD in fields:
        raise SignatureError(
            "key_field_present", f"a form may not carry a field named {KEY_FIELD!r}"
        )
    given = fields.get(SIGN_FIELD, "")
    if not given:
        raise SignatureError("sign_missing", "the form has no sign field")
    if len(given) != 32 or not _HEX_DIGITS.issuperset(given):
        raise SignatureError("sign_malformed", "sign must be 32 hexadecimal digits")
    if not keys:
        raise SignatureError("no_active_key", "the merchant has no active key")
    wanted = given.lower().encode()
    matched: MerchantKey | None = None
    for key in keys:
        # Check every key, so the time taken does not say which one matched.
        if hmac.compare_digest(sign(fields, key).encode(), wanted) and matched is None:
            matched = key
    if matched is None:
        raise SignatureError("sign_mismatch", "the signature does not match any active key")
    return matched
