"""`paynotify sign` and `paynotify verify` on the command line."""

from __future__ import annotations

import pytest

from shared.cli import main

pytestmark = pytest.mark.unit

KEY = "25e72d96d0ffe0bb74373344d986df3c"
DOC_PAIRS = [
    "mch_order=20171206142839049",
    "amt=1",
    "client_ip=192.168.1.176",
    "remark=产品备注",
    "notify_url=https://app.zlsky.me/notify.php",
    "call={user:1}",
    "mch_id=t9awtvk6dn",
    "sign_type=md5",
    "created_at=1512541824",
]
DOC_SIGN = "5883eb7db6fc28286f440b291c4bc24a"


def test_sign_prints_the_document_vector(capsys: pytest.CaptureFixture[str]) -> None:
    """`paynotify sign --key K <document example>` prints the document's signature."""
    assert main(["sign", "--key", KEY, *DOC_PAIRS]) == 0
    assert capsys.readouterr().out == DOC_SIGN + "\n"


@pytest.mark.parametrize("given_sign", [DOC_SIGN, DOC_SIGN.upper()])
def test_verify_accepts_a_match(given_sign: str, capsys: pytest.CaptureFixture[str]) -> None:
    """verify exits 0 when the sign matches, in either hex case, and names the key by id."""
    assert main(["verify", "--key", KEY, *DOC_PAIRS, f"sign={given_sign}"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("ok:")
    assert KEY not in out


@pytest.mark.parametrize(
    ("pairs", "reason"),
    [
        ([*DOC_PAIRS[1:], f"sign={DOC_SIGN}"], "sign_mismatch"),
        ([*DOC_PAIRS, "user_level=0", f"sign={DOC_SIGN}"], "sign_mismatch"),
        (DOC_PAIRS, "sign_missing"),
        ([*DOC_PAIRS, "sign=xyz"], "sign_malformed"),
        ([*DOC_PAIRS, f"mch_key={KEY}", f"sign={DOC_SIGN}"], "key_field_present"),
    ],
)
def test_verify_reports_a_mismatch_in_one_line(
    pairs: list[str], reason: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """verify exits 1 with a one-line reason naming the rule; it never prints key or sign."""
    assert main(["verify", "--key", KEY, *pairs]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert reason in err
    assert KEY not in err
    assert DOC_SIGN not in err


def test_pairs_split_at_the_first_equals(capsys: pytest.CaptureFixture[str]) -> None:
    """A value may itself hold `=`; the pair is split at the first one only, read raw."""
    assert main(["sign", "--key", KEY, "notify_url=https://x.example/n?a=b&c=%20"]) == 0
    signature = capsys.readouterr().out.strip()
    pairs = ["notify_url=https://x.example/n?a=b&c=%20", f"sign={signature}"]
    assert main(["verify", "--key", KEY, *pairs]) == 0


def test_empty_values_are_left_out(capsys: pytest.CaptureFixture[str]) -> None:
    """`k=` is an empty value and, as on the platform, not signed."""
    assert main(["sign", "--key", KEY, *DOC_PAIRS, "success_at="]) == 0
    assert capsys.readouterr().out.strip() == DOC_SIGN


@pytest.mark.parametrize(
    "pairs", [["no-equals-sign"], ["=value"], ["amt=1", "amt=2"], [f"mch_key={KEY}"]]
)
def test_sign_refuses_bad_pairs(pairs: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    """Malformed or repeated pairs, or a mch_key pair, are usage errors (exit 2), not echoed."""
    assert main(["sign", "--key", KEY, *pairs]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert KEY not in captured.err
    assert "no-equals-sign" not in captured.err


def test_empty_key_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    """A key must not be empty."""
    assert main(["sign", "--key", "", "amt=1"]) == 2
    assert "empty" in capsys.readouterr().err
