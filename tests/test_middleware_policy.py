"""The middleware's pure parts: check answers to verdicts, problem bodies, header formats, config."""

from __future__ import annotations

import importlib.util
import threading
from decimal import Decimal
from typing import Any

import httpx
import msgspec
import pytest

from meterline.domain.clock import FixedClock
from meterline.domain.errors import ConfigError
from meterline.sdk import MiddlewareConfig, RateLimiter, SenderOptions
from meterline.sdk.checks import (
    CheckCache,
    CheckResult,
    CustomerNotFound,
    FeatureCheck,
    Unavailable,
    read_response,
    request_body,
)
from meterline.sdk.policy import judge

ANSWER = b"""{"customer": "acme", "allowed": false, "features": [
  {"feature": "api_calls", "type": "metered", "allowed": true, "hasAccess": true, "denial": null,
   "usage": 812, "limit": 1000, "balance": 188, "overage": 0, "softLimit": 800, "softLimitExceeded": true,
   "periodStart": "2026-03-01T00:00:00Z", "periodEnd": "2026-04-01T00:00:00Z"},
  {"feature": "gpu_hours", "type": "metered", "allowed": false, "hasAccess": true, "denial": "limit_exhausted",
   "usage": 10.25, "limit": 10.25, "balance": 0, "overage": 0, "softLimit": null, "softLimitExceeded": true,
   "periodStart": "2026-03-01T00:00:00Z", "periodEnd": "2026-04-01T00:00:00Z"},
  {"feature": "sso", "type": "boolean", "allowed": false, "hasAccess": false, "denial": "no_entitlement"}]}"""


def answer(*features: str) -> CheckResult:
    result = read_response("acme", httpx.Response(200, content=ANSWER))
    assert isinstance(result, CheckResult)
    return CheckResult(result.customer, result.allowed, [f for f in result.features if f.feature in features])


def test_check_answers_decode_to_exact_decimals() -> None:
    result = answer("api_calls", "gpu_hours")
    assert result.features[0].usage == Decimal(812) and result.features[0].soft_limit == Decimal(800)
    assert str(result.features[1].usage) == "10.25"
    assert request_body("acme", [("api_calls", 1), ("gpu", Decimal("0.5"))]) == (
        b'{"customer":"acme","features":[{"feature":"api_calls","quantity":1},{"feature":"gpu","quantity":0.5}]}'
    )


def test_no_access_outranks_an_exhausted_quota() -> None:
    problem = judge(answer("api_calls", "gpu_hours", "sso"), "open").problem
    assert problem is not None and (problem.status, problem.code, problem.extra) == (
        403,
        "feature_not_entitled",
        {"feature": "sso"},
    )


def test_exhausted_hard_limit_is_402_problem_json() -> None:
    problem = judge(answer("api_calls", "gpu_hours"), "open").problem
    assert problem is not None
    body = msgspec.json.decode(problem.body("/items/7"))
    assert body == {
        "type": "urn:meterline:problem:quota_exhausted",
        "title": "Quota exhausted",
        "status": 402,
        "detail": "The quota for 'gpu_hours' is exhausted (usage 10.25 of 10.25)",
        "instance": "/items/7",
        "code": "quota_exhausted",
        "feature": "gpu_hours",
        "usage": 10.25,
        "limit": 10.25,
        "periodEnd": "2026-04-01T00:00:00Z",
    }
    assert problem.response_headers(b"{}")[0] == ("Content-Type", "application/problem+json")


def test_soft_limit_passes_with_a_warning_header() -> None:
    verdict = judge(answer("api_calls"), "closed")
    assert verdict.problem is None
    assert verdict.headers == [("Meterline-Usage-Warning", "api_calls; usage=812; soft-limit=800; limit=1000")]


def test_unknown_customer_is_not_entitled_and_unavailable_follows_the_policy() -> None:
    problem = judge(CustomerNotFound("ghost"), "open").problem
    assert problem is not None and (problem.status, problem.code) == (403, "feature_not_entitled")
    assert judge(Unavailable("ConnectError"), "open").headers == [("Meterline-Check", "unavailable")]
    closed = judge(Unavailable("ConnectError"), "closed").problem
    assert closed is not None and (closed.status, closed.code) == (503, "meterline_unavailable")
    assert judge(None, "closed").problem is None


@pytest.mark.parametrize(
    ("status", "body", "kind"),
    [
        (404, b'{"code": "customer_not_found"}', CustomerNotFound),
        (404, b'{"code": "not_found"}', Unavailable),  # no check endpoint: an old server
        (500, b"", Unavailable),
        (200, b"<html>", Unavailable),
    ],
)
def test_check_answers_become_outcomes(status: int, body: bytes, kind: type[Any]) -> None:
    assert isinstance(read_response("acme", httpx.Response(status, content=body)), kind)


