"""The billing services on the memory (and SQLite) stores: runs, late usage, previews, voids and re-issues,
the plan and subscription rules, credits, showback and the scheduler -- fast, no HTTP."""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Iterator
from contextlib import AbstractContextManager
from decimal import Decimal
from pathlib import Path
from typing import Any

import msgspec
import pytest
from contract.billing_kit import APRIL, MARCH, MAY, NS, Kit, open_kit

from meterline.domain.billing import billing_windows, parse_plan
from meterline.domain.billing.credits import GrantTerms
from meterline.domain.billing.documents import decode_invoice
from meterline.domain.billing.records import Outcome, RunSettings
from meterline.domain.clock import from_us
from meterline.domain.errors import Conflict, InvalidInput, InvalidPlan, MeterlineError
from meterline.domain.meters.model import Aggregation, MeterSpec
from meterline.domain.periods import Period
from meterline.services.billing import Billing, SchedulerSettings, build_billing
from meterline.services.billing_finalize import finalize
from meterline.services.billing_pending import Job, pending
from meterline.services.billing_pricer import Ask, Pricer
from meterline.services.billing_subscriptions import SubscriptionRequest

MINUTE = 60_000_000
PLAN = {"plan": "pro", "currency": "USD", "cards": [
    {"key": "base", "name": "Base", "model": {"model": "flat", "amount": "10"}},
    {"key": "api", "name": "API", "meter": "api_calls", "model": {"model": "per_unit", "unitPrice": "0.5"}},
]}  # fmt: skip


@pytest.fixture(params=["memory", "sqlite"])
def kit(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Kit]:
    """The memory stores (fast); the SQLite ones too, so both give the services the same answers."""
    yield from open_kit(request.param, tmp_path)


def services(kit: Kit, **scheduler: Any) -> Billing:
    settings = SchedulerSettings(**scheduler) if scheduler else SchedulerSettings(enabled=False)
    return build_billing(kit.stores, kit.clock, RunSettings(), scheduler=settings, max_report_windows=100)


@pytest.fixture
def billing(kit: Kit) -> Billing:
    """acme (subjects a1, a2) on plan pro v1 since March; 4 API calls in March."""
    kit.meter(MeterSpec("api_calls", "api", Aggregation.SUM, value_property="$.n"))
    kit.customer("acme", "a1", "a2")
    b = services(kit)
    b.plans.create(NS, parse_plan({**PLAN, "version": 1}), auto_version=False)
    b.plans.publish(NS, "pro", 1)
    b.subscriptions.subscribe(NS, SubscriptionRequest("acme", "pro", start=from_us(MARCH)))
    calls(kit, "a1", "2026-03-03T00:00:00Z", 3, "m1")
    calls(kit, "a2", "2026-03-20T00:00:00Z", 1, "m2")
    return b


def calls(kit: Kit, subject: str, time_: str, n: int, id_: str) -> None:
    kit.events({"id": id_, "type": "api", "subject": subject, "time": time_, "data": {"n": n}})


def move_to(kit: Kit, us: int) -> None:
    kit.clock.advance((us - kit.clock.now_us()) / 1_000_000)


def total(billing: Billing, number: str) -> Decimal:
    return decode_invoice(billing.invoices.get(NS, number).body).total


def test_a_run_finalizes_each_ended_period_once(kit: Kit, billing: Billing) -> None:
    move_to(kit, APRIL - MINUTE)
    assert billing.runs.run(NS).created == []  # March has not ended
    move_to(kit, APRIL + MINUTE)
    report = billing.runs.run(NS)
    assert (report.created, report.existing, report.failed) == (["INV-000001"], [], [])
    assert total(billing, "INV-000001") == Decimal(12)  # 10 + 4 x 0.5
    again = billing.runs.run()
    assert (again.created, again.existing, again.stale) == ([], [], 0)
    [sub] = billing.subscriptions.list(NS, "acme")
    assert sub.billed_through_us == APRIL


def test_late_usage_of_an_invoiced_period_becomes_an_adjustment_on_the_next_invoice(kit: Kit, billing: Billing) -> None:
    move_to(kit, APRIL + MINUTE)
    billing.runs.run(NS)
    calls(kit, "a1", "2026-03-31T23:00:00Z", 6, "late")
    move_to(kit, MAY + MINUTE)
    assert billing.runs.run(NS).created == ["INV-000002"]
    may = decode_invoice(billing.invoices.get(NS, "INV-000002").body)
    [adjustment] = [line for line in may.lines if line.kind == "adjustment"]
    assert (adjustment.references, adjustment.amount) == ("INV-000001", Decimal(3))
    assert may.total == Decimal(13)  # April: 10, no usage; plus the adjustment
    assert total(billing, "INV-000001") == Decimal(12)  # the March invoice never changes
    move_to(kit, MAY + 2 * MINUTE)
    assert billing.runs.run(NS).created == []  # adjusted once


