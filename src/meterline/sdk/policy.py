"""From a check outcome to a verdict: pass (with headers) or reject (with a problem).

Pure functions, shared by the ASGI and WSGI middleware.

- any feature denied ``no_entitlement`` / ``no_access``, or an unknown customer -> 403
  ``feature_not_entitled`` (checked first: no access at all outranks an exhausted quota);
- any feature denied ``limit_exhausted``                                     -> 402 ``quota_exhausted``;
- meterline unavailable: ``fail="open"`` passes with ``Meterline-Check: unavailable``,
  ``fail="closed"`` answers 503 ``meterline_unavailable``;
- otherwise pass, with one ``Meterline-Usage-Warning`` header per feature past its soft limit.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any, Literal

import msgspec

from meterline.sdk.checks import CheckResult, CustomerNotFound, FeatureCheck, Outcome, Unavailable
from meterline.sdk.ratelimit import RateState

log = logging.getLogger("meterline.sdk")
PROBLEM = "application/problem+json"
WARNING_HEADER = "Meterline-Usage-Warning"
CHECK_HEADER = "Meterline-Check"
_NOT_ENTITLED = ("no_entitlement", "no_access")
_encode = msgspec.json.Encoder(decimal_format="number").encode

Headers = list[tuple[str, str]]


@dataclass(frozen=True)
class Problem:
    """An RFC 7807 answer the middleware sends instead of calling the app."""

    status: int
    code: str
    title: str
    detail: str
    extra: dict[str, Any] = field(default_factory=dict)
    headers: Headers = field(default_factory=list)

    def body(self, instance: str) -> bytes:
        fixed = {"type": f"urn:meterline:problem:{self.code}", "title": self.title, "status": self.status}
        return _encode({**fixed, "detail": self.detail, "instance": instance, "code": self.code, **self.extra})

    def response_headers(self, body: bytes) -> Headers:
        return [("Content-Type", PROBLEM), ("Content-Length", str(len(body))), *self.headers]


@dataclass(frozen=True)
class Verdict:
    """Pass with ``headers`` added to the app's response, or answer ``problem`` instead."""

    problem: Problem | None = None
    headers: Headers = field(default_factory=list)


def judge(outcome: Outcome | None, fail: Literal["open", "closed"]) -> Verdict:
    """The verdict for a check outcome (None: nothing was checked)."""
    if outcome is None:
        return Verdict()
    if isinstance(outcome, Unavailable):
        return _unavailable(outcome, fail)
    if isinstance(outcome, CustomerNotFound):
        return Verdict(not_entitled(None, "This customer has no entitlements"))
    return _judge_result(outcome)


def _judge_result(result: CheckResult) -> Verdict:
    for f in result.features:
        if not f.allowed and f.denial != "limit_exhausted":
            return Verdict(not_entitled(f.feature, f"This customer has no access to {f.feature!r}"))
    for f in result.features:
        if not f.allowed:
            return Verdict(quota_exhausted(f))
    return Verdict(headers=[(WARNING_HEADER, usage_warning(f)) for f in result.features if f.soft_limit_exceeded])


def _unavailable(outcome: Unavailable, fail: Literal["open", "closed"]) -> Verdict:
    log.warning("meterline entitlement check unavailable (%s); failing %s", outcome.reason, fail)
    if fail == "open":
        return Verdict(headers=[(CHECK_HEADER, "unavailable")])
    detail = "Usage limits cannot be checked right now; try again shortly"
    return Verdict(
        Problem(503, "meterline_unavailable", "Meterline unavailable", detail, headers=[("Retry-After", "1")])
    )


def rate_limited(state: RateState) -> Problem:
    retry = max(1, state.reset_after)
    detail = f"More than {state.limit} requests in {state.window} s; retry in {retry} s"
    return Problem(429, "rate_limited", "Rate limited", detail, headers=[("Retry-After", str(retry)), *state.headers()])


def not_entitled(feature: str | None, detail: str) -> Problem:
    extra = {} if feature is None else {"feature": feature}
    return Problem(403, "feature_not_entitled", "Feature not entitled", detail, extra)


def quota_exhausted(f: FeatureCheck) -> Problem:
    detail = f"The quota for {f.feature!r} is exhausted"
    if f.usage is not None and f.limit is not None:
        detail += f" (usage {number(f.usage)} of {number(f.limit)})"
    extra = {"feature": f.feature, "usage": f.usage, "limit": f.limit, "periodEnd": f.period_end}
    return Problem(402, "quota_exhausted", "Quota exhausted", detail, {k: v for k, v in extra.items() if v is not None})


def usage_warning(f: FeatureCheck) -> str:
    """``api_calls; usage=812; soft-limit=800; limit=1000`` (members whose value is unknown are left out)."""
    parts = [f.feature]
    for name, value in (("usage", f.usage), ("soft-limit", f.soft_limit), ("limit", f.limit)):
        if value is not None:
            parts.append(f"{name}={number(value)}")
    return "; ".join(parts)


def number(value: Decimal) -> str:
    """Plain decimal notation, never an exponent: 1E+3 -> 1000, 12.50 -> 12.50."""
    return f"{value:f}"
