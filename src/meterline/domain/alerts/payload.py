"""The JSON body an alert is delivered with (OpenMeter's balance-threshold event shape, plus
``kind`` and ``rule``). Built once when the alert fires and stored, so every delivery attempt
and every resend sends the same bytes."""

from __future__ import annotations

from typing import Any

import msgspec

from meterline.domain.alerts.rules import Rule, Threshold
from meterline.domain.clock import rfc3339
from meterline.domain.customers.model import Customer
from meterline.domain.customers.render import customer_body, subject_body
from meterline.domain.entitlements.model import Entitlement, Feature
from meterline.domain.entitlements.render import entitlement_body, feature_body, value_body
from meterline.domain.entitlements.value import Value

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
