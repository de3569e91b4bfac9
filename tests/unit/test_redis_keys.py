"""The Redis key layout works on Redis Cluster: every key of one payment in one hash slot, every
Lua script given keys of one slot only, the schedules spread over shards (docs/scaling.md)."""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st
from redis.crc import key_slot

from shared.adapters import redis_keys
from shared.adapters.order_book import expired_marker_key, order_record_key, record_key_of
from shared.adapters.outcomes import lock_key, outcome_key
from shared.adapters.redis_client import is_cluster_url, parse_cluster_url
from shared.adapters.schedules import fair_quotas
from shared.protocol.payment import order_key

pytestmark = pytest.mark.unit

REPO = Path(__file__).resolve().parents[2]
TEXT = st.text(
    st.characters(blacklist_categories=("Cc", "Cs"), blacklist_characters="&="), min_size=1
)


def _keys_of(mch_id: str, mch_order: str) -> list[str]:
    key = order_key(mch_id, mch_order)
    return [
        order_record_key(mch_id, mch_order),
        record_key_of(key),
        outcome_key(key),
        lock_key(key),
        expired_marker_key(mch_id, mch_order),
    ]


def test_the_documented_names() -> None:
    """The names docs/order-book.md and docs/workers.md give, hash tag included."""
    assert _keys_of("m1", "A-1") == [
        "pn:order:{m1:A-1}",
        "pn:order:{m1:A-1}",
        "pn:outcome:{m1:A-1}",
        "pn:lock:{m1:A-1}",
        "pn:expired:{m1:A-1}",
    ]
    assert redis_keys.pending_keys()[3] == "pn:orders:pending:{pending:3}"
    assert redis_keys.retry_keys()[15] == "pn:retry:{retry:15}"
    assert len(redis_keys.pending_keys()) == len(redis_keys.retry_keys()) == redis_keys.SHARDS


@given(TEXT, TEXT)
def test_every_key_of_one_payment_shares_one_slot(mch_id: str, mch_order: str) -> None:
    """Whatever the ids hold (braces included), the order's keys hash to one slot, the slot of
    its tag: scripts may touch them together on a cluster."""
    slots = {
        key_slot(key.encode("utf-8", "surrogateescape")) for key in _keys_of(mch_id, mch_order)
    }
    assert len(slots) == 1


def test_a_key_starting_with_a_closing_brace_keeps_one_slot() -> None:
    """`{}...` would be an empty tag (Redis then hashes the whole key): such ids get `~` first."""
    keys = _keys_of("}m", "o")
    assert keys[0] == "pn:order:{~}m:o}"
    assert len({redis_keys.slot(k) for k in keys}) == 1


def test_orders_spread_over_many_slots() -> None:
    """1000 orders land in hundreds of slots, not a few (the tag is the whole order key)."""
    slots = {redis_keys.slot(outcome_key(f"m1:o-{i}")) for i in range(1000)}
    assert len(slots) > 900


def test_shards_have_slots_of_their_own() -> None:
    """Each shard of both schedules is its own slot: 32 keys, 32 slots."""
    keys = redis_keys.pending_keys() + redis_keys.retry_keys()
    assert len({redis_keys.slot(k) for k in keys}) == len(keys)


def test_a_members_shard_is_stable_and_members_spread() -> None:
    """The shard is CRC16 of the member (the same in every process); 1600 members fill every
    shard about evenly."""
    assert redis_keys.shard_of(b"m1:o-1") == redis_keys.shard_of("m1:o-1")
    counts = [0] * redis_keys.SHARDS
    for i in range(1600):
        counts[redis_keys.shard_of(f"m1:o-{i}".encode())] += 1
    assert min(counts) > 60


@pytest.mark.parametrize(
    ("due", "limit", "first", "expected"),
    [
        ([5, 5, 5], 6, 0, [2, 2, 2]),
        ([0, 9, 1], 6, 0, [0, 5, 1]),
        ([3, 3, 3], 1, 2, [0, 0, 1]),
        ([3, 3, 3], 2, 2, [1, 0, 1]),
        ([1, 0, 2], 10, 0, [1, 0, 2]),
        ([0, 0, 0], 5, 1, [0, 0, 0]),
    ],
)
def test_fair_quotas(due: list[int], limit: int, first: int, expected: list[int]) -> None:
    """A claim's limit shared one at a time round the shards that have due members, from a
    rotating first shard; never more than a shard has or the limit."""
    assert fair_quotas(due, limit, first) == expected


@given(st.lists(st.integers(0, 50), min_size=1, max_size=16), st.integers(0, 200), st.data())
def test_fair_quotas_take_what_is_there(due: list[int], limit: int, data: st.DataObject) -> None:
    """The quotas add up to min(limit, all due), each within its shard's due count, and differ
    by at most one among shards that still had more."""
    first = data.draw(st.integers(0, len(due) - 1))
    quotas = fair_quotas(due, limit, first)
    assert sum(quotas) == min(limit, sum(due))
    assert all(0 <= q <= d for q, d in zip(quotas, due, strict=True))
    unfilled = [q for q, d in zip(quotas, due, strict=True) if q < d]
    assert not unfilled or max(quotas) <= min(unfilled) + 1


# -- every script's keys in one slot -----------------------------------------------------------

_SCRIPT_SOURCES = [
    "shared/adapters/order_book.py",
    "shared/adapters/outcomes.py",
    "shared/adapters/redis_lock.py",
    "shared/adapters/schedules.py",
    "shared/adapters/parked.py",
    "shared/adapters/replication.py",  # one key per script call (the outcome's), by its signature
    "shared/adapters/redis_client.py",  # Script, how the others call theirs: no script of its own
]


