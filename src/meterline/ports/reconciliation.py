"""What reconciliation counts in storage: events by type and quarter-hour, at each stage.

Quarter hours (900 s, from the epoch) are the finest grain every time zone's periods are cut
from (UTC offsets are whole quarter hours), so a service can add them up into days, weeks or
months in any zone. Times are event times for the ledger and the rollups, receipt times for
dead letters and the quarantine (a rejected event's own time may be what was wrong with it).
"""

from __future__ import annotations

from typing import Protocol

from meterline.domain.meters.model import Meter

QUARTER = 900
"""Seconds in one counting bucket."""


class ReconciliationCounts(Protocol):
    def accepted(self, namespace: str, start: int, end: int, through: int) -> dict[tuple[str, int], int]:
        """Ledger events up to position ``through`` with event time in ``[start, end)`` (epoch
        seconds): (type, bucket) -> count. Counts of the ledger itself (any type, whether a
        meter reads it or not), independent of the meters' rollups it is compared with."""
        ...

    def metered(self, meter: Meter, start: int, end: int) -> dict[int, int]:
        """Events the meter's rollups hold with event time in ``[start, end)``: bucket -> count.
        A usage read: it waits as the request's freshness asks and notes the position it reflects."""
        ...

    def rejected(self, namespace: str, start: int, end: int) -> dict[tuple[str, str, int], int]:
        """Dead letters received in ``[start, end)``: (reason, type or "", bucket) -> count."""
        ...

    def quarantined(self, namespace: str, start: int, end: int) -> dict[tuple[str, int], int]:
        """Events held in quarantine, received in ``[start, end)``: (type, bucket) -> count."""
        ...
