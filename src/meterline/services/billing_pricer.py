"""Pricing windows of one namespace: plan versions, customers and meters are read once and
cached for one billing run, preview or report; the usage of many windows is read in one go."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass
from decimal import Decimal

import msgspec

from meterline.domain.billing import (
    Adjustment,
    BillingWindow,
    InvoiceDraft,
    PlanVersion,
    UsageKey,
    adjust,
    check_plan,
    price_period,
    usage_queries,
)
from meterline.domain.billing.adjustments import cite
from meterline.domain.billing.documents import InvoiceWindow, usage_entries, usage_map
from meterline.domain.billing.records import Billed, UsageAsk
from meterline.domain.customers.model import Customer
from meterline.domain.errors import MeterlineError, NotFound
from meterline.domain.meters.model import Meter, counts_type
from meterline.domain.periods import Period
from meterline.ports.billing import BillingStores
from meterline.ports.corrections import CorrectionRecord


@dataclass(frozen=True, slots=True)
class Ask:
    """One window to price: whose usage, with which plan version, over which (clipped) window."""

    customer_id: str
    plan: PlanVersion
    window: BillingWindow


@dataclass(frozen=True, slots=True)
class Priced:
    draft: InvoiceDraft
    usage: dict[UsageKey, Decimal]


@dataclass(frozen=True, slots=True)
class Failed:
    code: str
    detail: str


class Pricer:
    """Prices windows of one namespace; plans, customers and meters are read once and cached."""

    def __init__(self, stores: BillingStores, namespace: str) -> None:
        self._stores = stores
        self.namespace = namespace
        self._plans: dict[tuple[str, int], PlanVersion] = {}
        self.customers: dict[str, Customer] = stores.directory.customers(namespace)
        self._meters: dict[str, Meter] = {m.slug: m for m in stores.directory.meters(namespace)}

    def plan(self, plan: str, version: int) -> PlanVersion:
        key = (plan, version)
        if key not in self._plans:
            self._plans[key] = check_plan(self._stores.plans.get(self.namespace, plan, version))
        return self._plans[key]

    def customer(self, customer_id: str) -> Customer:
        if customer_id not in self.customers:
            raise NotFound(f"customer {customer_id!r} no longer exists", code="customer_not_found")
        return self.customers[customer_id]

    def price(self, asks: Sequence[Ask], *, allow_unpriced: bool = False) -> list[Priced | Failed]:
        """Each window priced with the usage read now (a ``Failed`` where that is impossible;
        usage without a price fails too unless ``allow_unpriced``)."""
        problems = [self._problem(a) for a in asks]
        usable = [i for i, problem in enumerate(problems) if problem is None]
        usages = self.usage([(asks[i].customer_id, asks[i].plan, asks[i].window.window) for i in usable])
        out: list[Priced | Failed] = [p if p is not None else Failed("", "") for p in problems]
        for i, usage in zip(usable, usages, strict=True):
            out[i] = self._priced(asks[i], usage, allow_unpriced)
        return out

    def usage(self, asks: Sequence[tuple[str, PlanVersion, Period]]) -> list[dict[UsageKey, Decimal]]:
        """The usage each plan reads, per (customer, plan, window)."""
        return self.usage_of([(c, w, usage_queries(p)) for c, p, w in asks])

    def usage_of(
        self, asks: Sequence[tuple[str, Period, tuple[tuple[str, str | None], ...]]]
    ) -> list[dict[UsageKey, Decimal]]:
        """Usage of explicit ``(meter, dimension)`` queries per (customer, window)."""
        usage_asks = [UsageAsk(self.customer(c).usage_subjects, w.start_us, w.end_us, q) for c, w, q in asks]
        return self._stores.usage.usage(self._meters, usage_asks)

    def meter_dimensions(self, slug: str) -> tuple[str, ...]:
        meter = self._meters.get(slug)
        return () if meter is None else tuple(meter.spec.group_by)

    def _priced(self, ask: Ask, usage: dict[UsageKey, Decimal], allow_unpriced: bool) -> Priced | Failed:
        draft = price_period(ask.plan, ask.window.window, usage, period=ask.window.period, validated=True)
        if draft.unpriced and not allow_unpriced:
            return Failed("unpriced_usage", "usage without a price: " + ", ".join(draft.unpriced))
        return Priced(draft, usage)

    def _problem(self, ask: Ask) -> Failed | None:
        if ask.customer_id not in self.customers:
            return Failed("customer_not_found", f"customer {ask.customer_id!r} no longer exists")
        missing = [m for m, _ in usage_queries(ask.plan) if m not in self._meters]
        if missing:
            return Failed("meter_not_found", f"plan meters that do not exist: {', '.join(sorted(set(missing)))}")
        return None

    def adjustments(self, billed: Sequence[Billed]) -> list[tuple[Adjustment, Billed, str]]:
        """For every billed window whose usage changed since, the adjustment and its currency."""
        try:
            plans = [self.plan(b.window.plan, b.window.version) for b in billed]
        except MeterlineError:
            return []
        ok = [
            (b, p) for b, p in zip(billed, plans, strict=True) if self._problem(Ask(b.customer_id, p, _bw(b))) is None
        ]
        usages = self.usage([(b.customer_id, p, b.window.window) for b, p in ok])
        log = self._corrections([b for b, _ in ok])
        out = []
        for (b, plan), current in zip(ok, usages, strict=True):
            invoiced = usage_map(b.window.usage)
            if current == invoiced:
                continue
            adj = adjust(
                plan, b.window.window, invoiced, current, invoice_number=b.origin_number, period=b.window.period
            )
            if log:
                adj = cite(adj, self._cited(b, log))
            if adj.lines:
                now = dataclasses.replace(b, current=_with_usage(b.window, current))
                out.append((adj, now, plan.currency))
        return out

    def _corrections(self, billed: Sequence[Billed]) -> list[CorrectionRecord]:
        source = self._stores.corrections
        if source is None or not billed:
            return []
        return source.since(self.namespace, min(b.snapshot_us for b in billed), _MAX_CITED)

    def _cited(self, b: Billed, log: Sequence[CorrectionRecord]) -> dict[str, tuple[int, ...]]:
        """Per meter slug, the corrections received after the window was last billed that
        moved a version of one of the customer's subjects inside the window."""
        subjects = set(self.customer(b.customer_id).usage_subjects)
        window = b.window.window
        found = [
            c
            for c in log
            if c.received_us > b.snapshot_us
            and any(
                s in subjects and window.start_us <= t < window.end_us
                for s, t in zip(c.subjects, c.times_us, strict=True)
            )
        ]
        cited: dict[str, tuple[int, ...]] = {}
        for slug, meter in self._meters.items():
            seqs = tuple(c.seq for c in found if any(counts_type(meter.spec, t) for t in c.types))
            if seqs:
                cited[slug] = seqs
        return cited


_MAX_CITED = 10_000
"""Corrections read per billing run for citations (an adjustment cites at most these)."""


def _bw(b: Billed) -> BillingWindow:
    return BillingWindow(b.window.period, b.window.window)


def _with_usage(window: InvoiceWindow, usage: dict[UsageKey, Decimal]) -> InvoiceWindow:
    return msgspec.structs.replace(window, usage=usage_entries(usage))
