"""How the repair tools show things to people: tables, a progress bar on a terminal, times.

Pure apart from the stream a `Progress` is given. Text that came from Kafka or Redis (order
numbers, details, keys) is escaped before it reaches a terminal (`safe`): a record must not be
able to move the cursor, clear the screen or fake a line of the tool's output.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, TextIO

from shared.domain.events import rfc3339

if TYPE_CHECKING:
    from collections.abc import Callable, Sequence

# C0 and C1 controls, DEL, line and paragraph separators, bidirectional overrides and isolates.
_UNSAFE = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029\u202a-\u202e\u2066-\u2069]")
_BAR_WIDTH = 30
_REDRAW_EVERY = 0.1  # seconds between redraws of a progress bar


def safe(text: object, limit: int = 120) -> str:
    """`text` as one printable line, at most `limit` characters (cut with `…`)."""
    shown = _UNSAFE.sub(lambda m: f"\\x{ord(m.group()):02x}", str(text))
    return shown if len(shown) <= limit else shown[: limit - 1] + "…"


def when(moment: float | None) -> str:
    return "-" if moment is None else rfc3339(moment)


def table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """Columns padded to their widest cell; numbers right-aligned, text left-aligned."""
    cells = [[safe(cell) for cell in row] for row in rows]
    widths = [len(h) for h in headers]
    for row in cells:
        widths = [max(w, len(c)) for w, c in zip(widths, row, strict=True)]
    numeric = [
        bool(rows) and all(isinstance(row[i], int | float) for row in rows)
        for i in range(len(headers))
    ]

    def line(values: Sequence[str]) -> str:
        parts = [
            v.rjust(w) if num else v.ljust(w)
            for v, w, num in zip(values, widths, numeric, strict=True)
        ]
        return "  ".join(parts).rstrip()

    out = [line(headers), line(["-" * w for w in widths])]
    out += [line(row) for row in cells]
    return "\n".join(out)


class Progress:
    """A one-line progress bar, drawn only when `stream` is a terminal (scripts and pipes get
    nothing), redrawn at most every tenth of a second by `clock` (monotonic seconds)."""

    def __init__(
        self, stream: TextIO, label: str, total: int | None, *, clock: Callable[[], float]
    ) -> None:
        self._stream = stream
        self._label = label
        self._total = total
        self._clock = clock
        self._done = 0
        self._drawn_at: float | None = None
        self._on = stream.isatty()

    def expect(self, total: int) -> None:
        """The total, once known."""
        self._total = total

    def advance(self, count: int = 1) -> None:
        self._done += count
        now = self._clock()
        if self._on and (self._drawn_at is None or now - self._drawn_at >= _REDRAW_EVERY):
            self._drawn_at = now
            self._stream.write("\r" + bar(self._label, self._done, self._total))
            self._stream.flush()

    def close(self) -> None:
        """The final state, and the line ended, so the next output starts on its own line."""
        if self._on and self._drawn_at is not None:
            self._stream.write("\r" + bar(self._label, self._done, self._total) + "\n")
            self._stream.flush()


def bar(label: str, done: int, total: int | None) -> str:
    """`label [#######.......]  70/100` (a count alone when the total is not known)."""
    if not total:
        return f"{label} {done}"
    filled = min(_BAR_WIDTH, _BAR_WIDTH * done // total)
    return f"{label} [{'#' * filled}{'.' * (_BAR_WIDTH - filled)}] {done}/{total}"


def summary(
    tool: str, counts: Sequence[tuple[str, int]], *, dry_run: bool = False, always: int = 3
) -> str:
    """`dlq redrive: 12 matched, 10 redriven, 0 not redrivable (dry run: nothing changed)`:
    the first `always` counts, and the others that are not zero."""
    shown = [f"{n} {what}" for i, (what, n) in enumerate(counts) if n or i < always]
    tail = " (dry run: nothing changed)" if dry_run else ""
    return f"{tool}: {', '.join(shown)}{tail}"
