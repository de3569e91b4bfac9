"""Structured logs: one JSON object a line (or key=value for people), context bound per logger.

Usage: `log = get_logger("ingress").bind(mch_id=..., mch_order=...)`, then
`log.info("notification_published", partition=3)`. Keys and signatures are never passed here;
`_REDACTED` is a last guard for field names that would hold one.
"""

from __future__ import annotations

import logging
import re
import sys
from typing import Any

import orjson

_REDACTED = frozenset({"sign", "mch_key", "key", "secret", "keys", "password"})
# Console values written bare; anything else is quoted and escaped, so a value taken from a
# request cannot start a new line, fake a `key=value` or hide text with terminal controls.
_BARE = re.compile(r"[\w.:/@+\-]+", re.ASCII)
# What JSON leaves raw but a terminal or log viewer may act on: DEL, C1 controls (NEL among them),
# line and paragraph separators, bidirectional overrides and isolates.
_UNSAFE = re.compile("[\x7f-\x9f\u2028\u2029\u202a-\u202e\u2066-\u2069]")


def _console_value(value: Any) -> str:
    text = value if isinstance(value, str) else str(value)
    if _BARE.fullmatch(text):
        return text
    quoted = orjson.dumps(text).decode()  # quotes, backslashes and C0 controls escaped
    return _UNSAFE.sub(lambda m: f"\\u{ord(m.group()):04x}", quoted)


class _Formatter(logging.Formatter):
    def __init__(self, *, as_json: bool) -> None:
        super().__init__()
        self._as_json = as_json

    def format(self, record: logging.LogRecord) -> str:
        fields: dict[str, Any] = {
            "ts": round(record.created, 3),
            "level": record.levelname.lower(),
            "logger": record.name,
            "event": record.getMessage(),
        }
        context = getattr(record, "context", None)
        if isinstance(context, dict):
            fields.update(context)
        if record.exc_info and record.exc_info[0] is not None:
            fields["exc_type"] = record.exc_info[0].__name__
            # A library's exception text may hold what a sender wrote (aiohttp's answer to a
            # malformed request line quotes the line, query string and all, where a key could
            # be): only our own loggers' exceptions, whose texts we write, are kept whole.
            if record.name.startswith("paynotify"):
                fields["exc"] = str(record.exc_info[1])
        if self._as_json:
            return orjson.dumps(fields, default=str).decode()
        return " ".join(f"{k}={_console_value(v)}" for k, v in fields.items())


class BoundLogger:
    """A stdlib logger with context that every line carries."""

    __slots__ = ("_context", "_logger")

    def __init__(self, logger: logging.Logger, context: dict[str, Any]) -> None:
        self._logger = logger
        self._context = context

    def bind(self, **context: Any) -> BoundLogger:
        return BoundLogger(self._logger, {**self._context, **context})

    def _log(self, level: int, event: str, fields: dict[str, Any], exc: bool = False) -> None:
        if not self._logger.isEnabledFor(level):
            return
        context = {
            k: ("<redacted>" if k in _REDACTED else v)
            for k, v in {**self._context, **fields}.items()
        }
        self._logger.log(level, event, extra={"context": context}, exc_info=exc)

    def debug(self, event: str, **fields: Any) -> None:
        self._log(logging.DEBUG, event, fields)

    def info(self, event: str, **fields: Any) -> None:
        self._log(logging.INFO, event, fields)

    def warning(self, event: str, **fields: Any) -> None:
        self._log(logging.WARNING, event, fields)

    def error(self, event: str, **fields: Any) -> None:
        self._log(logging.ERROR, event, fields)

    def exception(self, event: str, **fields: Any) -> None:
        """An error with the exception's type and message (no traceback locals, no secrets)."""
        self._log(logging.ERROR, event, fields, exc=True)


def get_logger(name: str, **context: Any) -> BoundLogger:
    return BoundLogger(logging.getLogger(f"paynotify.{name}"), context)


def configure_logging(level: str = "INFO", fmt: str = "json") -> None:
    """Called once by each process's entry point, never at import."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_Formatter(as_json=fmt == "json"))
    root = logging.getLogger("paynotify")
    root.handlers[:] = [handler]
    root.setLevel(level)
    root.propagate = False
    # The libraries' own warnings (a broker going away, say) come out in the same format.
    for library in ("aiokafka", "aiohttp", "redis"):
        logger = logging.getLogger(library)
        logger.handlers[:] = [handler]
        logger.setLevel(max(logging.WARNING, logging.getLevelName(level)))
        logger.propagate = False
