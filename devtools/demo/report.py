"""What a demo run observed, the checks it must pass, and its summary table. Pure: plain values
in, plain values (and text) out.

Sources: the ingress's `/metrics` (notifications received and refused by reason), the sandbox's
delivery log (when each payment's first try was due, what forged tries were answered), and the
billing consumer (`examples/billing_consumer.py`: outcome counts, and each new event with its
Kafka timestamp).
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from devtools.demo.plan import TRANSFER_PAY_TYPES, Mess, PlannedOrder, order_prefix
from devtools.stats import percentile
from shared.domain.events import EventType

if TYPE_CHECKING:
    from collections.abc import Iterable, Mapping, Sequence

# paynotify_ingress_refusals_total{reason="sign_mismatch",status="401"} 3
_METRIC = re.compile(r"^(?P<name>[a-z_]+)(?:\{(?P<labels>[^}]*)\})? (?P<value>[0-9.e+]+)$")
_LABEL = re.compile(r'(?P<key>[a-z_]+)="(?P<value>[^"]*)"')


@dataclass(frozen=True, slots=True)
class IngressCounts:
    published: int = 0  # answered `success` after Kafka's ack
    refusals: Mapping[tuple[str, int], int] = field(default_factory=dict)  # (reason, status)

    @property
    def refused(self) -> int:
        return sum(self.refusals.values())

    @property
    def received(self) -> int:
        return self.published + self.refused


def parse_ingress_metrics(text: str) -> IngressCounts:
    """The ingress's Prometheus text (`GET /metrics`), reduced to what the summary shows."""
    published = 0
    refusals: dict[tuple[str, int], int] = {}
    for line in text.splitlines():
        match = _METRIC.match(line.strip())
        if match is None:
            continue
        value = int(float(match["value"]))
        if match["name"] == "paynotify_ingress_published_total":
            published = value
        elif match["name"] == "paynotify_ingress_refusals_total" and value:
            labels = {m["key"]: m["value"] for m in _LABEL.finditer(match["labels"] or "")}
            refusals[labels.get("reason", "?"), int(labels.get("status", "0"))] = value
    return IngressCounts(published, refusals)


def metric_totals(text: str) -> dict[str, float]:
    """One process's Prometheus text reduced to one figure per `paynotify_` sample name: the
    sum over its label sets (`paynotify_worker_events_total`: every event the worker counted)."""
    totals: dict[str, float] = {}
    for line in text.splitlines():
        match = _METRIC.match(line.strip())
        if match is not None and match["name"].startswith("paynotify_"):
            totals[match["name"]] = totals.get(match["name"], 0.0) + float(match["value"])
    return totals


# What each process's /metrics must show at the end of a run, with a value above zero: the
# figures that prove it did its work (its build info proves it is the process we started).
PROCESS_WORK = {
    "ingress": "paynotify_ingress_published_total",
    "worker": "paynotify_worker_events_total",
    "sweeper": "paynotify_sweeper_events_total",
}


@dataclass
class DeliveryLog:
    """The sandbox's delivery attempts (`GET /_sandbox/deliveries`), reduced as they come."""

    paid_at: dict[str, float] = field(default_factory=dict)  # order -> when its first try was due
    first_sent: dict[str, float] = field(default_factory=dict)  # order -> its first try not dropped
    outcomes: Counter[tuple[str, str]] = field(default_factory=Counter)  # (kind, outcome)
    forged_accepted: int = 0

    def add(self, attempts: Iterable[Mapping[str, Any]]) -> None:
        for attempt in attempts:
            kind, outcome = attempt["kind"], attempt["outcome"]
            self.outcomes[kind, outcome] += 1
            if kind == "forged" and outcome == "success":
                self.forged_accepted += 1
            if kind not in {"notify", "repeat"}:
                continue
            began = attempt["at"] - (attempt["elapsed"] or 0.0)
            if attempt["attempt"] == 1:
                # Less how late the first try started: when it was due, which is when the order
                # was paid.
                self.paid_at.setdefault(attempt["mch_order"], began - attempt["offset"])
            if outcome != "dropped":
                self.first_sent.setdefault(attempt["mch_order"], began)

    def start_of(self, mch_order: str, source: str) -> float | None:
        """Where an outcome's latency starts: for a notification, the first try the platform
        really sent; for the sweeper's query, the payment (its tries were lost, or too late)."""
        if source == "notification" and mch_order in self.first_sent:
            return self.first_sent[mch_order]
        return self.paid_at.get(mch_order)

    @property
    def tries(self) -> int:
        return sum(n for (kind, _), n in self.outcomes.items() if kind != "forged")

    def count(self, *, outcome: str, kinds: Iterable[str] | None = None) -> int:
        wanted = None if kinds is None else set(kinds)
        return sum(
            n
            for (kind, out), n in self.outcomes.items()
            if out == outcome and (wanted is None or kind in wanted)
        )


