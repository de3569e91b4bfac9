"""The repair tools' pure parts: reading dead letters and events strictly, selecting them,
planning a redrive, the lag figures, and what people see (issue 11, "Repair tools")."""

from __future__ import annotations

import io
from datetime import UTC, datetime
from types import MappingProxyType

import orjson
import pytest
from aiokafka import TopicPartition

from shared.domain.events import AnswerStatus, OrderExpired, encode
from shared.ops.records import (
    EventFilter,
    FirstOfEach,
    LetterFilter,
    Position,
    RecordError,
    Redrive,
    Unredrivable,
    Window,
    fallback_key,
    parse_dead_letter,
    parse_event,
    parse_origin,
    parse_when,
    plan_redrive,
    same_message,
)
from shared.ops.render import Progress, bar, safe, summary, table
from shared.ops.status import lag_rows
from shared.protocol.models import OrderQueryAnswer
from shared.protocol.payment import PaymentReport, PaymentStatus
from shared.query_envelope import query_envelope
from shared.service.dead_letters import dead_letter

pytestmark = pytest.mark.unit

AT = Position("paynotify.dlq", 0, 7)
NOW = 1_800_000_000.0
CALLBACKS = "paynotify.callbacks"
TOPICS = frozenset({CALLBACKS, "paynotify.orders"})
ENVELOPE = orjson.dumps(
    {"fields": {"mch_id": "m1", "mch_order": "o1", "sign": "x"}, "key_id": "k",
     "received_at": 1.5, "peer": None, "delivery_id": "d" * 32, "source": "notification"}
)  # fmt: skip


def _letter(payload: bytes = ENVELOPE, origin: str = f"{CALLBACKS}/2@40", **kw: object) -> bytes:
    return dead_letter(str(kw.get("reason", "stale")), "why", origin, payload, NOW)


def test_origin_names_a_record_or_nothing() -> None:
    """The workers' `topic/partition@offset` parses; the sweeper's and retry set's do not."""
    assert parse_origin("a.b/3@17") == Position("a.b", 3, 17)
    assert parse_origin("t/x/1@2") == Position("t/x", 1, 2)
    for text in ("sweeper", "retry-set", "", "t/1@", "t/@1", "/1@2", "t/-1@2", "t/1@٣"):
        assert parse_origin(text) is None


def test_times_are_read_in_every_documented_form() -> None:
    """RFC 3339, a date (UTC), a naive time (UTC), Unix seconds and ages; anything else is
    refused with the accepted forms named."""
    assert (
        parse_when("2027-01-15T08:00:00Z", now=NOW)
        == datetime(2027, 1, 15, 8, tzinfo=UTC).timestamp()
    )
    assert parse_when("1970-01-02", now=NOW) == 86_400.0
    assert parse_when("1970-01-01T01:00:00", now=NOW) == 3600.0
    assert parse_when("1970-01-01T02:00:00+01:00", now=NOW) == 3600.0
    assert parse_when("1700000000.5", now=NOW) == 1_700_000_000.5
    assert parse_when("90s", now=NOW) == NOW - 90
    assert parse_when("2h", now=NOW) == NOW - 7200
    assert parse_when("7d", now=NOW) == NOW - 7 * 86_400
    for bad in ("yesterday", "2h ago", "-5m", "", "1e9"):
        with pytest.raises(ValueError, match="is not a time"):
            parse_when(bad, now=NOW)


def test_a_window_includes_its_start_and_excludes_its_end() -> None:
    window = Window(10.0, 20.0)
    assert 10.0 in window
    assert 19.9 in window
    assert 20.0 not in window
    assert 9.9 not in window
    assert 1e12 in Window(since=5.0)
    assert Window().open


def test_a_dead_letter_gives_back_the_original_bytes_and_order() -> None:
    """A JSON original comes back byte for byte (the writers use orjson both ways); a non-JSON
    one from base64; an omitted one is None with the reason; the order is the envelope's."""
    letter = parse_dead_letter(AT, b"m1:o1", _letter())
    assert letter.payload == ENVELOPE
    assert (letter.reason, letter.origin, letter.failed_at) == ("stale", f"{CALLBACKS}/2@40", NOW)
    assert (letter.mch_id, letter.mch_order, letter.order) == ("m1", "o1", "m1:o1")
    raw = b"\xff\x00 not json"
    assert parse_dead_letter(AT, None, _letter(raw)).payload == raw
    assert parse_dead_letter(AT, None, _letter(raw)).payload_note == "base64"
    omitted = dead_letter("x", "y", "o", ENVELOPE, NOW, omit="too large")
    found = parse_dead_letter(AT, None, omitted)
    assert found.payload is None
    assert "too large" in found.payload_note
    # A retry entry's envelope, and the sweeper's description of an order.
    retry = orjson.dumps({"envelope": orjson.loads(ENVELOPE), "attempts": 1})
    assert parse_dead_letter(AT, None, _letter(retry)).order == "m1:o1"
    swept = orjson.dumps({"order": "m2:o9"})
    assert parse_dead_letter(AT, None, _letter(swept, "sweeper")).order == "m2:o9"


