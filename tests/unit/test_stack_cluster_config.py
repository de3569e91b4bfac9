"""The local stack's configuration for one broker (unchanged) and for a three-node cluster."""

from __future__ import annotations

from typing import TYPE_CHECKING

import pytest

from devtools.stack.local import LocalStack, StackError, stored_brokers

if TYPE_CHECKING:
    from pathlib import Path

pytestmark = pytest.mark.unit


def properties(text: str) -> dict[str, str]:
    return dict(
        line.split("=", 1) for line in text.splitlines() if line and not line.startswith("#")
    )


def test_one_broker_keeps_its_configuration_and_exports(tmp_path: Path) -> None:
    """The default stack: one node voting for itself, replication 1, no replication export."""
    stack = LocalStack(state_dir=tmp_path, kafka_port=9092, redis_port=6379)
    found = properties(stack._server_properties(tmp_path / "data"))
    assert found["node.id"] == "1"
    assert found["controller.quorum.voters"] == f"1@127.0.0.1:{stack.controller_port}"
    assert found["offsets.topic.replication.factor"] == "1"
    assert "min.insync.replicas" not in found
    assert stack.bootstrap_servers == "127.0.0.1:9092"
    assert stack.exports() == (
        "export KAFKA_BOOTSTRAP_SERVERS=127.0.0.1:9092\nexport REDIS_URL=redis://127.0.0.1:6379/0\n"
    )


def test_three_brokers_vote_together_on_loopback_with_replication_three(tmp_path: Path) -> None:
    """Each node is broker and controller, all three vote, every listener is on 127.0.0.1, and
    the internal topics and defaults ask for 3 replicas, 2 in sync."""
    stack = LocalStack(state_dir=tmp_path, kafka_port=19092, redis_port=16379, brokers=3)
    ports = stack.broker_ports
    assert ports[0] == 19092
    assert len(set(ports)) == 3
    nodes = [properties(stack._server_properties(tmp_path / f"d{n}", n)) for n in (1, 2, 3)]
    voters = {found["controller.quorum.voters"] for found in nodes}
    assert len(voters) == 1
    assert voters.pop().count("@127.0.0.1:") == 3
    for node, (found, port) in enumerate(zip(nodes, ports, strict=True), start=1):
        assert found["node.id"] == str(node)
        assert found["process.roles"] == "broker,controller"
        assert found["listeners"].startswith(
            f"PLAINTEXT://127.0.0.1:{port},CONTROLLER://127.0.0.1:"
        )
        assert found["advertised.listeners"] == f"PLAINTEXT://127.0.0.1:{port}"
        assert found["default.replication.factor"] == "3"
        assert found["min.insync.replicas"] == "2"
        assert found["offsets.topic.replication.factor"] == "3"
        assert found["transaction.state.log.min.isr"] == "2"
    assert stack.bootstrap_servers == ",".join(f"127.0.0.1:{p}" for p in ports)
    assert "export PAYNOTIFY_TOPIC_REPLICATION=3\n" in stack.exports()
    # The ports are kept: the same state directory gives the same cluster.
    again = LocalStack(state_dir=tmp_path, kafka_port=19092, redis_port=16379, brokers=3)
    assert again.broker_ports == ports


def test_a_state_directory_keeps_its_cluster_size(tmp_path: Path) -> None:
    """A directory made for three brokers is not started as one (its data names three voters)."""
    LocalStack(state_dir=tmp_path, brokers=3)._check_broker_count()
    assert stored_brokers(tmp_path) == 3
    with pytest.raises(StackError, match="3-broker"):
        LocalStack(state_dir=tmp_path, brokers=1)._check_broker_count()
    with pytest.raises(StackError, match="1 or 3"):
        LocalStack(state_dir=tmp_path, brokers=2)
