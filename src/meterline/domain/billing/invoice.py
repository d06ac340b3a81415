"""Price one plan version over one window: flat fees, usage lines, the minimum commitment.

:func:`price_period` is pure: the same plan, window and usage always give an equal draft (and
the same msgspec bytes). Policy, in the order it is applied:

1. Flat fees are prorated by the exact elapsed time the window covers of its billing period
   (microseconds, so a 23- or 25-hour DST day counts its real length).
2. Usage is priced as measured in the window and never prorated: free allowances, tiers,
   packages and line minimums/maximums apply in full to every window, even a partial one
   (as Stripe does; Lago can prorate graduated charges, we do not).
3. The plan's minimum commitment is prorated like a flat fee; when the subtotal of flat and
   usage lines is below it, a ``minimum_commitment`` line makes up the difference.
4. Each line is rounded once (``money.round_line``); subtotal and total add rounded lines.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from decimal import Decimal

from meterline.domain.billing.charges import Step, model_name
from meterline.domain.billing.lines import Group, InvoiceDraft, InvoiceLine, Proration, UsageKey, group_key
from meterline.domain.billing.money import ZERO, Currency, currency, prorate, round_line, sub, total
from meterline.domain.billing.plans import PlanVersion, check_plan
from meterline.domain.billing.pricing import Priced, price_model, price_units
from meterline.domain.billing.ratecards import RateCard
from meterline.domain.errors import InvalidInput
from meterline.domain.periods import Period

Usage = Mapping[UsageKey, Decimal]


def usage_queries(plan: PlanVersion) -> tuple[tuple[str, str | None], ...]:
    """The ``(meter, group-by dimension or None)`` queries whose results ``price_period`` reads."""
    seen = {(card.meter, card.group_by): None for card in plan.cards if card.meter is not None}
    return tuple((meter, dim) for meter, dim in seen if meter is not None)


def proration(window: Period, period: Period) -> Proration:
    """The fraction of ``period`` that ``window`` covers, in exact microseconds."""
    return Proration(window.end_us - window.start_us, period.end_us - period.start_us)


def price_period(
    plan: PlanVersion, window: Period, usage: Usage, *, period: Period | None = None, validated: bool = False
) -> InvoiceDraft:
    """Price ``usage`` measured in ``window`` with ``plan``.

    ``period`` is the full billing period the window was clipped from (default: the window
    itself, i.e. no proration). ``usage`` maps ``(meter, None)`` to a meter's total and
    ``(meter, (("dim", "value"),))`` to one group value's usage (see ``usage_queries``);
    missing keys mean zero. Raises ``InvalidPlan`` for an invalid plan; ``validated=True``
    says the caller already ran ``check_plan`` on it (a billing run pricing thousands of
    windows with one plan checks it once).
    """
    if not validated:
        check_plan(plan)
    _check_usage(usage)
    if period is not None and not period.start_us <= window.start_us < window.end_us <= period.end_us:
        raise InvalidInput("the window must be a non-empty part of its billing period", code="invalid_window")
    cur, part = currency(plan.currency), proration(window, period or window)
    lines = [line for card in plan.cards for line in _card_lines(card, window, usage, part, cur)]
    subtotal = total(line.amount for line in lines)
    commitment = _commitment(plan, window, part, subtotal, cur)
    lines += [commitment] if commitment else []
    grand = total(line.amount for line in lines)
    unpriced = tuple(line.name for line in lines if line.kind == "unpriced")
    return InvoiceDraft(
        plan=plan.plan,
        version=plan.version,
        currency=plan.currency,
        start=window.start,
        end=window.end,
        lines=tuple(lines),
        subtotal=subtotal,
        total=grand,
        amount_due=grand,
        unpriced=unpriced,
    )


def _check_usage(usage: Usage) -> None:
    for (meter, _), quantity in usage.items():
        if not isinstance(quantity, Decimal) or not quantity.is_finite():
            raise InvalidInput(f"usage of {meter!r} must be a finite Decimal", code="invalid_usage")


def _card_lines(card: RateCard, window: Period, usage: Usage, part: Proration, cur: Currency) -> Iterator[InvoiceLine]:
    if card.is_flat:
        yield _flat_line(card, window, part, cur)
    elif card.group_by is None:
        yield _usage_line(card, window, usage.get((str(card.meter), None), ZERO), None, cur)
    else:
        for group in _group_values(card, usage):
            yield _usage_line(card, window, usage.get((str(card.meter), group), ZERO), group, cur)


def _group_values(card: RateCard, usage: Usage) -> list[Group]:
    """Explicitly priced values first (card order, even without usage), then the other values
    with non-zero usage, sorted."""
    dim = str(card.group_by)
    listed = [group_key(dim, value) for value in card.groups]
    seen = {g for (m, g), q in usage.items() if m == card.meter and g and len(g) == 1 and g[0][0] == dim and q}
    return listed + sorted(seen - set(listed))


def _flat_line(card: RateCard, window: Period, part: Proration, cur: Currency) -> InvoiceLine:
    assert card.model is not None
    priced = _prorated(price_model(card.model, ZERO), part)
    return InvoiceLine(
        "flat",
        card.name,
        round_line(priced.amount, cur),
        priced.amount,
        window.start,
        window.end,
        card=card.key,
        model=model_name(card.model),
        steps=priced.steps,
        proration=part,
    )


def _prorated(priced: Priced, part: Proration) -> Priced:
    if part.full:
        return priced
    amount = prorate(priced.amount, part.covered_us, part.period_us)
    return Priced(amount, (*priced.steps, Step("proration", sub(amount, priced.amount))))


def _usage_line(card: RateCard, window: Period, usage: Decimal, group: Group | None, cur: Currency) -> InvoiceLine:
    model = card.model_for(group[0][1] if group else None)
    quantity = card.units(usage)
    label = card.name + "".join(f" ({k}={v})" for k, v in group or ())
    if model is None:
        return InvoiceLine(
            "unpriced",
            label,
            ZERO,
            ZERO,
            window.start,
            window.end,
            card=card.key,
            meter=card.meter,
            group=dict(group or ()),
            quantity=quantity,
        )
    priced = price_units(model, quantity, free_units=card.free_units, minimum=card.minimum, maximum=card.maximum)
    return InvoiceLine(
        "usage",
        label,
        round_line(priced.amount, cur),
        priced.amount,
        window.start,
        window.end,
        card=card.key,
        meter=card.meter,
        group=dict(group) if group else None,
        model=model_name(model),
        quantity=quantity,
        steps=priced.steps,
    )


def _commitment(
    plan: PlanVersion, window: Period, part: Proration, subtotal: Decimal, cur: Currency
) -> InvoiceLine | None:
    if plan.minimum_commitment is None:
        return None
    committed = _prorated(Priced(plan.minimum_commitment, (Step("minimum", plan.minimum_commitment),)), part)
    exact = sub(committed.amount, subtotal)
    amount = round_line(exact, cur)
    if amount <= 0:
        return None
    steps = (*committed.steps, Step("charged", sub(ZERO, subtotal)))
    return InvoiceLine(
        "minimum_commitment",
        "Minimum commitment",
        amount,
        exact,
        window.start,
        window.end,
        steps=steps,
        proration=part,
    )