@pytest.mark.parametrize(
    ("value", "why"),
    [
        (None, "empty"),
        (b"nope", "not JSON"),
        (b"[1]", "not a JSON object"),
        (orjson.dumps({"detail": "", "origin": "", "failed_at": 1, "payload": 1}), "no reason"),
        (orjson.dumps({"reason": "r", "detail": 1, "origin": "", "failed_at": 1}), "strings"),
        (
            orjson.dumps(
                {"reason": "r", "detail": "", "origin": "", "failed_at": True, "payload": 1}
            ),
            "failed_at must be a number",
        ),
        (orjson.dumps({"reason": "r", "detail": "", "origin": "", "failed_at": 1}), "exactly one"),
        (
            orjson.dumps(
                {"reason": "r", "detail": "", "origin": "", "failed_at": 1, "payload_base64": "@@"}
            ),
            "not base64",
        ),
    ],
)
def test_a_record_that_is_no_dead_letter_is_refused(value: bytes | None, why: str) -> None:
    with pytest.raises(RecordError, match=why):
        parse_dead_letter(AT, None, value)


def test_letters_are_selected_by_every_given_criterion() -> None:
    letter = parse_dead_letter(AT, None, _letter())
    assert LetterFilter().matches(letter)
    assert LetterFilter(reasons=frozenset({"stale", "x"})).matches(letter)
    assert not LetterFilter(reasons=frozenset({"x"})).matches(letter)
    assert not LetterFilter(merchants=frozenset({"m2"})).matches(letter)
    assert LetterFilter(orders=frozenset({"m1:o1"}), window=Window(NOW - 1, NOW + 1)).matches(
        letter
    )
    assert not LetterFilter(reasons=frozenset({"stale"}), window=Window(until=NOW)).matches(letter)


def test_a_redrive_goes_only_to_a_known_source_topic_with_the_original_kept() -> None:
    """To its origin, when that is one of the deployment's callbacks or orders topics and the
    DLQ kept the message; the sweeper's dead letters point to requery; never to the DLQ."""
    plan = plan_redrive(parse_dead_letter(AT, None, _letter()), TOPICS)
    assert isinstance(plan, Redrive)
    assert plan.source == Position(CALLBACKS, 2, 40)
    assert plan.payload == ENVELOPE
    assert fallback_key(plan, CALLBACKS) == "m1:o1"
    swept = plan_redrive(parse_dead_letter(AT, None, _letter(origin="sweeper")), TOPICS)
    assert isinstance(swept, Unredrivable)
    assert "requery" in swept.why
    other = plan_redrive(parse_dead_letter(AT, None, _letter(origin="paynotify.dlq/0@1")), TOPICS)
    assert isinstance(other, Unredrivable)
    omitted = dead_letter("x", "y", f"{CALLBACKS}/0@1", ENVELOPE, NOW, omit="too large")
    assert isinstance(plan_redrive(parse_dead_letter(AT, None, omitted), TOPICS), Unredrivable)
    orders = parse_dead_letter(AT, b"m1:o5", _letter(origin="paynotify.orders/0@3"))
    order_plan = plan_redrive(orders, TOPICS)
    assert isinstance(order_plan, Redrive)
    assert fallback_key(order_plan, CALLBACKS) == "m1:o5"  # the orders consumer keeps the key


def test_the_record_at_the_origin_must_be_the_message_kept() -> None:
    assert same_message(ENVELOPE, ENVELOPE)
    assert same_message(ENVELOPE, orjson.dumps(orjson.loads(ENVELOPE), option=orjson.OPT_INDENT_2))
    assert not same_message(ENVELOPE, ENVELOPE.replace(b"o1", b"o2"))
    assert not same_message(b"\xff", b"\xfe")


def _event(order: str = "o1", when: float = NOW) -> bytes:
    expired = OrderExpired(
        mch_id="m1", mch_order=order, pay_type=10, mch_amt=1, created_at=1, queried_at=2,
        answer=AnswerStatus.UNPAID,
    )  # fmt: skip
    return encode(expired, time=when)


def test_events_are_read_strictly_and_kept_byte_for_byte() -> None:
    raw = _event()
    event = parse_event(AT, b"m1:o1", raw, (("content-type", b"x"),))
    assert (event.value, event.key, event.headers) == (raw, b"m1:o1", (("content-type", b"x"),))
    assert (event.subject, event.mch_id, event.type) == ("m1:o1", "m1", "paynotify.order.expired")
    assert event.time == pytest.approx(NOW, abs=0.001)
    document = orjson.loads(raw)
    for change in (
        {"specversion": "0.3"}, {"id": ""}, {"subject": "m1:other"}, {"time": "soon"},
        {"time": "2027-01-15T08:00:00"}, {"data": []}, {"data": {"mch_id": "m1"}},
    ):  # fmt: skip
        with pytest.raises(RecordError):
            parse_event(AT, None, orjson.dumps(document | change))
    with pytest.raises(RecordError):
        parse_event(AT, None, b"")