def test_check_cache_keeps_results_for_the_ttl_only() -> None:
    clock = FixedClock(0)
    cache = CheckCache(2.0, clock)
    result = answer("api_calls")
    cache.put("acme", [("api_calls", 1)], result)
    cache.put("acme", [("sso", 0)], Unavailable("timeout"))  # never kept
    assert cache.get("acme", [("api_calls", 1)]) is result and cache.get("acme", [("sso", 0)]) is None
    clock.advance(2.0)
    assert cache.get("acme", [("api_calls", 1)]) is None
    off = CheckCache(0, clock)
    off.put("acme", [], result)
    assert off.get("acme", []) is None


def metered(usage: str, limit: str, allowed: bool = True) -> CheckResult:
    feature = FeatureCheck("api_calls", allowed, "metered", True, None, Decimal(usage), Decimal(limit))
    return CheckResult("acme", allowed, [feature])


def test_cached_answers_never_hide_this_process_s_own_use() -> None:
    cache = CheckCache(60.0, FixedClock(0))
    ask = [("api_calls", 1)]
    cache.put("acme", ask, metered("0", "3"))  # the asking request takes 1 of the 3
    assert cache.get("acme", ask) is not None and cache.get("acme", ask) is not None
    assert cache.get("acme", ask) is None  # all 3 used: the next one asks the server
    cache.put("acme", [("api_calls", 2)], metered("1", "3"))
    assert cache.get("acme", [("api_calls", 2)]) is None  # 1 + 2 + 2 > 3
    cache.put("acme", [("api_calls", Decimal("0.5"))], metered("2", "3"))
    assert cache.get("acme", [("api_calls", Decimal("0.5"))]) is not None
    assert cache.get("acme", [("api_calls", Decimal("0.5"))]) is None


def test_quantity_zero_needs_room_left_like_the_server() -> None:
    cache = CheckCache(60.0, FixedClock(0))
    cache.put("acme", [("api_calls", 0)], metered("2", "3"))
    assert cache.get("acme", [("api_calls", 0)]) is not None  # 2 < 3, and asking 0 uses nothing
    cache.put("acme", [("api_calls", 1), ("api_calls", 0)], metered("2", "3"))
    assert cache.get("acme", [("api_calls", 1), ("api_calls", 0)]) is None  # after the asking one: 3 of 3


def test_limits_the_server_let_usage_pass_are_not_counted() -> None:
    cache = CheckCache(60.0, FixedClock(0))
    soft = metered("5", "3")  # allowed past its limit: overage allowed, or unlimited
    cache.put("acme", [("api_calls", 1)], soft)
    assert all(cache.get("acme", [("api_calls", 1)]) is soft for _ in range(100))
    denied = metered("3", "3", allowed=False)
    cache.put("acme", [("api_calls", 1)], denied)
    assert cache.get("acme", [("api_calls", 1)]) is denied  # a denial stays for the TTL


def test_concurrent_requests_share_the_room_exactly() -> None:
    cache = CheckCache(60.0, FixedClock(0))
    cache.put("acme", [("api_calls", 1)], metered("0", "501"))
    hits: list[int] = []

    def take() -> None:
        hits.append(sum(cache.get("acme", [("api_calls", 1)]) is not None for _ in range(200)))

    threads = [threading.Thread(target=take) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sum(hits) == 500


def test_config_lists_every_problem() -> None:
    with pytest.raises(ConfigError) as err:
        MiddlewareConfig(
            url="ftp://x",
            api_key="k",
            customer=lambda r: None,
            fail="sideways",  # type: ignore[arg-type]
            check_timeout=0,
            sender=SenderOptions(max_queue=0),
        )
    assert len(err.value.extra["problems"]) == 4


def test_rate_limit_settings_are_checked() -> None:
    with pytest.raises(ConfigError, match="is not a limit"):
        RateLimiter("lots")
    if importlib.util.find_spec("redis") is None:
        with pytest.raises(ConfigError, match=r"pip install 'limits\[redis\]'"):
            RateLimiter("2/second", "redis://127.0.0.1:1")


def test_public_exports_are_exactly_these() -> None:
    import meterline.sdk

    assert sorted(meterline.sdk.__all__) == [
        "CHECK_HEADER",
        "CheckResult",
        "EventSender",
        "Feature",
        "FeatureCheck",
        "MeterlineASGIMiddleware",
        "MeterlineWSGIMiddleware",
        "MiddlewareConfig",
        "RateLimiter",
        "SenderOptions",
        "SenderStats",
        "WARNING_HEADER",
    ]
    assert all(hasattr(meterline.sdk, name) for name in meterline.sdk.__all__)
