"""Usage queries: a meter's usage by window, subject and group, as the meter query API and
the customer portal ask for it, and its top K subjects or group values over a period."""

from __future__ import annotations

import dataclasses

from meterline.domain.meters.model import Meter
from meterline.domain.meters.query import SUBJECT, MeterQuery, Row
from meterline.domain.meters.top import Top, check_k, rank
from meterline.ports.meters import MeterCatalog, UsageReader


class UsageQueries:
    def __init__(self, meters: MeterCatalog, usage: UsageReader) -> None:
        self._meters = meters
        self._usage = usage

    def query(self, namespace: str, id_or_slug: str, query: MeterQuery) -> tuple[Meter, list[Row]]:
        """The meter (``NotFound`` ``meter_not_found``) and its rows for ``query``."""
        meter = self._meters.get(namespace, id_or_slug)
        return meter, self._usage.query(meter, query)

    def top(self, namespace: str, id_or_slug: str, query: MeterQuery, by: str, k: int) -> tuple[Meter, Top]:
        """The ``k`` subjects (``by`` = ``subject``) or values of the group-by dimension ``by``
        with the largest usage over ``query``'s range and filters: one query of the meter split
        by ``by`` alone, in one window (what it reads is what that query reads), then ranked."""
        check_k(k)
        one = dataclasses.replace(query, window_size=None, group_by=(by,), combine_subjects=by != SUBJECT)
        meter, rows = self.query(namespace, id_or_slug, one)
        return meter, rank(rows, by, k, meter.spec.aggregation)
