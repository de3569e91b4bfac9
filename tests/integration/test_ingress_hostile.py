"""The hostile-request corpus (`tests/data/hostile_requests.json`) against the real ingress.

The ingress is served as `paynotify ingress` serves it (`ingress.__main__.serve`, 127.0.0.1) with
the real producer, on topics of this module's own (a unique `topic_prefix`); the requests go out
through a raw socket, byte for byte as the corpus writes them (a slow body is trickled). Every case
is sent once, in file order, while the ingress's structured log is captured; then:

- each case got its status, `fail` (or `success` for a control) as `text/plain`, and exactly one
  refusal counted under its reason, logged with its reason and (where the case names one) field;
- no answer was a 5xx (503 is Kafka being away, which this test does not arrange);
- the callbacks topic holds exactly one message for each control and nothing else;
- no merchant key and no signature sent by any case shows in the captured log or in any audit
  record on the rejected topic.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import tomllib
import uuid
from typing import TYPE_CHECKING, Any

import orjson
import pytest
from aiokafka import AIOKafkaConsumer, TopicPartition

from devtools.stack.local import free_port
from ingress.__main__ import serve
from ingress.app import INGRESS, build_app
from shared.adapters.kafka import start_admin
from shared.adapters.topic_admin import ensure_topics
from shared.logs import _Formatter, get_logger
from shared.merchants import parse_merchants
from shared.settings import Settings
from tests.support.hostile_requests import SECRETS, HostileRequest, load_hostile_requests

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Iterator, Mapping

    from aiohttp import web

    from ingress.counters import IngressCounters
    from shared.merchants import Merchant

pytestmark = pytest.mark.integration

CASES = load_hostile_requests()
WAIT = 30.0  # seconds any answer or poll may take before the test fails


@dataclasses.dataclass(frozen=True)
class Answer:
    status: int
    headers: dict[str, str]
    body: bytes


@dataclasses.dataclass(frozen=True)
class Outcome:
    answer: Answer
    refusals: dict[str, int]  # refusals counted while the case ran, by reason
    published: int  # notifications published while the case ran
    logged: list[dict[str, Any]]  # `notification_refused` lines logged while the case ran


@dataclasses.dataclass
class CorpusRun:
    outcomes: dict[str, Outcome]
    callback_keys: list[str]  # the key of every message on the callbacks topic
    audit_values: list[bytes]  # every record on the rejected topic
    log_text: str  # everything the ingress logged, as JSON lines
    audits_expected: int


class _Capture(logging.Handler):
    """The production JSON log lines, kept in memory."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.setFormatter(_Formatter(as_json=True))
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(self.format(record))


@contextlib.contextmanager
def captured_logs() -> Iterator[_Capture]:
    """Everything the project logs at any level, and aiohttp's and aiokafka's warnings."""
    capture = _Capture()
    ours = logging.getLogger("paynotify")
    level = ours.level
    ours.setLevel(logging.DEBUG)
    loggers = [ours, logging.getLogger("aiohttp"), logging.getLogger("aiokafka")]
    for logger in loggers:
        logger.addHandler(capture)
    try:
        yield capture
    finally:
        for logger in loggers:
            logger.removeHandler(capture)
        ours.setLevel(level)


@dataclasses.dataclass
class Served:
    port: int
    app: web.Application

    @property
    def counters(self) -> IngressCounters:
        return self.app[INGRESS].counters


@contextlib.asynccontextmanager
async def served(settings: Settings, merchants: Mapping[str, Merchant]) -> AsyncIterator[Served]:
    app = build_app(settings, merchants)
    stop, port = asyncio.Event(), free_port()
    task = asyncio.create_task(
        serve(app, "127.0.0.1", port, settings, get_logger("test"), stop=stop)
    )
    try:
        async with asyncio.timeout(WAIT):
            while app[INGRESS].publisher is None:  # serving, with its Kafka clients started
                if task.done():
                    task.result()  # raises what ended it
                await asyncio.sleep(0.05)
            while True:
                with contextlib.suppress(OSError):
                    _, writer = await asyncio.open_connection("127.0.0.1", port)
                    writer.close()
                    break
                await asyncio.sleep(0.05)
        yield Served(port, app)
    finally:
        stop.set()
        async with asyncio.timeout(WAIT):
            await task