@dataclass(frozen=True, slots=True)
class SeenEvent:
    """One new event from the billing consumer, reduced to what the checks need."""

    type: str
    mch_order: str
    origin_order: str | None
    source: str | None  # `notification` or `query` (payments); None for order.expired
    amt: int | None
    late: bool
    kafka_ms: int

    @classmethod
    def from_event(cls, event: Mapping[str, Any], kafka_ms: int) -> SeenEvent:
        data = event.get("data") or {}
        return cls(
            type=str(event.get("type")),
            mch_order=str(data.get("mch_order")),
            origin_order=data.get("origin_order"),
            source=data.get("source"),
            amt=data.get("amt"),
            late=bool(data.get("late")),
            kafka_ms=kafka_ms,
        )


@dataclass
class Observed:
    """Everything one run saw; `summarize` turns it into the summary."""

    run_id: str
    orders: Sequence[PlannedOrder]
    created: set[str] = field(default_factory=set)  # accepted by the platform
    create_failures: Counter[str] = field(default_factory=Counter)  # by error
    events: list[SeenEvent] = field(default_factory=list)
    outcome_counts: Mapping[str, int] = field(default_factory=dict)  # the billing consumer's
    duplicates_dropped: int = 0  # the billing consumer's
    deliveries: DeliveryLog = field(default_factory=DeliveryLog)
    ingress: IngressCounts = field(default_factory=IngressCounts)
    started: float = 0.0  # Unix time of the first order's creation
    created_by: float = 0.0  # ... of the last one's
    finished: float = 0.0  # Unix time the run stopped waiting for outcomes
    interrupted: bool = False
    # Each process's /metrics at the end (`metric_totals`), by process name.
    metrics: Mapping[str, Mapping[str, float]] = field(default_factory=dict)

    def ours(self, event: SeenEvent) -> bool:
        prefix = order_prefix(self.run_id)
        return event.mch_order.startswith(prefix) or (event.origin_order or "").startswith(prefix)

    def expected_outcomes(self) -> int:
        """Outcomes the created orders must end in: one per order, one per repeat payment."""
        return sum(1 + o.repeat_payments for o in self.orders if o.mch_order in self.created)


@dataclass(frozen=True, slots=True)
class Check:
    name: str
    ok: bool
    detail: str


@dataclass(frozen=True, slots=True)
class Latency:
    count: int
    p50: float
    p95: float
    p99: float  # seconds


@dataclass(frozen=True, slots=True)
class Summary:
    run_id: str
    orders: int  # planned
    created: int  # accepted by the platform
    pay_types: int  # distinct pay types among them
    mix: Mapping[str, int]  # orders by kind of mess, and bank transfers
    ingress: IngressCounts
    platform_tries: int
    platform_answers: Mapping[str, int]  # success, fail, dropped, timeout, error (forged apart)
    outcomes: Mapping[str, int]  # the billing consumer's counts
    duplicates_dropped: int
    foreign_events: int
    by_source: Mapping[str, int]  # payments settled: notification / query
    latency: Mapping[str, Latency]  # by source
    creating: float  # seconds from the first order created to the last
    window: float  # seconds from the first order created to the last payment's outcome
    elapsed: float  # seconds from the first order created to the end of the run
    checks: Sequence[Check]
    interrupted: bool
    metrics: Mapping[str, Mapping[str, float]] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return not self.interrupted and all(c.ok for c in self.checks)

    @property
    def payments(self) -> int:
        return sum(self.by_source.values())

    def to_json(self) -> dict[str, Any]:
        return {
            "run_id": self.run_id,
            "orders": self.orders,
            "created": self.created,
            "pay_types": self.pay_types,
            "mix": dict(self.mix),
            "ingress": {
                "received": self.ingress.received,
                "published": self.ingress.published,
                "refused": {f"{r} ({s})": n for (r, s), n in self.ingress.refusals.items()},
            },
            "platform_tries": self.platform_tries,
            "platform_answers": dict(self.platform_answers),
            "outcomes": dict(self.outcomes),
            "duplicates_dropped": self.duplicates_dropped,
            "foreign_events": self.foreign_events,
            "settled_by": dict(self.by_source),
            "latency_ms": {
                source: {
                    "count": lat.count,
                    "p50": round(lat.p50 * 1000, 1),
                    "p95": round(lat.p95 * 1000, 1),
                    "p99": round(lat.p99 * 1000, 1),
                }
                for source, lat in self.latency.items()
            },
            "seconds": {
                "creating": round(self.creating, 2),
                "to_last_payment": round(self.window, 2),
                "elapsed": round(self.elapsed, 2),
            },
            "checks": [{"name": c.name, "ok": c.ok, "detail": c.detail} for c in self.checks],
            "metrics": {name: dict(figures) for name, figures in self.metrics.items()},
            "interrupted": self.interrupted,
            "ok": self.ok,
        }


