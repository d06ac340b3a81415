"""The JSON body an alert is delivered with (OpenMeter's balance-threshold event shape, plus
``kind`` and ``rule``). Built once when the alert fires and stored, so every delivery attempt
and every resend sends the same bytes."""

from __future__ import annotations

from datetime import UTC
from decimal import Decimal
from typing import Any

import msgspec
from dateutil.relativedelta import relativedelta

from meterline.domain.alerts.rules import Rule, Threshold
from meterline.domain.clock import from_us, rfc3339
from meterline.domain.customers.model import Customer
from meterline.domain.customers.render import customer_body, subject_body
from meterline.domain.entitlements.model import Entitlement, EntitlementInput, Feature, FeatureInput, UsagePeriodInput
from meterline.domain.entitlements.render import entitlement_body, feature_body, value_body
from meterline.domain.entitlements.value import Value
from meterline.domain.periods import Period

_encode = msgspec.json.Encoder(decimal_format="number").encode

EVENT_TYPE = {
    "entitlements.balance.threshold": "entitlements.balance.threshold",
    "entitlements.usage.projected": "entitlements.usage.projected",
    "entitlements.usage.anomaly": "entitlements.usage.anomaly",
}


def alert_payload(
    event_id: str,
    kind: str,
    rule: Rule,
    ent: Entitlement,
    feature: Feature,
    customer: Customer,
    value: Value,
    threshold: Threshold | None,
    now_us: int,
    **extra: Any,
) -> bytes:
    """OpenMeter's ``NotificationEventBalanceThresholdPayload`` (entitlement, feature, subject,
    value, threshold, customer) plus meterline's ``kind`` and ``rule``."""
    data: dict[str, Any] = {
        "kind": kind,
        "rule": {"id": rule.id, "name": rule.spec.name, "type": rule.spec.type},
        "entitlement": entitlement_body(ent, value.period),
        "feature": feature_body(feature),
        "subject": subject_body(customer),
        "customer": customer_body(customer),
        "value": value_body(value),
        "threshold": None if threshold is None else {"type": threshold.type, "value": threshold.value},
        **extra,
    }
    return _encode({"id": event_id, "type": EVENT_TYPE[rule.spec.type], "timestamp": rfc3339(now_us), "data": data})


_EXAMPLE_IDS = ("01JEXAMP1EFEATVRE000000000", "01JEXAMP1ECVST0MER00000000", "01JEXAMP1EENT1T1EMENT00000")
"""Fixed ULIDs of the feature, customer and entitlement a test event carries."""


def test_payload(event_id: str, rule: Rule, now_us: int) -> bytes:
    """A rule's test event: OpenMeter's payload of the rule's type with example data (an
    entitlement of 100 a month with 50 used, of an example feature and customer, at the rule's
    first threshold), as OpenMeter's test sends one, so a receiver built for real events
    parses it; ``kind`` is ``test``."""
    feature_id, customer_id, ent_id = _EXAMPLE_IDS
    start = from_us(now_us).astimezone(UTC).replace(day=1, hour=0, minute=0, second=0, microsecond=0)
    period = Period(start, start + relativedelta(months=1))
    feature = Feature(
        feature_id, rule.namespace, FeatureInput("example_feature", "Example feature", None, "example"), now_us
    )
    customer = Customer(
        customer_id, rule.namespace, "example-customer", "Example customer", (), "UTC", None, now_us, now_us
    )
    spec = EntitlementInput(
        "metered", "example_feature", usage_period=UsagePeriodInput("MONTH", start), issue_after_reset=Decimal(100)
    )
    start_us = period.start_us
    ent = Entitlement(
        ent_id, rule.namespace, customer_id, customer.key, feature_id, feature.key, spec, start_us, start_us, now_us
    )
    value = Value(True, Decimal(50), Decimal(100), Decimal(50), Decimal(0), period=period)
    threshold = rule.spec.thresholds[0] if rule.spec.thresholds else Threshold(Decimal(50), "PERCENT")
    return alert_payload(event_id, "test", rule, ent, feature, customer, value, threshold, now_us)
