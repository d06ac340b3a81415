"""The JSON body an alert is delivered with (OpenMeter's balance-threshold event shape, plus
``kind`` and ``rule``). Built once when the alert fires and stored, so every delivery attempt
and every resend sends the same bytes."""

from __future__ import annotations

from typing import Any

import msgspec

from meterline.alerts.rules import Rule, Threshold
from meterline.clock import rfc3339
from meterline.entitlements.model import Entitlement
from meterline.entitlements.value import Value

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
    value: Value,
    threshold: Threshold | None,
    now_us: int,
    **extra: Any,
) -> bytes:
    period = value.period
    data: dict[str, Any] = {
        "kind": kind,
        "rule": {"id": rule.id, "name": rule.spec.name, "type": rule.spec.type},
        "subject": {"key": ent.customer_key},
        "customer": {"id": ent.customer_id, "key": ent.customer_key},
        "feature": {"id": ent.feature_id, "key": ent.feature_key},
        "entitlement": {
            "id": ent.id,
            "type": ent.spec.type,
            "currentUsagePeriod": None
            if period is None
            else {"from": rfc3339(period.start_us), "to": rfc3339(period.end_us)},
        },
        "value": {
            "hasAccess": value.has_access,
            "usage": value.usage,
            "balance": value.balance,
            "overage": value.overage,
            "totalAvailableGrantAmount": value.allowance,
            "projectedUsage": value.projected_usage,
        },
        "threshold": None if threshold is None else {"type": threshold.type, "value": threshold.value},
        **extra,
    }
    return _encode({"id": event_id, "type": EVENT_TYPE[rule.spec.type], "timestamp": rfc3339(now_us), "data": data})
