"""What reconciliation counts in storage: events by type and quarter-hour, at each stage.

Quarter hours (900 s, from the epoch) are the finest grain every time zone's periods are cut
from (UTC offsets are whole quarter hours), so a service can add them up into days, weeks or
months in any zone. Times are event times for the ledger and the rollups, receipt times for
dead letters and the quarantine (a rejected event's own time may be what was wrong with it).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol

from meterline.domain.integrity.reconcile import QUARTER, BilledWindow, Change, Counts
from meterline.domain.meters.model import Meter

__all__ = ["QUARTER", "BilledWindow", "Change", "Counted", "Counts", "LedgerCheck", "ReconciliationCounts"]


@dataclass
class LedgerCheck:
    """The ledger's own account of a range (event times in it), up to a position.

    Per event type and bucket: ``accepted`` events (as first received: corrections not
    counted), those since ``voided``, and the versions that ``counting`` now (an original not
    corrected, or its last amend, wherever the amend moved it). Per meter slug and bucket:
    ``expected``, what the meter's rollups must hold (events it reads among the counting ones;
    distinct values for UNIQUE_COUNT); and, for events of the meter's type, where billing stands:
    ``invoiced`` (in a window finalized before they arrived), ``late_pending`` (arrived, or
    voided, after their window was finalized: an adjustment the next invoice carries),
    ``late_adjusted`` (such an adjustment already made) and ``not_invoiced`` (no finalized
    window holds them yet). ``in_flight``, per meter slug and bucket: what the rollups may hold
    beyond the position, from ranges of the log being applied while they were read (scale mode's
    sink workers insert a range's rollups before they record its end; embedded mode writes both
    in one transaction, so it has none). ``stray``, per meter slug and bucket: the events the
    meter's per-subject rollups hold minus those its meter-wide counts hold, read in one
    snapshot (both are written in one transaction: anything but 0 is a row edited or lost, which
    the comparison with the ledger alone would miss when only the rows per subject changed; a
    store without two such counts leaves it empty)."""

    accepted: Counts = field(default_factory=dict)
    voided: Counts = field(default_factory=dict)
    counting: Counts = field(default_factory=dict)
    expected: Counts = field(default_factory=dict)
    invoiced: Counts = field(default_factory=dict)
    late_pending: Counts = field(default_factory=dict)
    late_adjusted: Counts = field(default_factory=dict)
    not_invoiced: Counts = field(default_factory=dict)
    in_flight: Counts = field(default_factory=dict)
    stray: Counts = field(default_factory=dict)


@dataclass(frozen=True)
class Counted:
    """Counts of one read snapshot (:meth:`ReconciliationCounts.counted`)."""

    position: int
    """Every ledger entry up to here is reflected (the aggregator's live offset; in scale mode
    the log records the sink workers applied, over every partition)."""
    position_us: int | None
    """The receipt time of that entry (None at position 0)."""
    accepted: dict[tuple[str, int], int]
    """(event type, bucket) -> ledger events (corrections are not events)."""
    metered: dict[str, dict[int, int]]
    """Meter slug -> bucket -> events its rollups hold (distinct values for UNIQUE_COUNT)."""


class ReconciliationCounts(Protocol):
    def counted(
        self, namespace: str, meters: list[Meter], start: int, end: int, periods: Sequence[int] = ()
    ) -> Counted:
        """From one read snapshot, for event times in ``[start, end)`` (epoch seconds): the ledger
        position the counts reflect, the ledger's events up to it per (type, bucket) (any type,
        whether a meter reads it or not) and, per meter slug, what its rollups hold per bucket
        (events; distinct values for UNIQUE_COUNT, as :class:`LedgerCheck` ``expected``). A
        usage read: it waits first as the request's freshness asks. ``periods`` (boundaries
        on quarter hours: each period's start, then the last one's end) lets the store add the
        quarter hours up per period, keyed by the period's start (a store may still answer
        per quarter hour)."""
        ...

    def rejected(self, namespace: str, start: int, end: int) -> dict[tuple[str, str, int], int]:
        """Dead letters received in ``[start, end)``: (reason, type or "", bucket) -> count."""
        ...

    def quarantined(self, namespace: str, start: int, end: int) -> dict[tuple[str, int], int]:
        """Events held in quarantine, received in ``[start, end)``: (type, bucket) -> count."""
        ...

    def ledger_check(self, namespace: str, meters: list[Meter], start: int, end: int, through: int) -> LedgerCheck:
        """The ledger's account of ``[start, end)`` up to position ``through`` (a scan of it)."""
        ...

    def billed_changes(
        self, namespace: str, meters: list[Meter], windows: list[BilledWindow], through: int
    ) -> list[dict[str, Change]]:
        """Per window (in order), per meter slug: the :class:`Change` the ledger entries up to
        ``through`` received after the window's snapshot made to the meter's quantity in it
        (versions of events whose event time is in the windows' range)."""
        ...

    def namespaces(self) -> list[str]:
        """Namespaces that have meters (what the scheduled reconciliation walks)."""
        ...
