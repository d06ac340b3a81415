"""The wire shape (OpenMeter's field names) of features, entitlements and values.

Shared by the API and by alert payloads, which carry the same objects.
"""

from __future__ import annotations

from typing import Any

from meterline.domain.clock import rfc3339
from meterline.domain.entitlements.model import Entitlement, Feature
from meterline.domain.entitlements.value import Value
from meterline.domain.periods import Period, parse_interval

_ISO = {"DAY": "P1D", "WEEK": "P1W", "MONTH": "P1M", "YEAR": "P1Y"}


def period_body(p: Period | None) -> dict[str, str] | None:
    return None if p is None else {"from": rfc3339(p.start_us), "to": rfc3339(p.end_us)}


def interval_iso(interval: str) -> str:
    """An interval (normal form: ``DAY``, ``WEEK``, ``MONTH``, ``YEAR`` or ISO 8601) as ISO 8601,
    OpenMeter's ``intervalISO``."""
    return _ISO.get(interval, interval)


def _time(us: int | None) -> str | None:
    return None if us is None else rfc3339(us)


def present(body: dict[str, Any], **optional: Any) -> dict[str, Any]:
    """``body`` with the ``optional`` members that are set: OpenMeter leaves a member out rather
    than answering null where its schema has no null (clients that check types trip on null)."""
    return body | {k: v for k, v in optional.items() if v is not None}


def feature_body(f: Feature) -> dict[str, Any]:
    s = f.spec
    body = {
        "id": f.id,
        "key": s.key,
        "name": s.name,
        "createdAt": rfc3339(f.created_us),
        "updatedAt": rfc3339(f.created_us),
    }
    return present(
        body,
        metadata=s.metadata,
        meterSlug=s.meter_slug,
        meterGroupByFilters=s.meter_group_by_filters,
        archivedAt=_time(f.archived_us),
    )


def entitlement_body(e: Entitlement, current: Period | None) -> dict[str, Any]:
    """``current`` is the usage period in force now (metered entitlements only)."""
    s = e.spec
    body: dict[str, Any] = {
        "type": s.type,
        "id": e.id,
        "featureKey": e.feature_key,
        "featureId": e.feature_id,
        "subjectKey": e.customer_key,
        "customerKey": e.customer_key,
        "customerId": e.customer_id,
        "createdAt": rfc3339(e.created_us),
        "updatedAt": rfc3339(e.created_us),
        "activeFrom": rfc3339(e.created_us),
    }
    body = present(body, metadata=s.metadata, deletedAt=_time(e.deleted_us))
    if s.type == "static":
        body["config"] = s.config
    if s.type != "metered":
        return body
    interval = parse_interval(s.usage_period.interval) if s.usage_period else "MONTH"
    return body | {
        "isSoftLimit": s.is_soft_limit,
        "isUnlimited": s.is_unlimited,
        "issueAfterReset": s.issue_after_reset,
        "issueAfterResetPriority": s.issue_after_reset_priority,
        "preserveOverageAtReset": s.preserve_overage_at_reset,
        "softLimit": s.soft_limit,
        "lastReset": rfc3339(e.last_reset_us),
        "measureUsageFrom": rfc3339(e.last_reset_us if e.measured_from_us is None else e.measured_from_us),
        "usagePeriod": {
            "interval": interval,
            "anchor": rfc3339(e.anchor_us),
            "intervalISO": interval_iso(interval),
        },
        "currentUsagePeriod": period_body(current),
    }


def value_body(v: Value) -> dict[str, Any]:
    body: dict[str, Any] = {"hasAccess": v.has_access}
    if v.config is not None:
        body["config"] = v.config
    if v.usage is None:
        return body
    return body | {
        "usage": v.usage,
        "balance": v.balance,
        "overage": v.overage,
        "totalAvailableGrantAmount": v.allowance,
        "softLimitExceeded": v.soft_limit_exceeded,
        "projectedUsage": v.projected_usage,
        "period": period_body(v.period),
    }