def test_the_audit_covers_every_module_that_registers_a_script() -> None:
    """A new module with a script must join the list above (and the checks below)."""
    found = {
        str(path.relative_to(REPO))
        for folder in ("shared", "workers", "ingress")
        for path in (REPO / folder).rglob("*.py")
        if re.search(r"register_script|\.eval(sha)?\(", path.read_text())
    }
    assert found <= set(_SCRIPT_SOURCES)


class _Recorder:
    """Stands in for a Redis client: records each script call's keys, answers like Redis."""

    def __init__(self, answers: dict[str, object]) -> None:
        self.calls: list[tuple[str, list[str | bytes]]] = []
        self._answers = answers
        self._sources: dict[str, str] = {}

    def register_script(self, source: str) -> object:
        recorder = self
        sha = hashlib.sha1(source.encode()).hexdigest()  # noqa: S324 - as Redis names scripts
        recorder._sources[sha] = source

        async def call(
            keys: list[str | bytes], args: list[object], client: object = None
        ) -> object:
            recorder.calls.append((source, list(keys)))
            for marker, answer in recorder._answers.items():
                if marker in source:
                    return answer
            return 1

        call.sha = sha  # type: ignore[attr-defined]
        return call

    async def execute_command(self, command: str, sha: str, numkeys: int, *rest: object) -> object:
        """EVALSHA, as shared.adapters.redis_client.Script sends it."""
        assert command == "EVALSHA"
        script = self.register_script(self._sources[sha])
        return await script(list(rest[:numkeys]), list(rest[numkeys:]))  # type: ignore[operator]

    async def zadd(self, *_: object, **__: object) -> int:
        return 1

    async def zrem(self, *_: object) -> int:
        return 1

    async def hgetall(self, *_: object) -> dict[bytes, bytes]:
        return {}


def _slots(keys: list[str | bytes]) -> set[int]:
    return {
        key_slot(k.encode("utf-8", "surrogateescape") if isinstance(k, str) else k) for k in keys
    }


async def test_every_order_book_and_outcome_script_call_touches_one_slot() -> None:
    """Drive every OrderBook and OutcomeStore method that runs a script (repeat payments, whose
    record is another order's, included) and check each call's keys share one slot."""
    from shared.adapters.order_book import OrderBook  # noqa: PLC0415
    from shared.adapters.outcomes import OutcomeStore  # noqa: PLC0415
    from shared.clock import ManualClock  # noqa: PLC0415
    from shared.domain.orders import OrderRecord  # noqa: PLC0415

    full = [b"mch_id", b"m1", b"mch_order", b"o-1", b"amt", b"1", b"pay_type", b"10",
            b"created_at", b"1", b"state", b"pending"]  # fmt: skip
    redis = _Recorder(
        {
            "local fields": [1, b"1", b"10", b"1", 1],
            "NX', 'PX'": [2, full],
            "local existing": [1, [], 1],
            "ZRANGEBYSCORE": [],
        }
    )
    book = OrderBook(redis, ManualClock())  # type: ignore[arg-type]
    store = OutcomeStore(redis, outcome_ttl_seconds=60, lock_ttl_ms=1000)  # type: ignore[arg-type]
    record = OrderRecord("m1", "o-1", 1, 10, 1)
    await book.record(record)
    await book.record_transfer_amount("m1", "o-1", 1)
    await book.mark_failed("m1", "o-1", "refused")
    await book.reschedule("m1:o-1", 5.0, queried=True, failed=True)
    await book.stop_sweeping("m1:o-1", "hopeless")
    await book.begin_expire(record)
    await book.finish_expire(record)
    await store.begin("m1:o-2", "m1", "o-2")
    await store.begin("m1:o-2", "m1", "o-1")  # a repeat payment of o-1
    await store.renew("m1:o-2", "t")
    await store.decide("m1:o-2", "t", event_type="x", event_id="i", event=b"{}",
                       decided_at=1.0, settle_record=("m1", "o-2"))  # fmt: skip
    await store.decide("m1:o-2", "t", event_type="x", event_id="i", event=b"{}",
                       decided_at=1.0, settle_record=None)  # fmt: skip
    await store.defer("m1:o-2", "t", 5.0, b"member")
    await store.release("m1:o-2", "t")
    assert len(redis.calls) >= 14
    crossing = [
        (source.strip()[:40], keys) for source, keys in redis.calls if len(_slots(keys)) > 1
    ]
    assert not crossing


def test_a_batch_of_outcomes_is_marked_one_slot_at_a_time_on_a_cluster() -> None:
    """mark_published groups keys by slot for a cluster client (checked on a real cluster by the
    integration tier); here: the grouping gives one slot per group."""
    keys = [outcome_key(f"m1:o-{i}") for i in range(50)]
    groups: dict[int, list[str]] = {}
    for key in keys:
        groups.setdefault(redis_keys.slot(key), []).append(key)
    assert all(len(_slots(group)) == 1 for group in groups.values())


def test_cluster_urls() -> None:
    """`redis+cluster://` names a cluster by seeds; credentials and TLS are kept; a database
    other than 0 is refused (a cluster has none)."""
    assert is_cluster_url("redis+cluster://127.0.0.1:7000")
    assert not is_cluster_url("redis://127.0.0.1:6379/0")
    address = parse_cluster_url("rediss+cluster://u:p%40ss@a:1,b:2/")
    assert address.nodes == (("a", 1), ("b", 2))
    assert (address.username, address.password, address.tls) == ("u", "p@ss", True)
    assert parse_cluster_url("redis+cluster://a:1").password is None
    with pytest.raises(ValueError, match="database 0"):
        parse_cluster_url("redis+cluster://a:1/3")
    with pytest.raises(ValueError, match="host:port"):
        parse_cluster_url("redis+cluster://a")