def latency(values: Iterable[float]) -> Latency | None:
    ordered = sorted(values)
    if not ordered:
        return None
    return Latency(
        len(ordered),
        percentile(ordered, 0.50),
        percentile(ordered, 0.95),
        percentile(ordered, 0.99),
    )


def summarize(seen: Observed) -> Summary:
    ours = [e for e in seen.events if seen.ours(e)]
    payments = [e for e in ours if e.type != EventType.ORDER_EXPIRED]
    delays: dict[str, list[float]] = {}
    for event in payments:
        start = seen.deliveries.start_of(event.mch_order, event.source or "")
        if start is not None and event.source is not None:
            delays.setdefault(event.source, []).append(max(0.0, event.kafka_ms / 1000 - start))
    created = [o for o in seen.orders if o.mch_order in seen.created]
    messes = Counter(o.mess for o in created)
    mix = {m.value: messes[m] for m in Mess if m is not Mess.NONE and messes[m]}
    transfers = sum(1 for o in created if o.pay_type in TRANSFER_PAY_TYPES)
    last_payment = max((e.kafka_ms / 1000 for e in payments), default=seen.started)
    answers = {
        out: seen.deliveries.count(outcome=out, kinds=("notify", "repeat", "duplicate"))
        for out in ("success", "fail", "dropped", "timeout", "error")
    }
    return Summary(
        run_id=seen.run_id,
        orders=len(seen.orders),
        created=len(created),
        pay_types=len({o.pay_type for o in created}),
        mix={"bank_transfer": transfers, **mix},
        ingress=seen.ingress,
        platform_tries=seen.deliveries.tries,
        platform_answers={k: v for k, v in answers.items() if v},
        outcomes=dict(sorted(seen.outcome_counts.items())),
        duplicates_dropped=seen.duplicates_dropped,
        foreign_events=len(seen.events) - len(ours),
        by_source=dict(Counter(e.source or "?" for e in payments)),
        latency={source: lat for source, values in delays.items() if (lat := latency(values))},
        creating=max(seen.created_by - seen.started, 0.0),
        window=max(last_payment - seen.started, 0.0),
        elapsed=max(seen.finished - seen.started, 0.0),
        checks=checks(seen),
        interrupted=seen.interrupted,
        metrics=seen.metrics,
    )


