"""The billing stores, together: what ``bootstrap`` hands the billing services."""

from __future__ import annotations

from dataclasses import dataclass

from meterline.ports.billing_credits import CreditStore
from meterline.ports.billing_invoices import InvoiceStore, InvoiceUnitOfWork
from meterline.ports.billing_plans import PlanStore
from meterline.ports.billing_subscriptions import SubscriptionStore
from meterline.ports.billing_usage import BillingDirectory, PeriodUsage
from meterline.ports.corrections import CorrectionLog


@dataclass(frozen=True, slots=True)
class BillingStores:
    plans: PlanStore
    subscriptions: SubscriptionStore
    invoices: InvoiceStore
    finalizing: InvoiceUnitOfWork
    credits: CreditStore
    usage: PeriodUsage
    directory: BillingDirectory
    corrections: CorrectionLog | None = None
    """Where adjustments find the corrections they cite (None: they cite none)."""
