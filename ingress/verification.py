"""Form fields -> a verified notification, or a `Refusal`. Pure: built once at start-up.

Order of checks: the form's own shape (no `mch_key`), the merchant (known, matching the URL,
sender allowed), the signature, then every field strictly. The signature comes before field
rules so that a forger learns nothing about them; the rules then catch what a valid signature
cannot (a `&` inside an echoed value makes two forms sign alike).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from ingress.refusals import Reason, Refusal
from shared.protocol.fields import FieldError
from shared.protocol.payment import PaymentReport, order_key, parse_payment_report
from shared.protocol.signing import KEY_FIELD, SignatureError, verify

if TYPE_CHECKING:
    from collections.abc import Container, Mapping

    from ingress.forms import Fields
    from shared.merchants import Merchant

_SIGNATURE_REFUSALS = {
    "sign_missing": Refusal(Reason.SIGN_MISSING),
    "sign_malformed": Refusal(Reason.SIGN_MALFORMED),
    "sign_mismatch": Refusal(Reason.SIGN_MISMATCH),
}
_SIGN_MISMATCH = _SIGNATURE_REFUSALS["sign_mismatch"]
_KEY_FIELD_PRESENT = Refusal(Reason.KEY_FIELD_PRESENT, field=KEY_FIELD, rule="must not be present")
_MCH_ID_MISSING = Refusal(Reason.INVALID_FIELD, field="mch_id", rule="is required")
_UNKNOWN_MERCHANT = Refusal(Reason.UNKNOWN_MERCHANT, field="mch_id")
_MCH_ID_MISMATCH = Refusal(
    Reason.MCH_ID_MISMATCH, field="mch_id", rule="must match the merchant in the URL"
)
_PEER_NOT_ALLOWED = Refusal(Reason.PEER_NOT_ALLOWED, rule="sender is outside allow_from")


@dataclass(frozen=True, slots=True)
class Verified:
    """A notification that is authentic and valid: safe to hand to Kafka."""

    fields: Fields  # as received, `sign` included
    report: PaymentReport
    key_id: str  # the merchant key that verified it

    @property
    def order_key(self) -> str:
        return order_key(self.report.mch_id, self.report.mch_order)


class Verifier:
    """Checks notifications against the merchants known at start-up."""

    __slots__ = ("_merchants", "_pay_types")

    def __init__(self, merchants: Mapping[str, Merchant], pay_types: Container[int]) -> None:
        self._merchants = merchants
        self._pay_types = pay_types

    def check(
        self, fields: Fields, peer: str | None, url_mch_id: str | None = None
    ) -> Verified | Refusal:
        """`url_mch_id` is the merchant named by `/notify/{mch_id}`, if the URL names one."""
        merchant = self._merchant(fields, peer, url_mch_id)
        if isinstance(merchant, Refusal):
            return merchant
        try:
            key = verify(fields, merchant.keys)
        except SignatureError as exc:
            return _SIGNATURE_REFUSALS.get(exc.reason, _SIGN_MISMATCH)
        try:
            report = parse_payment_report(fields, self._pay_types)
        except FieldError as exc:
            return Refusal(Reason.INVALID_FIELD, field=exc.field, rule=exc.rule)
        return Verified(fields=fields, report=report, key_id=key.key_id)

    def _merchant(
        self, fields: Fields, peer: str | None, url_mch_id: str | None
    ) -> Merchant | Refusal:
        if KEY_FIELD in fields:
            return _KEY_FIELD_PRESENT
        mch_id = fields.get("mch_id", "")
        if url_mch_id is not None:
            if url_mch_id not in self._merchants:
                return _UNKNOWN_MERCHANT
            if mch_id and mch_id != url_mch_id:
                return _MCH_ID_MISMATCH
        merchant = self._merchants.get(mch_id) if mch_id else None
        if merchant is None:
            return _UNKNOWN_MERCHANT if mch_id else _MCH_ID_MISSING
        return merchant if merchant.allows(peer) else _PEER_NOT_ALLOWED
