"""The served OpenAPI document and the server agree: schemathesis, all checks, against a real server.

A real ``meterline serve`` process is seeded with one of everything an operation can name (a
meter, customer, feature, entitlement, grant, plan, subscription, invoice, credit grant,
notification channel, rule and event, portal token, API key), and schemathesis is pointed at its
``/api/v1/openapi.yaml``. Path parameters are drawn from those ids most of the time (and freely
otherwise, so unknown ids are tried too). Every check runs, with a fixed seed and a fixed number
of examples per operation; any failure fails this test and its report is printed.

Operations that end what the others use (deletes, entitlement overrides, portal token
invalidation) run in a second pass, after every other operation has had the seeded data.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from conftest import Server, start_server

pytestmark = pytest.mark.heavy  # tens of seconds: scheduled first (conftest.py)

SEED = 20260301
EXAMPLES = 12  # per operation in the fuzzing phase; the coverage phase adds its own boundary cases
PHASES = "examples,coverage,fuzzing"
# Operations that delete or replace what other operations are given as ids.
DESTRUCTIVE = (
    "DELETE",
    ["overrideSubjectEntitlement", "overrideCustomerEntitlementV2", "invalidatePortalTokens", "createErasure"],
)


def _selection(kind: str) -> list[str]:
    method, operation_ids = DESTRUCTIVE
    args = [f"--{kind}-method", method]
    for op in operation_ids:
        args += [f"--{kind}-operation-id", op]
    return args


# Operations where a schema-valid request may still be refused with the documented 400, because
# the rule depends on stored state or on other values in ways JSON Schema cannot state. Each
# rule is written in the operation's 400 description; only that status is added to what the
# positive-data check accepts, and only for these operations.
ENTITLEMENT_TYPES = "what each type needs (usagePeriod and a limit when metered, a JSON config when static)"
HISTORY_RANGE = "`from` and `to` on whole minutes, `to` after `from`, `from` not before measureUsageFrom"
DOCUMENTED_400 = {
    "ingestEvents": "each event is judged against the meters, the clock and the namespace's unknown-subject setting",
    "createCustomer": "subjectKeys and usageAttribution.subjectKeys, when both are sent, must agree",
    "replaceCustomer": "subjectKeys and usageAttribution.subjectKeys, when both are sent, must agree",
    "createCustomerEntitlement": ENTITLEMENT_TYPES,
    "createCustomerEntitlementV2": ENTITLEMENT_TYPES + "; issue or issueAfterReset, not both; grants only when metered",
    "overrideCustomerEntitlementV2": ENTITLEMENT_TYPES
    + "; issue or issueAfterReset, not both; grants only when metered",
    "createGrantV2": "the expiry must fall before the year 10000; effectiveAt not before the current usage period",
    "getCustomerEntitlementHistoryV2": HISTORY_RANGE,
    "resetCustomerEntitlementV2": "effectiveAt neither in the future nor before the current usage period",
    "listEventsV2": "filter must be a JSON object of OpenMeter's field filters; a cursor in the other mode's form",
    "createSubjectEntitlement": ENTITLEMENT_TYPES,
    "overrideSubjectEntitlement": ENTITLEMENT_TYPES,
    "createGrant": "the expiry must fall before the year 10000; effectiveAt not before the current usage period",
    "voidGrant": "`at` neither in the future nor before the entitlement's current usage period",
    "createMeter": "valueProperty and groupBy must be singular JSONPaths",
    "updateMeter": "groupBy values must be singular JSONPaths",
    "createErasure": "the reason must not be blank nor contain the subject",
    "listMeterSubjects": "`to` not before `from`",
    "listMeterGroupByValues": "groupByKey must be a groupBy key of the meter; `to` not before `from`",
    "queryMeter": "groupBy must name a dimension of the meter; `to` after `from`",
    "queryMeterPost": "groupBy must name a dimension of the meter; `to` after `from`",
    "queryPortalMeter": "groupBy must name a dimension of the meter; `to` after `from`",
    "topOfMeter": "`by` and filters must name a dimension of the meter; `to` after `from`",
    "getSubjectEntitlementHistory": HISTORY_RANGE,
    "resetSubjectEntitlement": "effectiveAt neither in the future nor before the current usage period",
    "createPlan": "the rate-card rules of docs/billing.md",
    "replacePlanVersion": "the rate-card rules; the body's plan and version are the path's",
    "createSubscription": "`start` on a whole minute",
    "changeSubscriptionPlan": "`at` on a whole minute and strictly inside the subscription",
    "cancelSubscription": "`at` on a whole minute and strictly inside the subscription",
    "createCreditGrant": "amount in whole minor units of the currency; expiresAt after effectiveAt",
    "billingReport": "`to` after `from`, both on whole minutes",
    "createNotificationChannel": "a WEBHOOK channel needs a url, a LOG channel has none; the signing secret's form",
    "updateNotificationChannel": "a WEBHOOK channel needs a url, a LOG channel has none; the signing secret's form",
    "rotateNotificationChannelSecret": "the signing secret's form",
    "createPortalToken": "expiresIn at most the server's portal.max_token_ttl",
    "createApiKey": "namespace, if given, is the caller's own",
    "checkEntitlements": "each quantity at most 38 digits with an exponent within +-30",
    "createNotificationRule": "what each rule type needs (thresholds, anomaly factors, existing channels and features)",
    "updateNotificationRule": "what each rule type needs (thresholds, anomaly factors, existing channels and features)",
    "amendEvent": "the amended event is checked as ingest checks one (the clock, the live meters)",
    "reconcile": "`from` not after `to`, and a bounded number of periods between them",
}
# Ingest takes a batch apart and judges every event on its own: with `Prefer:
# return=representation` an event the schema rejects is answered 200 with that event marked
# rejected in the report (never 204, which would mean it was recorded).
REJECTED_IN_REPORT = ["200", "400", "401", "403", "413", "415"]
# TEMPORARY, until the fixes that own them land: operations whose failures belong to other work.
NOT_YET: dict[str, str] = {}


@dataclass
class Seeded:
    server: Server
    ids: dict[str, list[Any]]


def _ok(r: httpx.Response, *statuses: int) -> Any:
    assert r.status_code in (statuses or (200, 201)), f"{r.request.method} {r.request.url}: {r.status_code} {r.text}"
    return r.json() if r.content else None


def _month_start(months_back: int) -> datetime:
    now = datetime.now(UTC)
    y, m = divmod(now.year * 12 + now.month - 1 - months_back, 12)
    return datetime(y, m + 1, 1, tzinfo=UTC)


def _now_minute() -> str:
    return datetime.now(UTC).replace(second=0, microsecond=0).isoformat()


def seed(server: Server) -> dict[str, list[Any]]:
    """One of everything, through the public API; answers the ids each path parameter can take."""
    c = httpx.Client(base_url=server.url, headers={"Authorization": f"Bearer {server.key}"}, timeout=30)
    spec = {"eventType": "request", "aggregation": "SUM", "valueProperty": "$.tokens", "groupBy": {"model": "$.model"}}
    meter = _ok(c.post("/api/v1/meters", json={"slug": "tokens", **spec}))
    _ok(c.post("/api/v1/meters", json={"slug": "calls", "eventType": "request", "aggregation": "COUNT"}))
    _ok(c.post("/api/v1/customers", json={"key": "acme", "name": "Acme", "subjectKeys": ["acme", "acme-eu"]}))
    start = _month_start(2)
    events = [
        {
            "specversion": "1.0",
            "id": f"e{i}",
            "source": "seed",
            "type": "request",
            "subject": "acme",
            "time": (start + timedelta(days=i)).isoformat(),
            "data": {"tokens": 10 + i, "model": "gpt-4" if i % 2 else "small"},
        }
        for i in range(40)
    ]
    _ok(c.post("/api/v1/events", json=events), 204)
    feature = _ok(c.post("/api/v1/features", json={"key": "tokens", "name": "Tokens", "meterSlug": "tokens"}))
    _ok(c.post("/api/v1/features", json={"key": "sso", "name": "SSO"}))
    ent_body = {
        "type": "metered",
        "featureKey": "tokens",
        "issueAfterReset": 1000,
        "usagePeriod": {"interval": "MONTH"},
    }
    ent = _ok(c.post("/api/v1/customers/acme/entitlements", json=ent_body))
    grant = _ok(
        c.post(
            "/api/v1/subjects/acme/entitlements/tokens/grants",
            # not before the current usage period, which starts at the entitlement's creation
            json={"amount": 5, "effectiveAt": _now_minute(), "expiration": {"duration": "YEAR", "count": 1}},
        )
    )
    plan = {
        "plan": "pro",
        "name": "Pro",
        "currency": "USD",
        "cards": [
            {"key": "platform", "name": "Platform fee", "model": {"model": "flat", "amount": "49"}},
            {"key": "tokens", "name": "Tokens", "meter": "tokens", "model": {"model": "per_unit", "unitPrice": "0.01"}},
        ],
    }
    _ok(c.post("/api/v1/billing/plans", json=plan))
    _ok(c.post("/api/v1/billing/plans/pro/versions/1/publish"))
    _ok(c.post("/api/v1/billing/plans", json={**plan, "name": "Pro (draft)"}))
    sub = _ok(
        c.post("/api/v1/billing/subscriptions", json={"customer": "acme", "plan": "pro", "start": start.isoformat()})
    )
    _ok(c.post("/api/v1/billing/runs"), 200)
    invoices = [i["number"] for i in _ok(c.get("/api/v1/invoices"))["items"]]
    assert invoices, "the seeded subscription produced no invoice"
    credit = {"key": "promo", "currency": "USD", "amount": "20"}
    _ok(c.post("/api/v1/customers/acme/credits", json=credit))
    channel = _ok(
        c.post(
            "/api/v1/notification/channels",
            json={"type": "WEBHOOK", "name": "ops", "url": f"http://127.0.0.1:{server.port}/nowhere"},
        )
    )
    rule_body = {"type": "entitlements.balance.threshold", "name": "usage", "channels": [channel["id"]]}
    rule = _ok(
        c.post("/api/v1/notification/rules", json={**rule_body, "thresholds": [{"value": 50, "type": "PERCENT"}]})
    )
    event = _ok(c.post(f"/api/v1/notification/rules/{rule['id']}/test"))
    portal = _ok(c.post("/api/v1/portal/tokens", json={"subject": "acme", "allowedMeterSlugs": ["tokens"]}))
    key = _ok(c.post("/api/v1/keys", json={"name": "spare", "scopes": ["read"]}))
    _ok(c.post("/api/v1/events", json=[{"id": "bad"}]), 400)  # a dead letter
    c.close()
    return {
        "meter": ["tokens", meter["id"], "calls"],
        "dimension": ["model"],
        "customer": ["acme"],
        "subject": ["acme", "acme-eu"],
        "feature": ["tokens", feature["id"], "sso"],
        "entitlement": [ent["id"], "tokens"],
        "grant": [grant["id"]],
        "plan": ["pro"],
        "version": [1, 2],
        "subscription": [sub["id"]],
        "invoice": invoices,
        "credit": ["promo"],
        "channel": [channel["id"]],
        "rule": [rule["id"]],
        "event": [event["id"]],
        "apikey": [key["id"]],
        "portal": [portal["token"]],
    }


@pytest.fixture(scope="module")
def seeded(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Seeded]:
    # the seeded webhook channel points at this machine
    env = {"METERLINE_ALERTS__ALLOW_PRIVATE_WEBHOOK_TARGETS": "true"}
    server = start_server(tmp_path_factory.mktemp("schemathesis") / "data", env=env)
    try:
        yield Seeded(server, seed(server))
    finally:
        server.stop()


def _toml(value: Any) -> str:
    return json.dumps(value)  # JSON strings, numbers and arrays are valid TOML values


def config_text(ids: dict[str, list[Any]], portal_token: str) -> str:
    """The schemathesis configuration: every path parameter bound to the seeded ids."""
    by_name = {
        "meter": "meter",
        "customer": "customer",
        "subject": "subject",
        "feature": "feature",
        "entitlement": "entitlement",
        "grant": "grant",
        "plan": "plan",
        "version": "version",
        "id": "subscription",
        "number": "invoice",
        "groupByKey": "dimension",
        "channel": "channel",
        "rule": "rule",
        "event": "event",
    }
    lines = [
        "[generation]",
        'database = "none"',
        "[cache]",
        "enabled = false",
        "[dictionaries]",
        *(f"{name} = {{ values = {_toml(values)} }}" for name, values in ids.items() if name != "portal"),
        "[parameters]",
        *(f'"path.{p}" = {{ dictionary = "{d}", probability = 0.9 }}' for p, d in by_name.items()),
        # `key` names an API key under /keys and a credit grant under /credits
        "[[operations]]",
        'include-path = "/api/v1/keys/{key}"',
        'parameters = { "path.key" = { dictionary = "apikey", probability = 0.9 } }',
        "[[operations]]",
        'include-path = "/api/v1/customers/{customer}/credits/{key}"',
        'parameters = { "path.key" = { dictionary = "credit", probability = 0.9 } }',
        # the customer portal takes its own token instead of an API key
        "[[operations]]",
        'include-path = "/api/v1/portal/meters/{meter}/query"',
        f"headers = {{ Authorization = {_toml('Bearer ' + portal_token)} }}",
    ]
    positive = ["2xx", "3xx", "400", "401", "403", "404", "409", "429"]
    for operation_id in DOCUMENTED_400:
        lines += [
            "[[operations]]",
            f"include-operation-id = {_toml(operation_id)}",
            f"checks.positive_data_acceptance.expected-statuses = {_toml(positive)}",
        ]
    for operation_id in ("ingestEvents", "backfillEvents"):  # both answer with the per-event report
        lines += [
            "[[operations]]",
            f"include-operation-id = {_toml(operation_id)}",
            f"checks.negative_data_rejection.expected-statuses = {_toml(REJECTED_IN_REPORT)}",
        ]
    for operation_id in NOT_YET:
        lines += ["[[operations]]", f"include-operation-id = {_toml(operation_id)}", "enabled = false"]
    return "\n".join(lines) + "\n"


def run_schemathesis(seeded: Seeded, workdir: Path, select: list[str]) -> subprocess.CompletedProcess[str]:
    server = seeded.server
    config = workdir / "schemathesis.toml"
    config.write_text(config_text(seeded.ids, seeded.ids["portal"][0]))
    args = [
        sys.executable,
        "-m",
        "schemathesis.cli",
        "--config-file",
        str(config),
        "run",
        f"{server.url}/api/v1/openapi.yaml",
        "--header",
        f"Authorization: Bearer {server.key}",
        "--checks",
        "all",
        "--phases",
        PHASES,
        "--seed",
        str(SEED),
        "--max-examples",
        str(EXAMPLES),
        "--workers",
        "1",
        # a slow answer is not a disagreement with the document (latency is measured in benchmarks/),
        # and this suite shares two cores with the rest of the tests
        "--request-timeout",
        "60",
        "--no-color",
        "--output-truncate",
        "false",
        *select,
    ]
    # bounded, but far above a run on a loaded machine (about 7 minutes with the rest of the suite beside it)
    return subprocess.run(args, cwd=workdir, capture_output=True, text=True, timeout=2700, check=False)


@pytest.mark.parametrize(
    "select",
    [
        pytest.param(_selection("exclude"), id="everything-else"),
        pytest.param(_selection("include"), id="deletes-and-replacements"),
    ],
)
def test_schemathesis_finds_no_failure(seeded: Seeded, tmp_path: Path, select: list[str]) -> None:
    result = run_schemathesis(seeded, tmp_path, select)
    report = result.stdout + result.stderr
    if result.returncode != 0:
        pytest.fail(f"schemathesis exited with {result.returncode}:\n{report}", pytrace=False)
    assert " passed" in report or "No issues found" in report, report
