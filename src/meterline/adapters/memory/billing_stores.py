"""Every memory billing store over one shared state, with handles to feed usage and meters."""

from __future__ import annotations

from dataclasses import dataclass

from meterline.adapters.memory.billing import MemoryBillingState, MemoryCredits, MemoryPlans, MemorySubscriptions
from meterline.adapters.memory.billing_invoices import MemoryInvoices, MemoryInvoiceUnitOfWork
from meterline.adapters.memory.billing_usage import MemoryBillingDirectory, MemoryPeriodUsage
from meterline.adapters.memory.customers import MemoryCustomers
from meterline.ports.billing import BillingStores


@dataclass(frozen=True, slots=True)
class MemoryBilling:
    stores: BillingStores
    usage: MemoryPeriodUsage
    """Give it the events whose usage billing reads."""
    directory: MemoryBillingDirectory
    """Give it the meters billing prices (customers come from ``customers``)."""


def memory_billing(customers: MemoryCustomers) -> MemoryBilling:
    state = MemoryBillingState()
    usage = MemoryPeriodUsage()
    directory = MemoryBillingDirectory(customers)
    stores = BillingStores(
        plans=MemoryPlans(state),
        subscriptions=MemorySubscriptions(state),
        invoices=MemoryInvoices(state),
        finalizing=MemoryInvoiceUnitOfWork(state),
        credits=MemoryCredits(state),
        usage=usage,
        directory=directory,
    )
    return MemoryBilling(stores, usage, directory)