def test_events_are_selected_and_each_id_kept_once() -> None:
    first, other = parse_event(AT, None, _event()), parse_event(AT, None, _event("o2", NOW + 60))
    assert EventFilter().selects_all
    assert not EventFilter(types=frozenset({"x"})).selects_all
    assert EventFilter(orders=frozenset({"m1:o2"})).matches(other)
    assert not EventFilter(orders=frozenset({"m1:o2"})).matches(first)
    assert not EventFilter(merchants=frozenset({"m9"})).matches(first)
    assert EventFilter(window=Window(since=NOW + 30)).matches(other)
    assert not EventFilter(window=Window(since=NOW + 30)).matches(first)
    firsts = FirstOfEach()
    assert [firsts.first(e) for e in (first, other, first)] == [True, True, False]
    assert firsts.repeats == 1


def test_lag_is_what_is_kept_after_each_groups_commit() -> None:
    """Per group and topic; a partition without a commit counts whole, and a commit before
    the first kept offset counts only what is kept."""
    a0, a1, b0 = TopicPartition("a", 0), TopicPartition("a", 1), TopicPartition("b", 0)
    bounds = {a0: (0, 10), a1: (5, 8), b0: (0, 4)}
    rows = lag_rows({"g": {a0: 7}, "h": {a1: 2, b0: 4}}, bounds)
    assert [(r.group, r.topic, r.lag, r.partitions) for r in rows] == [
        ("g", "a", 3 + 3, 1),
        ("h", "a", 10 + 3, 1),
        ("h", "b", 0, 1),
    ]


def test_text_from_records_cannot_steer_the_terminal() -> None:
    assert safe("a\x1b[2Jb\nc\u202ed") == "a\\x1b[2Jb\\x0ac\\x202ed"
    assert safe("x" * 10, limit=5) == "xxxx…"


def test_tables_align_and_summaries_name_what_was_done() -> None:
    text = table(["name", "n"], [["a", 1], ["long\tname", 100]])
    lines = text.splitlines()
    assert lines[3] == "long\\x09name  100"  # the tab escaped, the number right-aligned
    assert lines[2] == "a".ljust(12) + "    1"
    assert lines[1] == "-" * 12 + "  " + "---"
    assert summary("t", [("read", 3), ("matched", 0), ("shown", 0), ("bad", 0), ("x", 2)]) == (
        "t: 3 read, 0 matched, 0 shown, 2 x"
    )
    assert summary("t", [("a", 1)], dry_run=True) == "t: 1 a (dry run: nothing changed)"
    assert bar("l", 5, 10) == "l [" + "#" * 15 + "." * 15 + "] 5/10"
    assert bar("l", 5, None) == "l 5"


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_the_progress_bar_is_drawn_only_on_a_terminal() -> None:
    ticks = iter(float(i) for i in range(100))
    piped = io.StringIO()
    progress = Progress(piped, "reading", 2, clock=lambda: next(ticks))
    progress.advance()
    progress.close()
    assert piped.getvalue() == ""
    terminal = _Terminal()
    progress = Progress(terminal, "reading", None, clock=lambda: next(ticks))
    progress.expect(2)
    progress.advance()
    progress.advance()
    progress.close()
    assert terminal.getvalue().endswith("] 2/2\n")
    assert terminal.getvalue().startswith("\rreading [")


def test_a_query_envelope_keeps_exactly_the_signed_fields() -> None:
    """As the sweeper forwards: `code` and `msg` left out unless the platform signs them."""
    report = PaymentReport(
        mch_id="m1", pay_type=10, mch_order="o1", amt=1, mch_amt=1, amt_type="cny",
        status=PaymentStatus.PAID, created_at=1, success_at=2, origin_order=None, call=None,
        sign_type="md5",
    )  # fmt: skip
    raw = MappingProxyType({"code": "1", "msg": "ok", "mch_id": "m1", "sign": "s"})
    answer = OrderQueryAnswer(report=report, key_id="sha256:k", raw=raw)
    envelope = query_envelope(
        answer, received_at=5.0, delivery_id="d", answer_sign_includes_envelope=False
    )
    assert envelope.fields == {"mch_id": "m1", "sign": "s"}
    assert (envelope.source, envelope.peer, envelope.key_id) == ("query", None, "sha256:k")
    signed_too = query_envelope(
        answer, received_at=5.0, delivery_id="d", answer_sign_includes_envelope=True
    )
    assert signed_too.fields == dict(raw)
