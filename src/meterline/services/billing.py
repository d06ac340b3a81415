"""The billing services, built together over one set of billing stores.

``plans`` and ``subscriptions`` keep the catalog rules, ``runs`` closes due periods into
invoices (and previews them), ``invoices`` and ``credits`` serve what was finalized,
``showback`` prices any range on request and ``scheduler`` runs ``runs`` in the background.
"""

from __future__ import annotations

from dataclasses import dataclass

from meterline.domain.billing.records import RunSettings
from meterline.domain.clock import Clock
from meterline.ports.billing import BillingStores
from meterline.runtime.background import Monitor
from meterline.services.billing_invoices import BillingCredits, BillingInvoices
from meterline.services.billing_plans import BillingPlans
from meterline.services.billing_runs import BillingRuns
from meterline.services.billing_scheduler import BillingScheduler
from meterline.services.billing_showback import Showback
from meterline.services.billing_subscriptions import BillingSubscriptions


@dataclass(frozen=True, slots=True)
class SchedulerSettings:
    enabled: bool = True
    interval_s: float = 60.0


@dataclass(frozen=True, slots=True)
class Billing:
    plans: BillingPlans
    subscriptions: BillingSubscriptions
    runs: BillingRuns
    invoices: BillingInvoices
    credits: BillingCredits
    showback: Showback
    scheduler: BillingScheduler


def build_billing(
    stores: BillingStores,
    clock: Clock,
    settings: RunSettings,
    *,
    scheduler: SchedulerSettings = SchedulerSettings(),
    max_report_windows: int | None = None,
    monitor: Monitor | None = None,
) -> Billing:
    """Every billing service over ``stores``; the scheduler is built, not started."""
    plans = BillingPlans(stores, clock)
    runs = BillingRuns(stores, clock, settings)
    return Billing(
        plans,
        BillingSubscriptions(stores, plans, clock),
        runs,
        BillingInvoices(stores, runs, clock),
        BillingCredits(stores, clock),
        Showback(stores, max_report_windows),
        BillingScheduler(runs, enabled=scheduler.enabled, interval_s=scheduler.interval_s, monitor=monitor),
    )
