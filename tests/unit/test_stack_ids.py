"""The local stack's Kafka cluster id: never read as a command-line option."""

from __future__ import annotations

import base64
import itertools
import re

import pytest

from devtools.stack.local import kafka_cluster_id

pytestmark = pytest.mark.unit

_KAFKA_ID = re.compile(r"[A-Za-z0-9_\-]{22}")


def test_an_id_that_would_start_with_a_dash_is_drawn_again() -> None:
    """0xF8 encodes to `-` first (one draw in 64 did before): the next draw is taken instead."""
    draws = iter([b"\xf8" + bytes(15), b"\x01" * 16])
    first = base64.urlsafe_b64encode(b"\xf8" + bytes(15)).decode()
    assert first.startswith("-")  # the case the old code passed to `kafka-storage format -t`

    cluster_id = kafka_cluster_id(lambda n: next(draws)[:n])

    assert cluster_id == base64.urlsafe_b64encode(b"\x01" * 16).decode().rstrip("=")


def test_every_first_byte_gives_a_valid_id_that_is_no_option() -> None:
    """All 256 leading bytes, each followed by the next one drawn if refused."""
    for lead in range(256):
        draws = itertools.chain([bytes([lead]) + bytes(15)], itertools.repeat(bytes(16)))
        cluster_id = kafka_cluster_id(lambda n, draws=draws: next(draws)[:n])
        assert _KAFKA_ID.fullmatch(cluster_id), cluster_id
        assert not cluster_id.startswith("-")


def test_many_random_ids_are_valid_and_never_start_with_a_dash() -> None:
    """Over 20,000 ids about 310 would have started with `-` under the old rule."""
    ids = [kafka_cluster_id() for _ in range(20_000)]
    assert all(_KAFKA_ID.fullmatch(i) and not i.startswith("-") for i in ids)
    assert len(set(ids)) == len(ids)
