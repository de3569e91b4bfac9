"""`PAYNOTIFY_REDIS_WAIT_REPLICAS` and `PAYNOTIFY_REDIS_WAIT_TIMEOUT_MS`: defaults, strict
parsing."""

from __future__ import annotations

import pytest

from shared.settings import MAX_WAIT_TIMEOUT_MS, Settings, SettingsError, environment_variables

pytestmark = pytest.mark.unit


def test_waiting_is_off_by_default_with_a_short_timeout() -> None:
    """No replicas are waited for unless asked; the timeout has a documented default."""
    settings = Settings.from_env({})
    assert (settings.redis_wait_replicas, settings.redis_wait_timeout_ms) == (0, 100)


def test_both_are_read_and_listed() -> None:
    """The values are taken as given, and `--help` (environment_variables) names both."""
    settings = Settings.from_env(
        {"PAYNOTIFY_REDIS_WAIT_REPLICAS": "1", "PAYNOTIFY_REDIS_WAIT_TIMEOUT_MS": "250"}
    )
    assert (settings.redis_wait_replicas, settings.redis_wait_timeout_ms) == (1, 250)
    assert {"PAYNOTIFY_REDIS_WAIT_REPLICAS", "PAYNOTIFY_REDIS_WAIT_TIMEOUT_MS"} <= set(
        environment_variables()
    )
    assert Settings.from_env({"PAYNOTIFY_REDIS_WAIT_REPLICAS": "0"}).redis_wait_replicas == 0


@pytest.mark.parametrize(
    ("name", "value", "says"),
    [
        ("PAYNOTIFY_REDIS_WAIT_REPLICAS", "-1", "an integer of at least 0"),
        ("PAYNOTIFY_REDIS_WAIT_REPLICAS", "one", "an integer of at least 0"),
        ("PAYNOTIFY_REDIS_WAIT_REPLICAS", "1.5", "an integer of at least 0"),
        ("PAYNOTIFY_REDIS_WAIT_TIMEOUT_MS", "0", f"an integer from 1 to {MAX_WAIT_TIMEOUT_MS}"),
        ("PAYNOTIFY_REDIS_WAIT_TIMEOUT_MS", "-5", f"an integer from 1 to {MAX_WAIT_TIMEOUT_MS}"),
        ("PAYNOTIFY_REDIS_WAIT_TIMEOUT_MS", "2001", f"an integer from 1 to {MAX_WAIT_TIMEOUT_MS}"),
        ("PAYNOTIFY_REDIS_WAIT_TIMEOUT_MS", "1e3", f"an integer from 1 to {MAX_WAIT_TIMEOUT_MS}"),
    ],
)
def test_a_malformed_value_is_refused_by_name(name: str, value: str, says: str) -> None:
    """A bad value stops start-up, naming the variable and what it must be (0 timeout: WAIT's
    0 means "for ever", which would hang a worker on a lost replica)."""
    with pytest.raises(SettingsError, match=f"{name} must be {says}"):
        Settings.from_env({name: value})
