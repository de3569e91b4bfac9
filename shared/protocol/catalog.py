"""The platform's enumerations as data: pay types, channels, bank codes, answer codes.

Paths are the document's defaults; `PayTypeCatalog.with_overrides` applies configuration
(NOTES.md: rows 42/43 look swapped, 5 and 21 have no documented path).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from enum import StrEnum
from types import MappingProxyType
from typing import TYPE_CHECKING, TypedDict, Unpack

if TYPE_CHECKING:
    from collections.abc import Iterator, Mapping


class AnswerShape(StrEnum):
    """What a successful create-order answer carries for the payer, by pay type."""

    PAY_INFO = "pay_info"  # pay_info: where to pay
    PAY_URL = "pay_url"  # pay_url
    QR = "qr"  # code_url, code_img_url
    QR_REDIRECT = "qr_redirect"  # code_url, code_img_url, redirect_pay_url
    APP = "app"  # services, token_id: the app SDK takes them
    QUICK = "quick"  # token_id: direct quick pay goes on with it
    JSAPI = "jsapi"  # pay_info: the JSON the official account's page passes on
    TRANSFER = (
        "transfer"  # op_amt, amt (the sum to transfer), bank_card, bank_name, real_name, code
    )
    ACCOUNT = "account"  # code (the memo), account


@dataclass(frozen=True, slots=True)
class PayType:
    code: int
    name: str
    path: str | None  # create-order path under the base URL; None: not documented
    transfer: bool = False  # amt may differ from mch_amt on purpose
    needs_portrait_id: bool = False
    needs_portrait_name: bool = False
    needs_bank_details: bool = False  # bank_account
    needs_card_holder: bool = False  # bank_phone, bank_user_name, bank_id_card (direct quick pay)
    answer: AnswerShape = AnswerShape.PAY_INFO


class _Traits(TypedDict, total=False):
    transfer: bool
    needs_portrait_id: bool
    needs_portrait_name: bool
    needs_bank_details: bool
    needs_card_holder: bool


def _pt(
    code: int,
    name: str,
    path: str | None,
    answer: AnswerShape = AnswerShape.PAY_INFO,
    **traits: Unpack[_Traits],
) -> PayType:
    return PayType(code=code, name=name, path=path, answer=answer, **traits)


_TRANSFER: _Traits = {"transfer": True, "needs_portrait_id": True, "needs_portrait_name": True}
_QUICK: _Traits = {"needs_bank_details": True}
_QUICK_DIRECT: _Traits = {"needs_bank_details": True, "needs_card_holder": True}
_QR, _ACCOUNT = AnswerShape.QR, AnswerShape.ACCOUNT

DOCUMENTED_PAY_TYPES: tuple[PayType, ...] = (
    _pt(1, "UnionPay", "api/v1/union.api"),
    _pt(2, "UnionPay QR", "api/v1/union_qrcode.api", _QR),
    _pt(3, "Quick pay, direct", "api/v1/quick.api", AnswerShape.QUICK, **_QUICK_DIRECT),
    _pt(4, "Quick pay, web page", "api/v1/quick_page.api"),
    _pt(5, "Quick pay, cashier", None),
    _pt(6, "Quick pay, web page with bank card", "api/v1/quick_bank.api", **_QUICK),
    _pt(10, "WeChat QR", "api/v1/wx_qrcode.api", _QR),
    _pt(11, "WeChat H5", "api/v1/wx_h5.api"),
    _pt(12, "WeChat App", "api/v1/wx_app.api", AnswerShape.APP),
    _pt(13, "WeChat official account", "api/v1/wx_public_sign.api", AnswerShape.JSAPI),
    _pt(14, "WeChat QR, savable image", "api/v1/wx_qrcode_plus.api", _QR),
    _pt(20, "Alipay QR", "api/v1/ali_qrcode.api", AnswerShape.QR_REDIRECT),
    _pt(21, "Alipay App", None),
    _pt(22, "Alipay H5", "api/v1/ali_h5.api", AnswerShape.PAY_URL),
    _pt(23, "Alipay service window", "api/v1/ali_service.api", needs_portrait_id=True),
    _pt(30, "QQ Wallet", "api/v1/qq_wap.api"),
    _pt(31, "QQ Wallet QR", "api/v1/qq_qrcode.api", _QR),
    _pt(40, "JD Wallet", "api/v1/jd_wap.api", AnswerShape.PAY_URL),
    _pt(41, "JD Wallet QR", "api/v1/jd_qrcode.api", _QR),
    # The document maps 42 and 43 the other way round from their names; kept as documented.
    _pt(
        42,
        "WeChat bank transfer",
        "api/v1/ali_bank_transfer.api",
        AnswerShape.TRANSFER,
        **_TRANSFER,
    ),
    _pt(
        43, "Alipay bank transfer", "api/v1/wx_bank_transfer.api", AnswerShape.TRANSFER, **_TRANSFER
    ),
    _pt(
        44, "Bank card transfer", "api/v1/card_bank_transfer.api", AnswerShape.TRANSFER, **_TRANSFER
    ),
    _pt(60, "WeChat transfer", "api/v1/wx_transfer.api", _ACCOUNT),
    _pt(61, "Alipay transfer", "api/v1/ali_transfer.api", _ACCOUNT),
    _pt(62, "Manual top-up via support", "api/v1/kf_recharge.api", _ACCOUNT),
)


@dataclass(frozen=True)
class PayTypeCatalog:
    by_code: Mapping[int, PayType]

    @classmethod
    def documented(cls) -> PayTypeCatalog:
        return cls(MappingProxyType({p.code: p for p in DOCUMENTED_PAY_TYPES}))

    def with_overrides(self, paths: Mapping[int, str]) -> PayTypeCatalog:
        """Replace create-order paths by configuration; unknown pay types are an error."""
        table = dict(self.by_code)
        for code, path in paths.items():
            if code not in table:
                raise ValueError(f"pay type {code} is not in the document; cannot set its path")
            table[code] = replace(table[code], path=path.lstrip("/"))
        return PayTypeCatalog(MappingProxyType(table))

    def __contains__(self, code: object) -> bool:
        return code in self.by_code

    def __iter__(self) -> Iterator[PayType]:
        return iter(self.by_code.values())

    def get(self, code: int) -> PayType:
        try:
            return self.by_code[code]
        except KeyError:
            raise ValueError(f"unknown pay type {code}") from None


CHANNELS: Mapping[int, str] = MappingProxyType({1: "SPD Bank"})

BANK_CODES: Mapping[int, str] = MappingProxyType(
    {
        1001: "ICBC", 1002: "Bank of China", 1003: "China Merchants Bank",
        1004: "China Construction Bank", 1005: "Bank of Communications",
        1006: "Agricultural Bank of China", 1007: "Postal Savings Bank", 1008: "China CITIC Bank",
        1009: "China Minsheng Bank", 1010: "SPD Bank", 1011: "China Everbright Bank",
        1012: "Ping An Bank", 1013: "Industrial Bank", 1014: "Hua Xia Bank",
        1015: "Bank of Beijing", 1016: "Bank of Shanghai", 1017: "China Guangfa Bank",
        1018: "Beijing Rural Commercial Bank", 1019: "Jinzhong Bank", 1020: "Bank of Hangzhou",
        1021: "Bank of Ningbo", 1022: "Shenzhen Development Bank", 1023: "Rural Credit Cooperative",
        1024: "Huishang Bank", 1025: "China Bohai Bank", 1026: "Chongqing Three Gorges Bank",
        1027: "Bank of Changsha",
    }
)  # fmt: skip


# Answer codes (返回码). Each failure code has its own exception class in `shared.protocol.errors`.
ANSWER_OK = 1
ANSWER_CODES: Mapping[int, str] = MappingProxyType(
    {
        1: "success",
        100: "a required parameter is missing",
        101: "parameter check failed (merchant id or sign mismatch)",
        102: "merchant not found",
        103: "order not found",
        110: "query error (bad query parameters)",
        111: "wrong HTTP method",
        112: "no payment channel available",
        113: "system API error",
        114: "order placement or channel error",
    }
)
