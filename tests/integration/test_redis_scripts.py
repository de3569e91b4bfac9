"""shared.adapters.redis_client.Script on a real Redis: it answers as redis-py's AsyncScript
does, loads itself again after SCRIPT FLUSH (a restarted or other server), and in a pipeline
goes through redis-py's own script (which loads it before the pipeline runs)."""

from __future__ import annotations

import uuid
from typing import TYPE_CHECKING

import pytest

from shared.adapters.redis_client import Script, is_cluster
from tests.support.redis_db import in_db, open_redis

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

    from redis.asyncio import Redis

pytestmark = pytest.mark.integration

_ECHO = "return {KEYS[1], ARGV[1], ARGV[2], #KEYS, #ARGV}"


@pytest.fixture
async def redis(redis_url: str) -> AsyncIterator[Redis]:
    client = open_redis(in_db(redis_url, 9))
    try:
        yield client
    finally:
        await client.aclose()


async def test_answers_as_redis_py_script(redis: Redis) -> None:
    key = f"{{test:{uuid.uuid4().hex}}}:k"
    ours = Script(redis, _ECHO)
    theirs = redis.register_script(_ECHO)
    assert ours.sha == theirs.sha
    for args in (["a", 7], [b"\x00\xff", 1.5]):
        assert await ours(keys=[key], args=args) == await theirs(keys=[key], args=args)


async def test_loads_itself_again_after_script_flush(redis: Redis) -> None:
    key = f"{{test:{uuid.uuid4().hex}}}:k"
    script = Script(redis, _ECHO)
    assert (await script(keys=[key], args=["a", "b"]))[1] == b"a"
    await redis.script_flush()
    assert await script(keys=[key], args=["c", "d"]) == [key.encode(), b"c", b"d", 1, 2]
    assert await redis.script_exists(script.sha) == [True]


async def test_in_a_pipeline(redis: Redis) -> None:
    if is_cluster(redis):
        pytest.skip("redis-py's cluster pipelines take no scripts (replication.py goes per node)")
    key = f"{{test:{uuid.uuid4().hex}}}:k"
    script = Script(redis, _ECHO)
    await redis.script_flush()
    pipe = redis.pipeline(transaction=False)
    await script(keys=[key], args=["p", "q"], client=pipe)
    pipe.execute_command("PING")
    answer, pong = await pipe.execute()
    assert answer == [key.encode(), b"p", b"q", 1, 2]
    assert pong is True