def checks(seen: Observed) -> list[Check]:
    """The invariants a run must show; each says what it found."""
    ours = [e for e in seen.events if seen.ours(e)]
    by_order: dict[str, list[SeenEvent]] = {}
    for event in ours:
        by_order.setdefault(event.mch_order, []).append(event)
    created = [o for o in seen.orders if o.mch_order in seen.created]
    paid = [o for o in created if o.paid]
    found: list[Check] = []

    missing = [o.mch_order for o in created if o.mch_order not in by_order]
    doubled = [n for n, events in by_order.items() if len({e.type for e in events}) > 1]
    found.append(
        Check(
            "every order has exactly one outcome",
            not missing and not doubled,
            f"{len(created) - len(missing)}/{len(created)} orders"
            + (f"; missing {_some(missing)}" if missing else "")
            + (f"; two outcomes for {_some(doubled)}" if doubled else ""),
        )
    )

    wrong = [
        o.mch_order
        for o in created
        if o.mch_order in by_order and by_order[o.mch_order][0].type != o.expected
    ]
    found.append(
        Check(
            "each outcome is the expected type",
            not wrong,
            "yes" if not wrong else f"unexpected for {_some(wrong)}",
        )
    )

    repeats = {o.mch_order: o.repeat_payments for o in paid if o.repeat_payments}
    repeated = Counter(
        e.origin_order for e in ours if e.type == EventType.PAYMENT_REPEATED and e.origin_order
    )
    short = [n for n, count in repeats.items() if repeated[n] != count]
    found.append(
        Check(
            "repeat payments reported as repeated",
            not short,
            f"{sum(repeated.values())}/{sum(repeats.values())}"
            + (f"; not for {_some(short)}" if short else ""),
        )
    )

    forged = [o for o in paid if o.forge]
    forged_refused = seen.deliveries.count(outcome="fail", kinds=("forged",))
    inflated = [
        o.mch_order
        for o in forged
        for e in by_order.get(o.mch_order, [])
        if e.amt is not None and e.amt != (o.paid_amt or o.amt)
    ]
    found.append(
        Check(
            "no forged notification accepted",
            seen.deliveries.forged_accepted == 0 and not inflated,
            f"{forged_refused} refused, {seen.deliveries.forged_accepted} accepted"
            + (f"; forged amount reached {_some(inflated)}" if inflated else ""),
        )
    )

    dropped = [o for o in paid if o.mess is Mess.DROPPED]
    by_sweeper = [
        o.mch_order
        for o in dropped
        if any(e.source == "query" for e in by_order.get(o.mch_order, []))
    ]
    found.append(
        Check(
            "dropped notifications settled by the sweeper",
            len(by_sweeper) == len(dropped),
            f"{len(by_sweeper)}/{len(dropped)}",
        )
    )

    # Every process answers with its build info; each role's processes together show their
    # work (a worker that joined late may rightly have had nothing to do in a small run).
    silent = sorted(n for n, f in seen.metrics.items() if not f.get("paynotify_build_info"))
    work: dict[str, float] = dict.fromkeys(PROCESS_WORK, 0.0)
    for name, figures in seen.metrics.items():
        role = name.split("-", 1)[0]
        work[role] = work.get(role, 0.0) + figures.get(PROCESS_WORK.get(role, ""), 0.0)
    idle = sorted(role for role in PROCESS_WORK if not work[role] > 0)
    found.append(
        Check(
            "every process's /metrics shows its work",
            not silent and not idle,
            f"{len(seen.metrics)} processes scraped"
            + (f"; no build info from {', '.join(silent)}" if silent else "")
            + (f"; no work shown by {', '.join(idle)}" if idle else ""),
        )
    )

    foreign = len(seen.events) - len(ours)
    found.append(
        Check(
            "no events from other runs",
            foreign == 0,
            "none" if foreign == 0 else f"{foreign} events of other orders on paynotify.events",
        )
    )
    if seen.create_failures:
        found.append(
            Check(
                "every order created",
                ok=False,
                detail=", ".join(f"{n} {why}" for why, n in seen.create_failures.most_common()),
            )
        )
    return found


def _some(names: Sequence[str], shown: int = 3) -> str:
    more = f" and {len(names) - shown} more" if len(names) > shown else ""
    return ", ".join(names[:shown]) + more


# --- the table ----------------------------------------------------------------------------------

WIDTH = 64
_MIX_LABELS = {
    "bank_transfer": "bank transfers, paid an odd sum on purpose",
    Mess.DUPLICATES.value: "notification delivered again after success",
    Mess.CONCURRENT.value: "notification sent twice at once",
    Mess.REPEAT.value: "paid twice (a repeat payment)",
    Mess.FORGED.value: "a forged notification (wrong key) as well",
    Mess.LATE.value: "first 1-3 tries lost, a later one arrives",
    Mess.DROPPED.value: "every notification lost",
    Mess.UNDERPAID.value: "underpaid",
    Mess.UNPAID.value: "never paid",
}
_ANSWER_LABELS = {
    "success": "answered success",
    "fail": "answered fail",
    "dropped": "lost on the way (dropped by the sandbox)",
    "timeout": "timed out",
    "error": "connection failed",
}