async def send(port: int, case: HostileRequest) -> Answer:
    """One request on its own connection, exactly as the case writes it; the answer as read."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    trickling: asyncio.Task[None] | None = None
    try:
        payload = case.payload()
        if case.slow is None:
            writer.write(case.head(f"127.0.0.1:{port}") + payload)
        else:
            writer.write(case.head(f"127.0.0.1:{port}") + payload[: case.slow.first])
            trickling = asyncio.create_task(_trickle(writer, payload[case.slow.first :], case))
        with contextlib.suppress(ConnectionError):  # an early answer may close the socket
            await writer.drain()
        async with asyncio.timeout(WAIT):
            return await _read_answer(reader, head_only=case.method == "HEAD")
    finally:
        if trickling is not None:
            trickling.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await trickling
        writer.close()


async def _trickle(writer: asyncio.StreamWriter, rest: bytes, case: HostileRequest) -> None:
    assert case.slow is not None
    if case.slow.every_s is None:
        return
    # Never the whole body: the last byte is held back, so only the deadline can end the wait.
    with contextlib.suppress(ConnectionError):
        for byte in rest[:-1]:
            await asyncio.sleep(case.slow.every_s)
            writer.write(bytes([byte]))
            await writer.drain()


async def _read_answer(reader: asyncio.StreamReader, *, head_only: bool) -> Answer:
    head = await reader.readuntil(b"\r\n\r\n")
    status_line, *header_lines = head.decode("latin-1").split("\r\n")
    status = int(status_line.split(" ", 2)[1])
    headers: dict[str, str] = {}
    for line in header_lines:
        if line:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
    if head_only:
        return Answer(status, headers, b"")
    if "content-length" in headers:
        body = await reader.readexactly(int(headers["content-length"]))
    elif headers.get("transfer-encoding", "").lower() == "chunked":
        body = b""
        while size := int((await reader.readuntil(b"\r\n")).strip(), 16):
            body += await reader.readexactly(size)
            await reader.readexactly(2)
    else:
        body = await reader.read()
    return Answer(status, headers, body)


async def read_topic(bootstrap: str, topic: str) -> list[tuple[bytes | None, bytes]]:
    """Every record on `topic` from its beginning to its current end, as (key, value)."""
    admin = await start_admin(Settings(kafka_bootstrap_servers=bootstrap))
    try:
        (described,) = await admin.describe_topics([topic])
    finally:
        await admin.close()
    partitions = [TopicPartition(topic, p["partition"]) for p in described["partitions"]]
    assert partitions, f"topic {topic} has no partitions"
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
    await consumer.start()
    try:
        consumer.assign(partitions)
        await consumer.seek_to_beginning(*partitions)
        ends = await consumer.end_offsets(partitions)
        records: list[tuple[bytes | None, bytes]] = []
        async with asyncio.timeout(WAIT):
            while [tp for tp, end in ends.items() if await consumer.position(tp) < end]:
                batches = await consumer.getmany(*partitions, timeout_ms=200)
                records += [(r.key, r.value) for rs in batches.values() for r in rs]
        return records
    finally:
        await consumer.stop()


async def _audits_settled(counters: IngressCounters) -> int:
    """Wait until every refusal's audit record went out (they are sent in the background); how
    many there are."""
    refused = sum(counters.refusals.values())
    async with asyncio.timeout(WAIT):
        while counters.audit_sent + counters.audit_failed + counters.audit_dropped < refused:
            await asyncio.sleep(0.05)
    assert (counters.audit_failed, counters.audit_dropped) == (0, 0)
    return refused


def _settings_group(case: HostileRequest) -> tuple[tuple[str, Any], ...]:
    return tuple(sorted(case.settings.items()))


@pytest.fixture(scope="module")
async def corpus_run(kafka_bootstrap: str, merchants_toml: str) -> CorpusRun:
    """Sends every case once (the test functions below look at what came of it)."""
    merchants = parse_merchants(tomllib.loads(merchants_toml))
    base = Settings(
        kafka_bootstrap_servers=kafka_bootstrap,
        topic_prefix=f"hostile-{uuid.uuid4().hex[:8]}.",
        ingress_audit_rate=10_000.0,  # every refusal audited: the records are checked below
        ingress_audit_burst=10_000,
    )
    names = base.topics
    await ensure_topics(base, [names.callbacks, names.rejected])
    outcomes: dict[str, Outcome] = {}
    audits_expected = 0
    with captured_logs() as capture:
        # One ingress per distinct `settings` of the cases (the slow bodies' short deadline).
        for group in dict.fromkeys(_settings_group(case) for case in CASES):
            settings = dataclasses.replace(base, **dict(group))
            async with served(settings, merchants) as ingress:
                counters = ingress.counters
                for case in (c for c in CASES if _settings_group(c) == group):
                    before, published = dict(counters.refusals), counters.published
                    lines = len(capture.lines)
                    answer = await send(ingress.port, case)
                    refusals = {
                        str(reason): n - before.get(reason, 0)
                        for reason, n in counters.refusals.items()
                        if n != before.get(reason, 0)
                    }
                    logged = [orjson.loads(line) for line in capture.lines[lines:]]
                    outcomes[case.id] = Outcome(
                        answer,
                        refusals,
                        counters.published - published,
                        [entry for entry in logged if entry["event"] == "notification_refused"],
                    )
                audits_expected += await _audits_settled(counters)
        callbacks = await read_topic(kafka_bootstrap, names.callbacks)
        audits = await read_topic(kafka_bootstrap, names.rejected)
    return CorpusRun(
        outcomes=outcomes,
        callback_keys=[(key or b"").decode() for key, _ in callbacks],
        audit_values=[value for _, value in audits],
        log_text="\n".join(capture.lines),
        audits_expected=audits_expected,
    )


def _param(case: HostileRequest) -> Any:
    marks = []
    if case.xfail_until:
        marks.append(pytest.mark.xfail(reason=f"until {case.xfail_until} is closed", strict=True))
    return pytest.param(case, id=case.id, marks=marks)


def test_the_corpus_is_large_and_covers_every_refusal_class() -> None:
    """At least 80 cases (issue 10); the valid controls are few and marked."""
    assert len(CASES) >= 80
    controls = [case.id for case in CASES if case.control]
    assert 1 <= len(controls) <= 5, controls
    assert "sign_upper_case_hex" in controls


@pytest.mark.parametrize("case", [_param(case) for case in CASES])
def test_hostile_request(case: HostileRequest, corpus_run: CorpusRun) -> None:
    """The case's status and body, exactly one refusal counted under its reason, and a log line
    with its reason, status and field; a control is answered `success` and published once."""
    outcome = corpus_run.outcomes[case.id]
    answer = outcome.answer
    expected_body = b"success" if case.control else b"fail"
    assert (answer.status, answer.body) == (case.status, expected_body), case.attacks
    assert answer.headers.get("content-type", "").startswith("text/plain")
    if case.control:
        assert (outcome.refusals, outcome.published) == ({}, 1)
        assert outcome.logged == []
        return
    assert outcome.refusals == {case.reason: 1}, case.attacks
    assert outcome.published == 0
    (logged,) = outcome.logged
    assert (logged["reason"], logged["status"]) == (case.reason, case.status)
    if case.checks_field:
        assert logged["field"] == case.field, (case.attacks, logged.get("rule"))
    if case.status == 405:
        assert answer.headers.get("allow") == "POST"


def test_no_answer_is_a_server_error(corpus_run: CorpusRun) -> None:
    """No 5xx for any hostile request: a crash would be a 500, and 503 only means Kafka is away,
    which it is not here."""
    errors = {
        case_id: outcome.answer.status
        for case_id, outcome in corpus_run.outcomes.items()
        if outcome.answer.status >= 500
    }
    assert errors == {}
    assert "Error handling request" not in corpus_run.log_text  # aiohttp's log of a 500


def test_only_the_controls_reached_the_callbacks_topic(corpus_run: CorpusRun) -> None:
    """The callbacks topic holds one message per control (allowed there) and nothing else; a
    case still waiting for its hole's fix (`xfail_until`) may be there too."""
    controls = sorted(case.order_key or "" for case in CASES if case.control)
    pending = {case.order_key for case in CASES if case.xfail_until}
    assert sorted(key for key in corpus_run.callback_keys if key not in pending) == controls


def test_no_key_or_signature_in_the_logs_or_the_audit_records(corpus_run: CorpusRun) -> None:
    """No merchant key and no `sign` value of any case in the captured log lines or on the
    rejected topic (where every refusal was audited)."""
    refused = [case for case in CASES if not case.control]
    assert corpus_run.log_text.count('"notification_refused"') == len(refused)
    assert len(corpus_run.audit_values) == corpus_run.audits_expected
    secrets = {secret.lower() for secret in SECRETS}
    secrets |= {sign.strip().lower() for case in CASES for sign in case.signs}
    log_text = corpus_run.log_text.lower()
    audits = b"\n".join(corpus_run.audit_values).decode("utf-8", "replace").lower()
    assert [secret for secret in sorted(secrets) if secret in log_text] == []
    assert [secret for secret in sorted(secrets) if secret in audits] == []
