"""The settings issue 10 added: transfer tolerance, replay window, topic prefix."""

from __future__ import annotations

import pytest

from shared.settings import Settings, SettingsError

pytestmark = pytest.mark.unit


def test_the_defaults_are_the_documented_ones() -> None:
    settings = Settings.from_env({})
    assert settings.transfer_tolerance_li == 100
    assert settings.replay_window == 86_400
    assert settings.topic_prefix == ""


def test_each_is_read_from_its_variable() -> None:
    settings = Settings.from_env(
        {
            "PAYNOTIFY_TRANSFER_TOLERANCE_LI": "0",
            "PAYNOTIFY_REPLAY_WINDOW_S": "3600",
            "PAYNOTIFY_TOPIC_PREFIX": "demo-7.",
        }
    )
    assert (settings.transfer_tolerance_li, settings.replay_window) == (0, 3600)
    assert settings.topic_prefix == "demo-7."


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("PAYNOTIFY_TRANSFER_TOLERANCE_LI", "-1"),
        ("PAYNOTIFY_TRANSFER_TOLERANCE_LI", "1.5"),
        ("PAYNOTIFY_REPLAY_WINDOW_S", "-5"),
        ("PAYNOTIFY_TOPIC_PREFIX", "a b"),
        ("PAYNOTIFY_TOPIC_PREFIX", "x/y"),
        ("PAYNOTIFY_TOPIC_PREFIX", "é"),
    ],
)
def test_a_malformed_value_is_refused_naming_the_variable(name: str, value: str) -> None:
    with pytest.raises(SettingsError, match=name):
        Settings.from_env({name: value})


@pytest.mark.parametrize(
    "env",
    [
        {"PAYNOTIFY_REPLAY_WINDOW_S": str(31 * 86_400)},  # past the default 30 days
        {"PAYNOTIFY_OUTCOME_TTL_DAYS": "1", "PAYNOTIFY_REPLAY_WINDOW_S": "86401"},
    ],
)
def test_a_replay_window_longer_than_the_outcome_retention_is_refused(
    env: dict[str, str],
) -> None:
    """Inside the window a replay is not refused as stale: were the payment's outcome already
    gone, it would be decided again, so the settings refuse such a window."""
    with pytest.raises(SettingsError, match="PAYNOTIFY_REPLAY_WINDOW_S must not exceed"):
        Settings.from_env(env)


def test_a_replay_window_as_long_as_the_outcome_retention_is_taken() -> None:
    """The outcome also outlives its retention by the order expiry, so equal is safe."""
    settings = Settings.from_env(
        {"PAYNOTIFY_OUTCOME_TTL_DAYS": "1", "PAYNOTIFY_REPLAY_WINDOW_S": "86400"}
    )
    assert settings.replay_window == settings.outcome_ttl_days * 86_400
