"""The executive view: usage per meter over time, top customers by usage and by billed amount,
revenue from finalized invoices per period, growth against the previous range, feature adoption.

Filters (query string): ``grain`` day|week|month, ``tz`` (IANA), ``from``/``to`` (local dates,
``to`` inclusive), ``meter`` (the meter whose top customers are ranked).
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import date, datetime, time, timedelta
from decimal import Decimal

from starlette.responses import Response

from meterline.api.dashboard.web import Chart, View, view, zone
from meterline.domain.auth.keys import Scope
from meterline.domain.errors import InvalidInput
from meterline.services.insights import Grain, Insights, Span

DEFAULT_PERIODS = {Grain.DAY: 30, Grain.WEEK: 12, Grain.MONTH: 12}


def span_of(v: View) -> tuple[Span, dict[str, str]]:
    """The range the page's filters ask for, and the filters as shown back in the form."""
    return span_from(v.request.query_params, v.ctx.clock.now_us())


def span_from(params: Mapping[str, str], now_us: int) -> tuple[Span, dict[str, str]]:
    """:func:`span_of` from the query parameters and the time now."""

    def q(name: str, default: str = "") -> str:
        return params.get(name, default).strip()

    try:
        grain = Grain(q("grain", "day"))
    except ValueError:
        raise InvalidInput("grain must be day, week or month", code="invalid_parameter") from None
    tz_name = q("tz", "UTC") or "UTC"
    tz = zone(tz_name)
    today = datetime.fromtimestamp(now_us / 1e6, tz).date()
    to = _date("to", q("to")) or today
    start = _date("from", q("from")) or _back(to, grain)
    if start > to:
        raise InvalidInput("`from` is after `to`", code="invalid_parameter")
    end = datetime.combine(to + timedelta(days=1), time(), tz)
    span = Span(int(datetime.combine(start, time(), tz).timestamp()), int(end.timestamp()), grain, tz)
    return span, {"grain": grain.value, "tz": tz_name, "from": start.isoformat(), "to": to.isoformat()}


def _date(name: str, text: str) -> date | None:
    if not text:
        return None
    try:
        return date.fromisoformat(text)
    except ValueError:
        raise InvalidInput(f"`{name}` must be a date (YYYY-MM-DD)", code="invalid_parameter") from None


def _back(to: date, grain: Grain) -> date:
    n = DEFAULT_PERIODS[grain]
    if grain is Grain.DAY:
        return to - timedelta(days=n - 1)
    if grain is Grain.WEEK:
        return to - timedelta(days=7 * n - 1)
    month = to.month - n + 1
    return date(to.year + (month - 1) // 12, (month - 1) % 12 + 1, 1)


@view(Scope.READ)
async def executive(v: View) -> Response:
    insights: Insights = v.request.app.state.dashboard.insights
    span, filters = span_of(v)
    meters = await v.run(insights.meters, v.namespace)
    usage = []
    for meter in meters[:12]:
        series = await v.run(insights.usage, v.namespace, meter, span)
        unit = meter.spec.aggregation.value.lower() + (
            f" of {meter.spec.value_property}" if meter.spec.value_property else ""
        )
        chart = Chart(
            f"usage-{meter.slug}", meter.spec.name or meter.slug, unit, filters["tz"], series.starts,
            {meter.slug: series.values}, v.stamp(), kind="bars",
        )  # fmt: skip
        usage.append((series, chart))
    chosen = next((m for m in meters if m.slug == v.q("meter")), meters[0] if meters else None)
    rankings = await v.run(insights.rankings, v.namespace, span)
    top_stamp = adoption_stamp = v.stamp()
    top_usage = insights.top_customers(rankings, chosen) if chosen else []
    adoption = await v.run(insights.adoption, v.namespace, rankings)
    revenue = await v.run(insights.revenue, v.namespace, span, 10)
    amounts = {c: list[Decimal | None](v) for c, v in revenue.by_currency.items()}
    currencies = "/".join(sorted(revenue.by_currency)) or "amount"
    revenue_chart = Chart(
        "revenue", "Revenue from finalized invoices", currencies, filters["tz"], revenue.starts, amounts, v.stamp(),
        kind="bars",
    )  # fmt: skip
    growth = {c: _growth(revenue.total(c), revenue.previous.get(c)) for c in revenue.by_currency}
    return v.render(
        "executive.html",
        title="Executive",
        filters=filters,
        meters=meters,
        chosen=chosen,
        usage=usage,
        charts=[c for _, c in usage] + [revenue_chart],
        top_usage=top_usage,
        top_stamp=top_stamp,
        adoption=adoption,
        adoption_stamp=adoption_stamp,
        revenue=revenue,
        revenue_chart=revenue_chart,
        revenue_growth=growth,
        read_stamp=v.stamp(),
    )


def _growth(now: Decimal, before: Decimal | None) -> Decimal | None:
    return None if not before else (now - before) / before
