"""Log lines: a value taken from a request can never forge a line or hide text (hole 12)."""

from __future__ import annotations

import logging

import orjson
import pytest

from shared.logs import _Formatter

pytestmark = pytest.mark.unit

HOSTILE = [
    "x\nts=1 level=error event=payment_credited",
    "x\r\nforged",
    'a" b="c',
    "a b=c",
    "\u202eevil",
    "nel\x85line",
    "sep\u2028line",
    "del\x7f",
    "nul\x00",
    "esc\x1b[31mred",
]


def render(*, as_json: bool, **context: object) -> str:
    record = logging.LogRecord("t", logging.INFO, __file__, 1, "notification_refused", (), None)
    record.context = context
    return _Formatter(as_json=as_json).format(record)


@pytest.mark.parametrize("value", HOSTILE)
def test_console_lines_escape_what_a_sender_controls(value: str) -> None:
    line = render(as_json=False, mch_id=value, peer="127.0.0.1")
    assert line.isprintable(), line
    assert line.endswith(" peer=127.0.0.1")  # nothing after the value was taken over
    quoted = line.split(" mch_id=", 1)[1].rsplit(" peer=", 1)[0]
    assert orjson.loads(quoted) == value  # a JSON string: reads back exactly


@pytest.mark.parametrize("value", HOSTILE)
def test_json_lines_stay_one_line_and_read_back(value: str) -> None:
    line = render(as_json=True, mch_id=value)
    assert "\n" not in line
    assert "\r" not in line
    assert orjson.loads(line)["mch_id"] == value


def test_plain_values_stay_bare() -> None:
    assert render(as_json=False, mch_id="t9awtvk6dn", n=3, ok=None).endswith(
        "mch_id=t9awtvk6dn n=3 ok=None"
    )


def test_a_library_exception_text_is_not_logged() -> None:
    """aiohttp logs a malformed request line with the line in the exception's text, so a key
    sent in a query string reached the log (found by the hostile-request corpus)."""
    error = ValueError("Bad status line b'POST /notify?mch_key=SECRET x HTTP/1.1'")
    info = (ValueError, error, None)
    record = logging.LogRecord("aiohttp.server", logging.ERROR, __file__, 1, "Error", (), info)
    line = _Formatter(as_json=True).format(record)
    assert "SECRET" not in line
    assert orjson.loads(line)["exc_type"] == "ValueError"
    own = logging.LogRecord("paynotify.worker", logging.ERROR, __file__, 1, "boom", (), info)
    assert "SECRET" in _Formatter(as_json=True).format(own)  # our own texts are kept
