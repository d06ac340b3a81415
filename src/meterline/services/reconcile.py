"""``reconcile``: every difference between the stages of the pipeline, with its cause.

Per namespace, meter and period (event time, cut in the requested zone) it compares, in events:

- **received -> accepted**: events of the meter's type that were ``rejected`` (dead letters, by
  reason) or ``quarantined`` (both by period of receipt), beside those accepted;
- **accepted -> metered**: events accepted (as first received) and what the meter's rollups
  hold. A difference is ``voided`` (a correction voided them), ``amended`` (an amend moved them
  to another period or type: positive moved out, negative moved in), ``unreadable`` (the meter
  could not read them: a value or group it could not read, a time before its ``eventFrom``),
  or ``unexplained``: the rollups do not hold what a replay of the ledger says they must (for
  UNIQUE_COUNT meters, counted in distinct values). Only this last one is an error. In scale
  mode the rollups may hold a range of the log a sink worker was applying while they were read,
  beyond the position the report reflects: up to what that range holds, a surplus is
  ``in_flight`` (not yet applied), not unexplained;
- **metered -> billed** in quantities and money (``services.reconcile_billed``): every
  finalized window's billed quantity per meter against what is metered for it now, the
  difference split into ``late_adjustment_pending``, ``voided_adjustment_pending`` and
  ``unexplained``, with the money of the pending adjustment;
- **metered -> billed** in events: where the counted events stand with finalized invoices:
  ``late_adjustment_pending`` (they arrived, or were corrected, after their window was
  finalized: the next invoice carries the adjustment), ``late_adjusted`` (a later invoice
  carried it) and ``not_invoiced`` (no finalized window holds them yet: an open period, or a
  subject without a subscription).

``tolerance`` is how many unexplained events one meter and period may have, and
``quantity_tolerance`` how much unexplained quantity one meter of one billed window may have;
beyond either the run is not within tolerance (the CLI exits non-zero). The scheduled job runs
it for every namespace and keeps the totals of unexplained events and of billed windows with
unexplained quantities beyond tolerance for ``/metrics``.
"""

from __future__ import annotations

import bisect
import threading
from dataclasses import dataclass, field
from datetime import timedelta
from decimal import Decimal
from zoneinfo import ZoneInfo

from meterline.domain.clock import Clock
from meterline.domain.meters.model import Aggregation
from meterline.ports.reconciliation import LedgerCheck, ReconciliationCounts
from meterline.runtime import freshness
from meterline.services.insights import Grain, Span
from meterline.services.reconcile_billed import BilledLine, billed_lines
from meterline.services.reconciliation import Reconciliation, Report

UNEXPLAINED = "unexplained"
IN_FLIGHT = "in_flight"


@dataclass(frozen=True, slots=True)
class Difference:
    meter: str
    period_start: int
    stage: str
    """``received->accepted``, ``accepted->metered`` or ``metered->billed``."""
    cause: str
    events: int


@dataclass(frozen=True, slots=True)
class Line:
    """One meter and period: events at each stage, the usage value and the billed quantity."""

    meter: str
    period_start: int
    received: int
    accepted: int
    metered: int
    expected: int
    value: Decimal | None
    billed: Decimal


@dataclass
class Reconciled:
    namespace: str
    starts: list[int]
    position: int | None
    tolerance: int
    quantity_tolerance: Decimal = Decimal(0)
    lines: list[Line] = field(default_factory=list)
    differences: list[Difference] = field(default_factory=list)
    billed: list[BilledLine] = field(default_factory=list)
    """Every meter of every finalized window starting in the range (``reconcile_billed``)."""

    @property
    def unexplained(self) -> int:
        return sum(abs(d.events) for d in self.differences if d.cause == UNEXPLAINED)

    @property
    def unexplained_billed(self) -> int:
        """Billed windows' meters whose unexplained quantity is beyond ``quantity_tolerance``."""
        return sum(1 for b in self.billed if abs(b.unexplained) > self.quantity_tolerance)

    @property
    def within_tolerance(self) -> bool:
        events = all(abs(d.events) <= self.tolerance for d in self.differences if d.cause == UNEXPLAINED)
        return events and not self.unexplained_billed