def render(
    summary: Summary,
    *,
    time_scale: float,
    workers: int,
    query_latency: float,
    query_error_rate: float,
) -> str:
    """The summary table `make run` ends with."""
    table = _Table()
    table.rule("=")
    table.line(
        f"paynotify demo {summary.run_id}: {summary.created} orders, {summary.pay_types} pay "
        f"types, time scale {time_scale:g}, {workers} workers"
    )
    table.line(
        f"order queries answer {query_latency * 1000:.0f} ms late, "
        f"{query_error_rate:.0%} of them 113 (system busy)"
    )
    table.rule("=")

    table.section("Orders (created through the client, in the order book)", "count")
    table.row("created", summary.created)
    for mess, count in summary.mix.items():
        table.row(f"  {_MIX_LABELS.get(mess, mess)}", count)

    table.section("Notifications", "count")
    table.row("tries by the platform (forged ones apart)", summary.platform_tries)
    for outcome, count in sorted(summary.platform_answers.items(), key=lambda i: -i[1]):
        table.row(f"  {_ANSWER_LABELS.get(outcome, outcome)}", count)
    table.row("received by the ingress", summary.ingress.received)
    table.row("  accepted: on Kafka (acks=all), answered success", summary.ingress.published)
    for (reason, status), count in sorted(summary.ingress.refusals.items()):
        table.row(f"  refused: {reason} (HTTP {status})", count)

    table.section("Outcomes (examples/billing_consumer.py)", "count")
    for event_type, count in summary.outcomes.items():
        table.row(event_type, count)
    table.row("duplicate events dropped by id", summary.duplicates_dropped)
    if summary.foreign_events:
        table.row("events of other orders (not this run's)", summary.foreign_events)

    table.section("Payments settled", "count")
    table.row("by notification", summary.by_source.get("notification", 0))
    table.row("by the sweeper's order query", summary.by_source.get("query", 0))

    table.section("End-to-end latency: paid -> outcome event on Kafka")
    table.line(f"  {'':<26}{'n':>7}{'p50':>9}{'p95':>9}{'p99':>9}")
    for source, label in (("notification", "by notification"), ("query", "by the sweeper (*)")):
        lat = summary.latency.get(source)
        if lat is not None:
            table.line(
                f"  {label:<26}{lat.count:>7}{_ms(lat.p50):>9}{_ms(lat.p95):>9}{_ms(lat.p99):>9}"
            )
    table.line("  by notification: from the platform's first try that was sent")
    table.line("  (*) from the payment: its notifications were lost, or came later")

    table.section("Throughput", "per second")
    table.row("orders created", _rate(summary.created, summary.creating))
    table.row(
        "notifications received by the ingress", _rate(summary.ingress.received, summary.window)
    )
    table.row("payments settled (outcome events)", _rate(summary.payments, summary.window))
    table.line(
        f"  ({summary.payments} payments in {summary.window:.1f} s from the first order; "
        f"the run took {summary.elapsed:.0f} s)"
    )

    table.section("Checks")
    for check in summary.checks:
        table.line(f"  {'ok' if check.ok else 'FAIL':<5}{check.name}: {check.detail}")
    table.rule("=")
    state = (
        "interrupted (the checks cover what happened until then)"
        if summary.interrupted
        else ("ok" if summary.ok else "CHECKS FAILED")
    )
    table.line(f"result: {state}")
    return table.text()


class _Table:
    def __init__(self) -> None:
        self._lines: list[str] = []

    def line(self, text: str) -> None:
        self._lines.append(text.rstrip())

    def rule(self, char: str = "-") -> None:
        self._lines.append(char * WIDTH)

    def section(self, title: str, right: str = "") -> None:
        self._lines.append("")
        self._lines.append(f"{title}{right:>{WIDTH - len(title)}}".rstrip())
        self.rule()

    def row(self, label: str, value: object) -> None:
        self._lines.append(f"  {label:<{WIDTH - 12}}{value!s:>10}")

    def text(self) -> str:
        return "\n".join(self._lines)


def _ms(seconds: float) -> str:
    return f"{seconds * 1000:.0f} ms" if seconds < 10 else f"{seconds:.1f} s"


def _rate(count: int, seconds: float) -> str:
    return f"{count / seconds:.1f}" if seconds > 0 else "-"
