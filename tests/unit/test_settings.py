"""Settings from the environment and the merchants file: defaults, validation, no secrets shown."""

from __future__ import annotations

from pathlib import Path

import pytest

from shared.merchants import MerchantsFileError, load_merchants, parse_merchants
from shared.settings import Settings, SettingsError

pytestmark = pytest.mark.unit


def test_defaults_point_at_the_local_stack_and_sandbox() -> None:
    """With no environment, every process talks to the local stack and the local sandbox."""
    settings = Settings.from_env({})
    assert settings.kafka_bootstrap_servers == "127.0.0.1:9092"
    assert settings.redis_url == "redis://127.0.0.1:6379/0"
    assert settings.platform_url == "http://127.0.0.1:8090/"
    assert settings.time_scale == 1.0
    assert settings.order_records == "required"
    assert settings.merchants_file is None


def test_every_variable_is_read() -> None:
    """The names in the README's table are the names read."""
    settings = Settings.from_env(
        {
            "KAFKA_BOOTSTRAP_SERVERS": "k:1",
            "REDIS_URL": "redis://r:2/3",
            "PAYNOTIFY_MERCHANTS_FILE": "/etc/m.toml",
            "PAYNOTIFY_PLATFORM_URL": "http://p/",
            "PAYNOTIFY_TIME_SCALE": "0.01",
            "PAYNOTIFY_ORDER_RECORDS": "optional",
            "PAYNOTIFY_PAY_TYPE_PATHS": "42=api/v1/wx_bank_transfer.api,43=api/v1/x.api",
            "PAYNOTIFY_ANSWER_SIGN_INCLUDES_ENVELOPE": "true",
            "PAYNOTIFY_WORKER_CONCURRENCY": "64",
            "PAYNOTIFY_OUTCOME_TTL_DAYS": "7",
            "PAYNOTIFY_INGRESS_BODY_TIMEOUT_S": "2.5",
            "PAYNOTIFY_INGRESS_MAX_CONNECTIONS": "64",
            "PAYNOTIFY_INGRESS_AUDIT_RATE": "0.5",
            "PAYNOTIFY_INGRESS_AUDIT_BURST": "5",
            "PAYNOTIFY_METRICS_PORT": "9464",
            "PAYNOTIFY_METRICS_HOST": "0.0.0.0",  # noqa: S104 - only read, nothing binds here
        }
    )
    assert settings.kafka_bootstrap_servers == "k:1"
    assert settings.redis_url == "redis://r:2/3"
    assert settings.merchants_file == Path("/etc/m.toml")
    assert settings.platform_url == "http://p/"
    assert settings.scaled(2940) == pytest.approx(29.4)
    assert settings.order_records == "optional"
    assert dict(settings.pay_type_paths) == {42: "api/v1/wx_bank_transfer.api", 43: "api/v1/x.api"}
    assert settings.answer_sign_includes_envelope is True
    assert settings.worker_concurrency == 64
    assert settings.outcome_ttl_days == 7
    assert settings.ingress_body_timeout == 2.5
    assert settings.ingress_max_connections == 64
    assert (settings.ingress_audit_rate, settings.ingress_audit_burst) == (0.5, 5)
    assert (settings.metrics_host, settings.metrics_port) == ("0.0.0.0", 9464)  # noqa: S104


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("PAYNOTIFY_TIME_SCALE", "fast"),
        ("PAYNOTIFY_TIME_SCALE", "0"),
        ("PAYNOTIFY_TIME_SCALE", "inf"),
        ("PAYNOTIFY_ORDER_RECORDS", "maybe"),
        ("PAYNOTIFY_WORKER_CONCURRENCY", "-3"),
        ("PAYNOTIFY_PAY_TYPE_PATHS", "42:api"),
        ("PAYNOTIFY_ANSWER_SIGN_INCLUDES_ENVELOPE", "perhaps"),
        ("PAYNOTIFY_INGRESS_BODY_TIMEOUT_S", "0"),
        ("PAYNOTIFY_INGRESS_MAX_CONNECTIONS", "0"),
        ("PAYNOTIFY_METRICS_PORT", "-1"),
        ("PAYNOTIFY_METRICS_PORT", "65536"),
    ],
)
def test_a_malformed_value_names_its_variable(name: str, value: str) -> None:
    """A bad setting stops start-up with the variable's name in the message."""
    with pytest.raises(SettingsError, match=name):
        Settings.from_env({name: value})


def test_missing_merchants_file_is_a_clear_error() -> None:
    """Secrets have no defaults: a process that needs the file says which variable to set."""
    with pytest.raises(SettingsError, match="PAYNOTIFY_MERCHANTS_FILE"):
        Settings.from_env({}).require_merchants_file()


def test_merchants_file_with_rotation_and_allow_list(tmp_path: Path) -> None:
    """Keys keep their order (current first); allow_from limits sources; keys stay out of repr."""
    path = tmp_path / "m.toml"
    path.write_text(
        '[merchants.shop1]\nkeys = ["new-secret", "old-secret"]\nallow_from = ["10.0.0.0/8"]\n'
    )
    merchant = load_merchants(path)["shop1"]
    assert [k.secret for k in merchant.keys] == ["new-secret", "old-secret"]
    assert merchant.signing_key.secret == "new-secret"
    assert merchant.allows("10.1.2.3")
    assert not merchant.allows("192.0.2.1")
    assert not merchant.allows(None)
    assert "secret" not in repr(merchant)


@pytest.mark.parametrize(
    "document",
    [
        {},
        {"merchants": {"shop": {"keys": []}}},
        {"merchants": {"shop": {"keys": ["k"], "allow_from": ["not-a-net"]}}},
        {"merchants": {"a&b": {"keys": ["k"]}}},
    ],
)
def test_invalid_merchants_documents_are_refused(document: dict) -> None:
    """Every broken merchants file is refused at start-up with a message, never half-loaded."""
    with pytest.raises(MerchantsFileError):
        parse_merchants(document)


def test_an_error_never_shows_a_key(tmp_path: Path) -> None:
    """A TOML syntax error near a key does not echo the key back."""
    path = tmp_path / "m.toml"
    path.write_text('[merchants.shop]\nkeys = ["topsecretkey"\n')
    with pytest.raises(MerchantsFileError) as info:
        load_merchants(path)
    assert "topsecretkey" not in str(info.value)


@pytest.mark.parametrize(
    ("document", "says"),
    [
        # Issue 10, hole 12: `a:b` + `c` and `a` + `b:c` would share the order key `a:b:c`.
        ({"merchants": {"shop:1": {"keys": ["k1"]}}}, "':' is not allowed"),
        ({"merchants": {"shop": {"keys": ["   "]}}}, "key 1 is blank"),
        ({"merchants": {"shop": {"keys": ["k1", " k2"]}}}, "key 2 is blank"),
        ({"merchants": {"shop": {"keys": ["k1\t"]}}}, "key 1 is blank"),
        ({"merchants": {"shop": {"keys": ["k\x001"]}}}, "control characters"),
    ],
)
def test_ambiguous_merchant_ids_and_blank_keys_are_refused(document: dict, says: str) -> None:
    """Refused at load, and the message names the key by position, never by value."""
    with pytest.raises(MerchantsFileError, match=says) as info:
        parse_merchants(document)
    assert "k2" not in str(info.value)
    assert "k1" not in str(info.value)
