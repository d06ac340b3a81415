"""The customer drill-down: the customer list, and one customer's usage per meter and group,
entitlements with balances and the next alert threshold, alerts fired, invoices and credits."""

from __future__ import annotations

from decimal import Decimal

from starlette.responses import Response

from meterline.api.dashboard.executive import span_of
from meterline.api.dashboard.web import Chart, Stamp, View, filled, number, view
from meterline.domain.alerts.rules import Threshold
from meterline.domain.auth.keys import Scope
from meterline.domain.meters.windows import WindowSize
from meterline.services.customer_report import CustomerReports, Report
from meterline.services.insights import Grain, Span


@view(Scope.READ)
async def customers(v: View) -> Response:
    found = await v.run(v.ctx.catalog.customers.list, v.namespace)
    term = v.q("q").lower()
    if term:
        found = [c for c in found if term in c.key.lower() or term in (c.name or "").lower()
                 or any(term in s.lower() for s in c.subjects)]  # fmt: skip
    return v.render("customers.html", title="Customers", customers=found[:500], total=len(found), term=v.q("q"),
                    stamp=v.stamp())  # fmt: skip


@view(Scope.READ)
async def customer(v: View) -> Response:
    reports: CustomerReports = v.request.app.state.dashboard.reports
    span, filters = span_of(v)
    window = WindowSize.MONTH if span.grain is Grain.MONTH else WindowSize.DAY
    key = v.request.path_params["customer"]
    report = await v.run(reports.support, v.namespace, key, span.start, span.end, window, filters["tz"])
    stamp = v.stamp()
    return v.render(
        "customer.html",
        title=f"Customer {report.key}",
        report=report,
        charts=charts_of(report, span, filters["tz"], stamp),
        filters=filters,
        stamp=stamp,
        next_thresholds=await v.run(next_thresholds, v, report),
    )


def charts_of(report: Report, span: Span, tz: str, stamp: Stamp) -> list[Chart]:
    """One chart per meter over every window of ``span`` (days, or months for a month grain)."""
    grain = Grain.MONTH if span.grain is Grain.MONTH else Grain.DAY
    xs = Span(span.start, span.end, grain, span.tz).boundaries()[:-1]
    out = []
    for u in report.usage:
        values = filled(xs, [(r.window_start, r.value) for r in u.windows])
        unit = u.meter.spec.aggregation.value.lower()
        out.append(Chart(f"usage-{u.meter.slug}", u.meter.spec.name or u.meter.slug, unit, tz, xs,
                         {u.meter.slug: values}, stamp, kind="bars"))  # fmt: skip
    return out


def next_thresholds(v: View, report: Report) -> dict[str, str]:
    """Per entitlement id: the next alert threshold its usage has not crossed yet."""
    rules = v.ctx.catalog.notifications.rules(v.namespace)
    out: dict[str, str] = {}
    for b in report.balances:
        ent, value = b.entitlement, b.value
        if value is None or value.usage is None:
            continue
        candidates = []
        for r in rules:
            if not r.rule.covers(ent.feature_id, ent.feature_key):
                continue
            for t in r.rule.spec.thresholds:
                at = _absolute(t, value.allowance)
                if at is not None and at > value.usage:
                    shown = f"{t.value}{' %' if t.type in PERCENT else ''}"
                    candidates.append((at, f"{number(at)} ({shown}, rule {r.rule.spec.name})"))
        if candidates:
            out[ent.id] = min(candidates)[1]
    return out


PERCENT = ("PERCENT", "usage_percentage")


def _absolute(t: Threshold, allowance: Decimal | None) -> Decimal | None:
    """A threshold as the usage that crosses it (percentages and balances need an allowance)."""
    if t.type in PERCENT:
        return None if not allowance else allowance * t.value / 100
    if t.type == "balance_value":
        return None if allowance is None else allowance - t.value
    return t.value
