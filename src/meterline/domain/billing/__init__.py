"""Billing: price usage into invoice drafts. Pure domain code — no storage, no HTTP.

Owns charge models and pricing (``charges``, ``pricing``), rate cards (``ratecards``), versioned
price plans (``plans``), subscriptions and billing windows (``subscriptions``), invoice drafts
(``lines``, ``invoice``), prepaid credits (``credits``) and adjustments for late usage
(``adjustments``). ``money`` is the one module that rounds. Billing periods come from
``meterline.domain.periods``. Storage tables, API routes and billing runs are built on top of these
types elsewhere; every type here is a msgspec Struct (or a frozen dataclass of them), so
``msgspec.json.encode`` / ``msgspec.convert`` give their JSON form.
"""

from meterline.domain.billing.adjustments import Adjustment, adjust
from meterline.domain.billing.charges import ChargeModel, FlatFee, Graduated, Package, PerUnit, Step, Tier, Volume
from meterline.domain.billing.credits import CreditGrant, CreditResult, apply_credits, credit_invoice
from meterline.domain.billing.invoice import price_period, proration, usage_queries
from meterline.domain.billing.lines import Group, InvoiceDraft, InvoiceLine, Proration, UsageKey, group_key
from meterline.domain.billing.money import Currency, currency, round_line
from meterline.domain.billing.plans import (
    PlanStatus,
    PlanVersion,
    check_plan,
    next_version,
    parse_plan,
    publish,
    revise,
    validate_plan,
)
from meterline.domain.billing.pricing import Priced, price_model, price_units
from meterline.domain.billing.ratecards import RateCard
from meterline.domain.billing.subscriptions import (
    BillingWindow,
    Subscription,
    billing_windows,
    cancel,
    change_plan,
    validate_subscription,
)

__all__ = [
    "Adjustment",
    "BillingWindow",
    "ChargeModel",
    "CreditGrant",
    "CreditResult",
    "Currency",
    "FlatFee",
    "Graduated",
    "Group",
    "InvoiceDraft",
    "InvoiceLine",
    "Package",
    "PerUnit",
    "PlanStatus",
    "PlanVersion",
    "Priced",
    "Proration",
    "RateCard",
    "Step",
    "Subscription",
    "Tier",
    "UsageKey",
    "Volume",
    "adjust",
    "apply_credits",
    "billing_windows",
    "cancel",
    "change_plan",
    "check_plan",
    "credit_invoice",
    "currency",
    "group_key",
    "next_version",
    "parse_plan",
    "price_model",
    "price_period",
    "price_units",
    "proration",
    "publish",
    "revise",
    "round_line",
    "usage_queries",
    "validate_plan",
    "validate_subscription",
]
