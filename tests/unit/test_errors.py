"""Answer codes map to named errors; retry policy waits are capped and jittered."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from shared.platform.retry import RetryPolicy
from shared.protocol.catalog import ANSWER_CODES, ANSWER_OK
from shared.protocol.errors import (
    MAX_MSG_LENGTH,
    AnswerSignatureError,
    MerchantNotFound,
    MissingParameter,
    NoChannelAvailable,
    OrderNotFound,
    OrderPlacementError,
    ParameterCheckFailed,
    PlatformError,
    PlatformUnavailable,
    QueryError,
    SystemApiError,
    WrongMethod,
    error_for,
)

pytestmark = pytest.mark.unit

NAMED = {
    100: MissingParameter, 101: ParameterCheckFailed, 102: MerchantNotFound, 103: OrderNotFound,
    110: QueryError, 111: WrongMethod, 112: NoChannelAvailable, 113: SystemApiError,
    114: OrderPlacementError,
}  # fmt: skip


def test_every_failure_code_has_its_named_error() -> None:
    """Each documented failure code maps to its own class, carrying code and msg."""
    assert set(NAMED) == set(ANSWER_CODES) - {ANSWER_OK}
    for code, cls in NAMED.items():
        error = error_for(code, "msg")
        assert type(error) is cls
        assert (error.code, error.msg, cls.code_value) == (code, "msg", code)
        assert isinstance(error, PlatformError)


def test_only_113_and_114_and_transport_failures_are_transient() -> None:
    """113/114 and PlatformUnavailable are retried; the rest, and bad signatures, are not."""
    assert {code for code, cls in NAMED.items() if cls.transient} == {113, 114}
    assert PlatformUnavailable("timeout").transient
    assert not AnswerSignatureError("sign_mismatch").transient


def test_undocumented_code_is_a_plain_platform_error() -> None:
    """An unknown code still raises, as a permanent PlatformError with that code."""
    error = error_for(999, "what")
    assert type(error) is PlatformError
    assert error.code == 999
    assert not error.transient
    assert error.reason == "PlatformError(999)"


def test_platform_message_is_cleaned_and_capped() -> None:
    """The platform's msg loses control characters and is cut to a bounded length."""
    error = error_for(103, "line\r\nbreak\x00" + "x" * 500)
    assert "\n" not in str(error)
    assert "\x00" not in error.msg
    assert len(error.msg) == MAX_MSG_LENGTH


@given(
    retries=st.integers(0, 20),
    base=st.floats(0, 10),
    extra=st.floats(0, 100),
    unit=st.floats(0, 1, exclude_max=True),
)
def test_backoff_is_capped_and_jittered(
    retries: int, base: float, extra: float, unit: float
) -> None:
    """Each wait is between half and all of min(max_delay, base * 2**retry)."""
    policy = RetryPolicy(retries=retries, base_delay=base, max_delay=base + extra)
    for retry in range(retries + 1):
        step = min(policy.max_delay, base * 2**retry)
        wait = policy.backoff(retry, lambda: unit)
        assert step / 2 - 1e-9 <= wait <= step + 1e-9


def test_retry_policy_rejects_nonsense() -> None:
    """Negative retries or a base above the cap are configuration errors."""
    with pytest.raises(ValueError, match="retries"):
        RetryPolicy(retries=-1)
    with pytest.raises(ValueError, match="base_delay"):
        RetryPolicy(base_delay=2, max_delay=1)