class Reconciler:
    def __init__(
        self,
        reconciliation: Reconciliation,
        counts: ReconciliationCounts,
        *,
        tolerance: int,
        quantity_tolerance: Decimal = Decimal(0),
    ) -> None:
        self._reconciliation = reconciliation
        self._counts = counts
        self.tolerance = tolerance
        self.quantity_tolerance = quantity_tolerance
        self._last: dict[str, tuple[int, int]] = {}
        self._lock = threading.Lock()

    def reconcile(
        self, namespace: str, span: Span, *, tolerance: int | None = None, quantity_tolerance: Decimal | None = None
    ) -> Reconciled:
        report = self._reconciliation.report(namespace, span)
        through = report.position if report.position is not None else 0
        bounds = [*report.starts, span.boundaries()[-1]]
        meters = [m.meter for m in report.meters]
        check = self._counts.ledger_check(namespace, meters, bounds[0], bounds[-1], through)
        out = Reconciled(
            namespace,
            report.starts,
            report.position,
            self.tolerance if tolerance is None else tolerance,
            self.quantity_tolerance if quantity_tolerance is None else quantity_tolerance,
        )
        _explain(out, report, check, bounds)
        span_us = (bounds[0] * 1_000_000, bounds[-1] * 1_000_000)
        invoices = self._reconciliation.invoices
        out.billed = billed_lines(invoices, self._counts, namespace, meters, span_us, through)
        with self._lock:
            self._last[namespace] = (out.unexplained, out.unexplained_billed)
        return out

    def unexplained(self) -> int:
        """Unexplained events found by the last run of each namespace (for ``/metrics``)."""
        with self._lock:
            return sum(events for events, _ in self._last.values())

    def unexplained_billed(self) -> int:
        """Billed windows' meters with unexplained quantities beyond tolerance found by the last
        run of each namespace (for ``/metrics``)."""
        with self._lock:
            return sum(windows for _, windows in self._last.values())

    def run_all(self, clock: Clock, lookback: timedelta) -> None:
        """The scheduled job: every namespace with meters, daily periods over ``lookback`` (UTC)."""
        end = clock.now_us() // 1_000_000
        span = Span(end - int(lookback.total_seconds()), end, Grain.DAY, ZoneInfo("UTC"))
        for namespace in self._counts.namespaces():
            freshness.begin()  # its reads wait for the aggregator and note the position they reflect
            self.reconcile(namespace, span)


def _explain(out: Reconciled, report: Report, check: LedgerCheck, bounds: list[int]) -> None:
    n = len(out.starts)
    for line in report.meters:
        m = line.meter
        per = _Per(bounds, n)
        accepted = per.of(check.accepted, m.spec.event_type)
        voided = per.of(check.voided, m.spec.event_type)
        counting = per.of(check.counting, m.spec.event_type)
        expected = per.of(check.expected, m.slug)
        in_flight = per.of(check.in_flight, m.slug)
        stray = per.of(check.stray, m.slug)
        rejected = {r: row for (r, t), row in report.rejected.items() if t == m.spec.event_type}
        held = report.quarantined.get(m.spec.event_type, [0] * n)
        unique = m.spec.aggregation in (Aggregation.UNIQUE_COUNT, Aggregation.APPROX_UNIQUE_COUNT)
        metered = line.metered  # the report's (distinct values for UNIQUE_COUNT), as the dashboard shows
        billing = {
            "late_adjustment_pending": per.of(check.late_pending, m.slug),
            "late_adjusted": per.of(check.late_adjusted, m.slug),
            "not_invoiced": per.of(check.not_invoiced, m.slug),
        }
        for i, start in enumerate(out.starts):
            received = accepted[i] + held[i] + sum(row[i] for row in rejected.values())
            value = line.value[i] if i < len(line.value) else None
            out.lines.append(Line(m.slug, start, received, accepted[i], metered[i], expected[i], value, line.billed[i]))
            found = [(f"rejected:{r}", row[i]) for r, row in rejected.items()] + [("quarantined", held[i])]
            _note(out, m.slug, start, "received->accepted", found)
            moved = accepted[i] - voided[i] - counting[i]
            causes = [("voided", voided[i]), ("amended", moved)]
            if not unique:
                causes.append(("unreadable", counting[i] - expected[i]))
            difference = metered[i] - expected[i]
            flight = min(max(difference, 0), in_flight[i])  # a range being applied as the rollups were read
            unexplained = difference - flight or stray[i]  # rows per subject edited beside matching totals
            causes += [(IN_FLIGHT, flight), (UNEXPLAINED, unexplained)]
            _note(out, m.slug, start, "accepted->metered", causes)
            _note(out, m.slug, start, "metered->billed", [(k, v[i]) for k, v in billing.items()])


class _Per:
    """Counts by (key, quarter bucket) added up per period."""

    def __init__(self, bounds: list[int], n: int) -> None:
        self._bounds = bounds
        self._n = n

    def of(self, counts: dict[tuple[str, int], int], key: str) -> list[int]:
        out = [0] * self._n
        for (k, bucket), v in counts.items():
            if k == key:
                out[_index(self._bounds, bucket)] += v
        return out


def _index(bounds: list[int], at: int) -> int:
    return max(0, min(len(bounds) - 2, bisect.bisect_right(bounds, at) - 1))


def _note(out: Reconciled, meter: str, start: int, stage: str, causes: list[tuple[str, int]]) -> None:
    for cause, events in causes:
        if events:
            out.differences.append(Difference(meter, start, stage, cause, events))