def test_a_window_that_cannot_be_priced_fails_and_holds_back_the_later_ones(kit: Kit, billing: Billing) -> None:
    kit.delete_customer("acme")
    move_to(kit, MAY + MINUTE)
    report = billing.runs.run(NS)
    assert report.created == []
    assert [(f.code, f.period_start_us) for f in report.failed] == [("customer_not_found", MARCH)]


class Meanwhile(AbstractContextManager[object]):
    """A lock under which another billing run finishes first (as a scheduler's run would)."""

    def __init__(self, other: Billing) -> None:
        self.other = other

    def __enter__(self) -> object:
        self.other.runs.run(NS)
        return self

    def __exit__(self, *exc: object) -> None:
        return None


def test_a_run_reports_the_invoices_another_run_finalized_while_it_waited(kit: Kit, billing: Billing) -> None:
    move_to(kit, APRIL + MINUTE)
    billing.runs.lock = Meanwhile(services(kit))
    report = billing.runs.run(NS)
    assert (report.created, report.existing) == ([], ["INV-000001"])


def test_a_preview_prices_what_is_not_invoiced_yet_and_stores_nothing(kit: Kit, billing: Billing) -> None:
    billing.credits.grant(NS, "acme", GrantTerms("promo", "USD", Decimal(5)))
    move_to(kit, APRIL + 15 * 86_400_000_000)
    invoices, problems = billing.runs.preview(NS, "acme")
    assert problems == []
    assert [(i.number, i.period_start, i.total, i.amount_due) for i in invoices] == [
        ("", from_us(MARCH), Decimal(12), Decimal(7)),
        ("", from_us(APRIL), Decimal(10), Decimal(10)),  # the credit burned on March's already
    ]
    assert billing.invoices.list(NS) == []
    assert billing.credits.balances(NS, "acme").totals == {"USD": Decimal(5)}


def test_a_voided_invoice_gives_its_credits_back_and_a_replacement_prices_it_again(kit: Kit, billing: Billing) -> None:
    billing.credits.grant(NS, "acme", GrantTerms("promo", "USD", Decimal(5)))
    move_to(kit, APRIL + MINUTE)
    billing.runs.run(NS)
    assert billing.credits.balances(NS, "acme").totals == {"USD": Decimal(0)}
    calls(kit, "a2", "2026-03-30T00:00:00Z", 2, "late")
    with pytest.raises(InvalidInput):
        billing.invoices.void(NS, "INV-000001", "  ", reissue=True)
    voided, replacement = billing.invoices.void(NS, "INV-000001", "wrong usage", reissue=True)
    assert (voided.status, voided.replaced_by, replacement) == ("voided", "INV-000002", "INV-000002")
    replaced = decode_invoice(billing.invoices.get(NS, "INV-000002").body)
    assert (replaced.replaces, replaced.total, replaced.amount_due) == ("INV-000001", Decimal(13), Decimal(8))
    with pytest.raises(Conflict) as err:
        billing.invoices.reissue(NS, "INV-000002")
    assert err.value.code == "invoice_not_voided"


def test_subscription_rules(kit: Kit, billing: Billing) -> None:
    kit.customer("bravo", "b1")
    [acme] = billing.subscriptions.list(NS, "acme")
    cases = [
        (lambda: billing.subscriptions.subscribe(NS, SubscriptionRequest("acme", "pro", start=from_us(APRIL))),
         "subscription_overlaps"),
        (lambda: billing.subscriptions.subscribe(NS, SubscriptionRequest("bravo", "pro", start=from_us(APRIL + 1))),
         "unaligned_time"),
        (lambda: billing.subscriptions.subscribe(NS, SubscriptionRequest("bravo", "pro", version=2)),
         "plan_not_found"),
    ]  # fmt: skip
    for call, code in cases:
        with pytest.raises(MeterlineError) as err:
            call()
        assert err.value.code == code
    billing.plans.copy(NS, "pro", 1)
    with pytest.raises(Conflict) as draft:
        billing.subscriptions.subscribe(NS, SubscriptionRequest("bravo", "pro", version=2))
    assert draft.value.code == "plan_not_published"
    move_to(kit, APRIL + MINUTE)
    billing.runs.run(NS)
    with pytest.raises(Conflict) as invoiced:
        billing.subscriptions.cancel(NS, acme.id, from_us(APRIL - MINUTE))
    assert invoiced.value.code == "period_invoiced"
    billing.plans.publish(NS, "pro", 2)
    closed, started = billing.subscriptions.change(NS, acme.id, "pro", None, None)
    assert closed.subscription.end == started.subscription.start == from_us(APRIL + MINUTE)
    assert (started.subscription.version, started.previous) == (2, acme.id)


