"""What a meter has seen: its subjects and the values of its group-by dimensions."""

from __future__ import annotations

from typing import Protocol

from meterline.domain.meters.model import Meter


class MeterValues(Protocol):
    def subjects(self, meter: Meter, start: int | None, end: int | None) -> list[str]:
        """Subjects with usage in ``meter`` within ``[start, end)`` (epoch seconds; open ends
        unbounded), sorted."""
        ...

    def group_values(self, meter: Meter, dimension: str, start: int | None, end: int | None) -> list[str]:
        """The values ``dimension`` took within ``[start, end)``, sorted; events without the
        dimension contribute none."""
        ...
