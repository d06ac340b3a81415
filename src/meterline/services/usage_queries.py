"""Usage queries: a meter's usage by window, subject and group, as the meter query API and
the customer portal ask for it."""

from __future__ import annotations

from meterline.domain.meters.model import Meter
from meterline.domain.meters.query import MeterQuery, Row
from meterline.ports.meters import MeterCatalog, UsageReader


class UsageQueries:
    def __init__(self, meters: MeterCatalog, usage: UsageReader) -> None:
        self._meters = meters
        self._usage = usage

    def query(self, namespace: str, id_or_slug: str, query: MeterQuery) -> tuple[Meter, list[Row]]:
        """The meter (``NotFound`` ``meter_not_found``) and its rows for ``query``."""
        meter = self._meters.get(namespace, id_or_slug)
        return meter, self._usage.query(meter, query)
