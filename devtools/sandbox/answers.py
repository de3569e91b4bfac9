"""What the sandbox platform answers, as JSON members in order (pure).

`created_answer` follows 创建订单's 响应数据 per pay type; `report_answer` is the signed answer of
订单查询 and 快捷支付确认下单. Values that the document types as int are JSON numbers.
"""

from __future__ import annotations

import zlib
from typing import TYPE_CHECKING

from shared.protocol.catalog import (
    ANSWER_CODES,
    ANSWER_OK,
    BANK_CODES,
    DOCUMENTED_PAY_TYPES,
    AnswerShape,
)
from shared.protocol.models import signature_fields
from shared.protocol.signing import SIGN_FIELD, sign

if TYPE_CHECKING:
    from devtools.sandbox.model import Order
    from shared.protocol.signing import MerchantKey

Pair = tuple[str, str | int]
_SHAPES = {p.code: p.answer for p in DOCUMENTED_PAY_TYPES}


def error_answer(code: int, msg: str | None = None) -> tuple[Pair, ...]:
    return ("code", code), ("msg", msg or ANSWER_CODES.get(code, "error"))


def created_answer(order: Order, checkout: str) -> tuple[Pair, ...]:
    """A successful create-order answer; `checkout` is where the payer would pay."""
    head: list[Pair] = [
        ("code", ANSWER_OK), ("msg", "success"), ("mch_id", order.mch_id), ("channel_id", 1),
        ("op_channel_id", 10001), ("pay_type", order.pay_type), ("api_id", 1),
        ("mch_order", order.mch_order), ("created_at", order.created_at),
    ]  # fmt: skip
    return (*head, *_payment_fields(order, checkout))


def _payment_fields(order: Order, checkout: str) -> list[Pair]:
    pay_type = order.pay_type
    digest = zlib.crc32(f"{order.mch_id}:{order.mch_order}".encode())
    token = f"tok{order.created_at}{digest % 10**8:08d}"
    memo = f"M{digest % 10**6:06d}"
    fields: list[Pair]
    shape = _SHAPES.get(pay_type, AnswerShape.PAY_INFO)
    if shape is AnswerShape.TRANSFER:
        # The document names the transfer memo `code` too: sent as a second `code` member.
        asked = order.scenario.transfer_amt or order.scenario.paid_amt or order.mch_amt
        fields = [
            ("op_amt", str(order.mch_amt)), ("amt", str(asked)),
            ("bank_card", "6222020200000000000"),
            ("bank_name", BANK_CODES[1001 + digest % len(BANK_CODES)]),
            ("real_name", "Sandbox Payee"), ("code", memo),
        ]  # fmt: skip
    elif shape is AnswerShape.ACCOUNT:
        fields = [("code", memo), ("account", "sandbox-payee")]
    elif shape in {AnswerShape.QR, AnswerShape.QR_REDIRECT}:
        fields = [("code_url", checkout), ("code_img_url", checkout + "&img=1")]
        if shape is AnswerShape.QR_REDIRECT:
            fields.append(("redirect_pay_url", checkout))
    elif shape is AnswerShape.APP:
        fields = [("services", "pay.weixin.app"), ("token_id", token)]
    elif shape is AnswerShape.QUICK:
        fields = [("token_id", token)]
    elif shape is AnswerShape.JSAPI:
        fields = [("pay_info", '{"appId":"wxsandbox","package":"prepay_id=' + token + '"}')]
    elif shape is AnswerShape.PAY_URL:
        fields = [("pay_url", checkout)]
    else:
        fields = [("pay_info", checkout)]
    return fields


def report_answer(
    order: Order, now: int, key: MerchantKey | str, *, include_envelope: bool
) -> tuple[Pair, ...]:
    """The order's report, answered at `now` and signed with `key` (a wrong one to forge)."""
    report = order.report(created_at=now)
    body: list[Pair] = [
        ("sign_type", report.sign_type), ("mch_id", report.mch_id), ("service", report.pay_type),
        ("mch_order", report.mch_order), ("amt", report.amt), ("mch_amt", report.mch_amt),
        ("amt_type", report.amt_type), ("status", int(report.status)),
        ("created_at", report.created_at),
        # Always present, empty when unset, and so left out of the signature (the document).
        ("success_at", "" if report.success_at is None else report.success_at),
        ("origin_order", report.origin_order or ""),
    ]  # fmt: skip
    envelope: list[Pair] = [("code", ANSWER_OK), ("msg", "success")]
    covered = signature_fields(
        {name: str(value) for name, value in envelope + body}, include_envelope=include_envelope
    )
    return (*envelope, *body, (SIGN_FIELD, sign(covered, key)))
