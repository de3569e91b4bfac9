"""One typed settings object, read from the environment once at start-up.

The same variable names serve the local stack, docker-compose, Kubernetes and the tests; the
README's table lists them all. Nothing here runs at import time.
"""

from __future__ import annotations

import os
from collections.abc import Mapping as MappingABC
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import TYPE_CHECKING, Literal

from shared.domain.decision import DEFAULT_REPLAY_WINDOW_S, DEFAULT_TRANSFER_TOLERANCE_LI
from shared.topics import Topics

if TYPE_CHECKING:
    from collections.abc import Iterator, Mapping

DEFAULT_SANDBOX_URL = "http://127.0.0.1:8090/"
# WAIT blocks the connection: kept well under the Redis client's 5 s socket timeout, which would
# otherwise end a slow WAIT as a TimeoutError with the connection dropped.
MAX_WAIT_TIMEOUT_MS = 2000


class SettingsError(ValueError):
    """A setting is missing or malformed; the message names the variable."""


@dataclass(frozen=True)
class Settings:
    kafka_bootstrap_servers: str = "127.0.0.1:9092"
    redis_url: str = "redis://127.0.0.1:6379/0"
    merchants_file: Path | None = None
    merchants_reload: float = 10.0  # seconds between looks at the merchants file (0: SIGHUP only)
    platform_url: str = DEFAULT_SANDBOX_URL
    time_scale: float = 1.0
    order_records: Literal["required", "optional"] = "required"
    log_level: str = "INFO"
    log_format: Literal["json", "console"] = "json"
    # Every process's event loop (shared/event_loop.py); uvloop needs `paynotify[fast]`
    event_loop: Literal["asyncio", "uvloop"] = "asyncio"
    # The worker's and the sweeper's /healthz, /readyz and /metrics listener; 0: none
    metrics_port: int = 0
    metrics_host: str = "127.0.0.1"
    # Kafka topics
    topic_prefix: str = ""  # put before every topic name: deployments sharing a broker keep apart
    topic_partitions: int = 6
    topic_replication: int = 1
    consumer_group: str = "paynotify-workers"
    # Ingress
    kafka_ack_timeout: float = 5.0
    max_body_bytes: int = 8192
    ingress_body_timeout: float = 5.0  # seconds to receive a whole body once headers are in
    ingress_max_connections: int = 512  # open connections at once; more are answered 503
    ingress_audit_rate: float = 10.0  # audit records per second per sender, on average
    ingress_audit_burst: int = 50  # ... and at most this many at once
    # Verified notifications Kafka did not take, kept in Redis for the sweeper to publish (0: none)
    ingress_park_max: int = 100_000
    # Platform client
    pay_type_paths: Mapping[int, str] = field(default_factory=lambda: MappingProxyType({}))
    answer_sign_includes_envelope: bool = False
    platform_timeout: float = 10.0
    # Workers
    worker_concurrency: int = 256
    outcome_ttl_days: int = 30
    transfer_tolerance_li: int = DEFAULT_TRANSFER_TOLERANCE_LI
    replay_window: float = DEFAULT_REPLAY_WINDOW_S  # seconds; not time-scaled
    # Replicas that must acknowledge an outcome write (Redis WAIT) before its event is published;
    # 0: none asked (docs/scaling.md, Failover semantics). The timeout is WAIT's, per write.
    redis_wait_replicas: int = 0
    redis_wait_timeout_ms: int = 100
    # Sweeper
    sweep_rate: float = 50.0  # order queries per second, at most
    sweep_concurrency: int = 16
    order_expiry: float = 86_400.0  # seconds after creation, before time scaling

    def __post_init__(self) -> None:
        # A replayed notification is refused as stale only past the replay window; inside it, a
        # payment whose outcome had already expired would be decided a second time.
        if self.replay_window > self.outcome_ttl_days * 86_400:
            raise SettingsError(
                "PAYNOTIFY_REPLAY_WINDOW_S must not exceed the outcome retention "
                "(PAYNOTIFY_OUTCOME_TTL_DAYS days): a notification replayed after its outcome "
                "expired would be decided again"
            )

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Settings:
        source = os.environ if env is None else env
        read = _Reader(source)
        return cls(
            kafka_bootstrap_servers=read.text(
                "KAFKA_BOOTSTRAP_SERVERS", cls.kafka_bootstrap_servers
            ),
            redis_url=read.text("REDIS_URL", cls.redis_url),
            merchants_file=read.path("PAYNOTIFY_MERCHANTS_FILE"),
            merchants_reload=read.number(
                "PAYNOTIFY_MERCHANTS_RELOAD_S", cls.merchants_reload, zero=True
            ),
            platform_url=read.text("PAYNOTIFY_PLATFORM_URL", cls.platform_url),
            time_scale=read.number("PAYNOTIFY_TIME_SCALE", cls.time_scale),
            order_records=read.choice(  # type: ignore[arg-type]
                "PAYNOTIFY_ORDER_RECORDS", cls.order_records, ("required", "optional")
            ),
            log_level=read.choice(
                "PAYNOTIFY_LOG_LEVEL", cls.log_level, ("DEBUG", "INFO", "WARNING", "ERROR")
            ),
            log_format=read.choice(  # type: ignore[arg-type]
                "PAYNOTIFY_LOG_FORMAT", cls.log_format, ("json", "console")
            ),
            event_loop=read.choice(  # type: ignore[arg-type]
                "PAYNOTIFY_EVENT_LOOP", cls.event_loop, ("asyncio", "uvloop")
            ),
            metrics_port=read.port("PAYNOTIFY_METRICS_PORT", cls.metrics_port),
            metrics_host=read.text("PAYNOTIFY_METRICS_HOST", cls.metrics_host),
            topic_prefix=read.topic_prefix("PAYNOTIFY_TOPIC_PREFIX"),
            topic_partitions=read.integer("PAYNOTIFY_TOPIC_PARTITIONS", cls.topic_partitions),
            topic_replication=read.integer("PAYNOTIFY_TOPIC_REPLICATION", cls.topic_replication),
            consumer_group=read.text("PAYNOTIFY_CONSUMER_GROUP", cls.consumer_group),
            kafka_ack_timeout=read.number("PAYNOTIFY_KAFKA_ACK_TIMEOUT", cls.kafka_ack_timeout),
            max_body_bytes=read.integer("PAYNOTIFY_MAX_BODY_BYTES", cls.max_body_bytes),
            ingress_body_timeout=read.number(
                "PAYNOTIFY_INGRESS_BODY_TIMEOUT_S", cls.ingress_body_timeout
            ),
            ingress_max_connections=read.integer(
                "PAYNOTIFY_INGRESS_MAX_CONNECTIONS", cls.ingress_max_connections
            ),
            ingress_audit_rate=read.number("PAYNOTIFY_INGRESS_AUDIT_RATE", cls.ingress_audit_rate),
            ingress_audit_burst=read.integer(
                "PAYNOTIFY_INGRESS_AUDIT_BURST", cls.ingress_audit_burst
            ),
            ingress_park_max=read.integer(
                "PAYNOTIFY_INGRESS_PARK_MAX", cls.ingress_park_max, minimum=0
            ),
            pay_type_paths=read.pay_type_paths("PAYNOTIFY_PAY_TYPE_PATHS"),
            answer_sign_includes_envelope=read.flag(
                "PAYNOTIFY_ANSWER_SIGN_INCLUDES_ENVELOPE", default=False
            ),
            platform_timeout=read.number("PAYNOTIFY_PLATFORM_TIMEOUT", cls.platform_timeout),
            worker_concurrency=read.integer("PAYNOTIFY_WORKER_CONCURRENCY", cls.worker_concurrency),
            outcome_ttl_days=read.integer("PAYNOTIFY_OUTCOME_TTL_DAYS", cls.outcome_ttl_days),
            transfer_tolerance_li=read.integer(
                "PAYNOTIFY_TRANSFER_TOLERANCE_LI", cls.transfer_tolerance_li, minimum=0
            ),
            replay_window=read.number("PAYNOTIFY_REPLAY_WINDOW_S", cls.replay_window),
            redis_wait_replicas=read.integer(
                "PAYNOTIFY_REDIS_WAIT_REPLICAS", cls.redis_wait_replicas, minimum=0
            ),
            redis_wait_timeout_ms=read.integer(
                "PAYNOTIFY_REDIS_WAIT_TIMEOUT_MS",
                cls.redis_wait_timeout_ms,
                maximum=MAX_WAIT_TIMEOUT_MS,
            ),
            sweep_rate=read.number("PAYNOTIFY_SWEEP_RATE", cls.sweep_rate),
            sweep_concurrency=read.integer("PAYNOTIFY_SWEEP_CONCURRENCY", cls.sweep_concurrency),
            order_expiry=read.number("PAYNOTIFY_ORDER_EXPIRY", cls.order_expiry),
        )

    @property
    def topics(self) -> Topics:
        """This deployment's topic names (`PAYNOTIFY_TOPIC_PREFIX` before each)."""
        return Topics(self.topic_prefix)

    def scaled(self, seconds: float) -> float:
        """A schedule's delay under `PAYNOTIFY_TIME_SCALE` (0.01 runs 49 minutes in 29 s)."""
        return seconds * self.time_scale

    def require_merchants_file(self) -> Path:
        if self.merchants_file is None:
            raise SettingsError("PAYNOTIFY_MERCHANTS_FILE is not set; it names the merchants TOML")
        return self.merchants_file


