"""What billing reads from outside its own stores: usage per billing window, and the customers
and meters of a namespace. Narrow on purpose: pricing needs period totals per meter (and per
priced group), never rollup rows."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from decimal import Decimal
from typing import Protocol

from meterline.domain.billing import UsageKey
from meterline.domain.billing.records import UsageAsk
from meterline.domain.customers.model import Customer
from meterline.domain.meters.model import Meter


class PeriodUsage(Protocol):
    def usage(self, meters: Mapping[str, Meter], asks: Sequence[UsageAsk]) -> list[dict[UsageKey, Decimal]]:
        """One mapping per ask: ``(meter, None)`` -> the window's total over the subjects (0 when
        none), ``(meter, ((dimension, value),))`` -> the total of each group value seen.
        Windows fall on whole minutes; answers are exact."""
        ...


class BillingDirectory(Protocol):
    """The customers and meters billing prices against."""

    def customer(self, namespace: str, key: str) -> Customer:
        """A live customer by key or id (``NotFound`` ``customer_not_found``)."""
        ...

    def customers(self, namespace: str) -> dict[str, Customer]:
        """Every live customer of the namespace with its subjects, by id."""
        ...

    def meters(self, namespace: str) -> list[Meter]:
        """Every meter of the namespace."""
        ...