def test_plan_rules(kit: Kit, billing: Billing) -> None:
    draft = billing.plans.create(NS, parse_plan({**PLAN, "version": 1}), auto_version=True)
    assert draft.version == 2 and not draft.published
    with pytest.raises(Conflict) as err:
        billing.plans.replace(NS, msgspec.structs.replace(draft, version=1))
    assert err.value.code == "plan_version_published"
    cards = [
        *PLAN["cards"],
        {"key": "x", "name": "X", "meter": "nope", "model": {"model": "per_unit", "unitPrice": "1"}},
    ]
    billing.plans.replace(NS, parse_plan({**PLAN, "version": 2, "cards": cards}))
    with pytest.raises(InvalidPlan) as bad:
        billing.plans.publish(NS, "pro", 2)
    assert "cards[2].meter 'nope'" in bad.value.detail
    assert billing.plans.get(NS, "pro").version == 1  # the latest published


def test_credit_balances_count_only_unexpired_grants(kit: Kit, billing: Billing) -> None:
    soon = from_us(MARCH + MINUTE)
    billing.credits.grant(NS, "acme", GrantTerms("a", "USD", Decimal("2.5")))
    billing.credits.grant(NS, "acme", GrantTerms("b", "USD", Decimal(4), expires_at=soon))
    move_to(kit, MARCH + 2 * MINUTE)
    found = billing.credits.balances(NS, "acme")
    assert found.totals == {"USD": Decimal("2.5")}
    assert [(g.terms.key, g.expired, g.terms.effective_at) for g in found.grants] == [
        ("a", False, from_us(MARCH)),
        ("b", True, from_us(MARCH)),
    ]
    billing.credits.void(NS, "acme", "a")
    assert billing.credits.balances(NS, "acme").totals == {}


def test_showback_prices_any_range_on_request(kit: Kit, billing: Billing) -> None:
    report = billing.showback.report(NS, from_us(MARCH), from_us(APRIL))
    assert [(t.customer, t.amount) for t in report.totals] == [("acme", Decimal(12)), (None, Decimal(12))]
    assert sum(r.amount for r in report.rows) == Decimal(12)
    assert report.problems == []
    assert billing.invoices.list(NS) == []


def test_the_scheduler_runs_due_periods_in_the_background(kit: Kit, billing: Billing) -> None:
    move_to(kit, APRIL + MINUTE)
    scheduled = services(kit, enabled=True, interval_s=0.01)
    scheduled.scheduler.start()
    try:
        deadline = time.monotonic() + 20
        while not billing.invoices.list(NS):
            assert time.monotonic() < deadline, "the scheduler finalized nothing"
            time.sleep(0.01)
    finally:
        scheduled.scheduler.close()
    assert [r.number for r in billing.invoices.list(NS)] == ["INV-000001"]
    assert scheduled.scheduler.last is not None


def test_finalizing_skips_a_window_whose_earlier_window_is_not_finalized(kit: Kit, billing: Billing) -> None:
    move_to(kit, MAY + MINUTE)
    pricer = Pricer(kit.stores, NS)
    [sub] = billing.subscriptions.list(NS, "acme")
    plan = pricer.plan("pro", 1)
    windows = billing_windows(sub.subscription, plan.cadence, until=from_us(MAY), since=from_us(MARCH))
    jobs = [Job(sub.id, Ask(sub.customer_id, plan, w), True) for w in windows]
    found, failures = pending(kit.stores, pricer, jobs, from_us(MAY), MARCH)
    assert failures == [] and len(found) == 2
    settings = RunSettings()
    assert finalize(kit.stores.finalizing, found[1:], settings) == [Outcome("stale", None)]  # April before March
    assert finalize(kit.stores.finalizing, found, settings) == [
        Outcome("created", "INV-000001"),
        Outcome("created", "INV-000002"),
    ]
    assert finalize(kit.stores.finalizing, found[:1], settings) == [Outcome("exists", "INV-000001")]


def test_an_adjustment_computed_from_a_superseded_snapshot_is_not_finalized(kit: Kit, billing: Billing) -> None:
    move_to(kit, APRIL + MINUTE)
    billing.runs.run(NS)
    calls(kit, "a1", "2026-03-31T23:00:00Z", 6, "late")
    move_to(kit, MAY + MINUTE)
    pricer = Pricer(kit.stores, NS)
    [sub] = billing.subscriptions.list(NS, "acme")
    plan = pricer.plan("pro", 1)
    [april] = billing_windows(sub.subscription, plan.cadence, until=from_us(MAY), since=from_us(APRIL))
    job = Job(sub.id, Ask(sub.customer_id, plan, april), True)
    [first], _ = pending(kit.stores, pricer, [job], from_us(MAY), MARCH)
    [second], _ = pending(kit.stores, pricer, [job], from_us(MAY), MARCH)
    assert len(first.adjustments) == 1
    assert finalize(kit.stores.finalizing, [first], RunSettings())[0].status == "created"
    assert finalize(kit.stores.finalizing, [second], RunSettings())[0].status == "exists"
    # the same adjustment on another invoice: its snapshot of March is no longer the latest
    elsewhere = dataclasses.replace(second, billed_through_us=None, parties=dataclasses.replace(
        second.parties, period=Period(from_us(MAY), from_us(MAY + MINUTE))))  # fmt: skip
    assert finalize(kit.stores.finalizing, [elsewhere], RunSettings()) == [Outcome("stale", None)]