def environment_variables() -> tuple[str, ...]:
    """Every variable `Settings.from_env` reads, in its order: found by letting it read an empty
    environment that notes each name asked for, so the list is never written twice."""
    asked = _Asked()
    Settings.from_env(asked)
    return tuple(dict.fromkeys(asked.names))


def environment_help(*more: str) -> str:
    """The `--help` epilog of a process that reads the settings (and `more`, e.g. tracing's)."""
    names = ", ".join((*environment_variables(), *more))
    return f"Environment, read once at start-up (README.md, Configuration): {names}."


class _Asked(MappingABC[str, str]):
    """An empty environment that remembers what was looked up in it."""

    def __init__(self) -> None:
        self.names: list[str] = []

    def __getitem__(self, name: str) -> str:
        self.names.append(name)
        raise KeyError(name)

    def __iter__(self) -> Iterator[str]:
        return iter(())

    def __len__(self) -> int:
        return 0


class _Reader:
    def __init__(self, env: Mapping[str, str]) -> None:
        self._env = env

    def _raw(self, name: str) -> str | None:
        value = self._env.get(name)
        return None if value is None or value.strip() == "" else value.strip()

    def text(self, name: str, default: str) -> str:
        return self._raw(name) or default

    def path(self, name: str) -> Path | None:
        raw = self._raw(name)
        return None if raw is None else Path(raw)

    def number(self, name: str, default: float, *, zero: bool = False) -> float:
        raw = self._raw(name)
        if raw is None:
            return default
        try:
            value = float(raw)
        except ValueError:
            raise SettingsError(f"{name} must be a number") from None
        if zero and value == 0:
            return 0.0
        if not value > 0 or value == float("inf"):
            kind = "zero or a positive finite number" if zero else "a positive finite number"
            raise SettingsError(f"{name} must be {kind}")
        return value

    def integer(
        self, name: str, default: int, *, minimum: int = 1, maximum: int | None = None
    ) -> int:
        raw = self._raw(name)
        if raw is None:
            return default
        valid = raw.isascii() and raw.isdigit() and int(raw) >= minimum
        if maximum is not None:
            if not valid or int(raw) > maximum:
                raise SettingsError(f"{name} must be an integer from {minimum} to {maximum}")
        elif not valid:
            kind = "a positive integer" if minimum == 1 else f"an integer of at least {minimum}"
            raise SettingsError(f"{name} must be {kind}")
        return int(raw)

    def port(self, name: str, default: int) -> int:
        port = self.integer(name, default, minimum=0)
        if port > 65535:  # the TCP port range
            raise SettingsError(f"{name} must be a TCP port (0-65535)")
        return port

    def topic_prefix(self, name: str) -> str:
        raw = self._raw(name) or ""
        if len(raw) > 100 or not all(c.isascii() and (c.isalnum() or c in "._-") for c in raw):
            raise SettingsError(f"{name} may hold only ASCII letters, digits, '.', '_' and '-'")
        return raw

    def choice(self, name: str, default: str, allowed: tuple[str, ...]) -> str:
        raw = self._raw(name)
        if raw is None:
            return default
        if raw not in allowed:
            raise SettingsError(f"{name} must be one of {', '.join(allowed)}")
        return raw

    def flag(self, name: str, *, default: bool) -> bool:
        raw = self._raw(name)
        if raw is None:
            return default
        if raw.lower() in {"1", "true", "yes", "on"}:
            return True
        if raw.lower() in {"0", "false", "no", "off"}:
            return False
        raise SettingsError(f"{name} must be true or false")

    def pay_type_paths(self, name: str) -> Mapping[int, str]:
        """`42=api/v1/wx_bank_transfer.api,43=api/v1/ali_bank_transfer.api`"""
        raw = self._raw(name)
        if raw is None:
            return MappingProxyType({})
        paths: dict[int, str] = {}
        for item in raw.split(","):
            code, sep, path = item.strip().partition("=")
            if not sep or not code.isdigit() or not path:
                raise SettingsError(f"{name} must look like 42=api/v1/x.api,43=api/v1/y.api")
            paths[int(code)] = path
        return MappingProxyType(paths)
