"""Entitlement enforcement end to end: the middleware's own usage events feed the meter that its
checks read, on a real meterline server."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from conftest import Server, start_server
from test_ingest_api import assert_problem
from test_middleware_helpers import METER, by_header, create_request_meter, metered, serve_stack

from meterline.sdk import MiddlewareConfig, SenderOptions

KINDS = ["asgi", "wsgi"]
FAST = SenderOptions(max_delay=0.01)


def admin(server: Server, method: str, path: str, body: dict[str, Any]) -> httpx.Response:
    r = httpx.request(method, f"{server.url}{path}", json=body, headers={"Authorization": f"Bearer {server.key}"})
    assert r.is_success, f"{method} {path}: {r.status_code} {r.text}"
    return r


def provision(server: Server, customer: str) -> None:
    """A customer entitled to ``api_calls`` (5 per month, warning from 2) and not to ``sso``.

    Uses the admin API: customers and their entitlements."""
    admin(server, "POST", "/api/v1/customers", {"key": customer, "name": customer})
    entitlement = {
        "type": "metered",
        "featureKey": "api_calls",
        "usagePeriod": {"interval": "MONTH"},
        "issueAfterReset": 5,
        "softLimit": 2,
    }
    admin(server, "POST", f"/api/v1/customers/{customer}/entitlements", entitlement)


@pytest.fixture(scope="module")
def meterline(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    server = start_server(Path(tmp_path_factory.mktemp("meterline")))
    try:
        create_request_meter(server)
        admin(server, "POST", "/api/v1/features", {"key": "api_calls", "name": "API calls", "meterSlug": METER})
        admin(server, "POST", "/api/v1/features", {"key": "sso", "name": "Single sign-on"})
        yield server
    finally:
        server.stop()


def config(server: Server, features: list[tuple[str, int]]) -> MiddlewareConfig[Any]:
    # These tests are about what the checks answer, not how fast: a check waits for the
    # aggregator to reach the events just flushed, which on a busy machine can take longer
    # than the default 0.25 s after which the middleware fails open (tests/test_middleware_http
    # covers that timeout).
    return MiddlewareConfig(
        url=server.url, api_key=server.key, customer=by_header, features=features, sender=FAST, check_timeout=30.0
    )


@pytest.mark.parametrize("kind", KINDS)
def test_soft_limit_warns_and_the_hard_limit_answers_402(kind: str, meterline: Server) -> None:
    customer = f"quota-{kind}"
    provision(meterline, customer)
    answers = []
    with serve_stack(kind, config(meterline, [("api_calls", 1)])) as stack:
        for n in range(6):
            answers.append(stack.get(customer=customer))
            if answers[-1].status_code == 200:
                stack.flush(queued=n + 1)  # committed, so the next check counts it
    assert [r.status_code for r in answers] == [200] * 5 + [402]
    assert "Meterline-Usage-Warning" not in answers[0].headers
    # usage + 1 > limit 5 at usage 5; past the soft limit 2 from usage 3 on (usage 1 and 2 sit on its edge)
    assert answers[3].headers["Meterline-Usage-Warning"] == "api_calls; usage=3; soft-limit=2; limit=5"
    assert answers[4].headers["Meterline-Usage-Warning"] == "api_calls; usage=4; soft-limit=2; limit=5"
    body = assert_problem(answers[5], 402, "quota_exhausted")
    assert (body["feature"], body["usage"], body["limit"]) == ("api_calls", 5, 5)
    assert metered(meterline, customer) == 5  # the refused request was not metered


@pytest.mark.parametrize("kind", KINDS)
def test_no_entitlement_and_unknown_customers_answer_403(kind: str, meterline: Server) -> None:
    customer = f"no-sso-{kind}"
    provision(meterline, customer)
    with serve_stack(kind, config(meterline, [("sso", 0)])) as stack:
        body = assert_problem(stack.get(customer=customer), 403, "feature_not_entitled")
        assert body["feature"] == "sso"
        assert_problem(stack.get(customer=f"nobody-{kind}"), 403, "feature_not_entitled")
        assert stack.middleware.stats.queued == 0
