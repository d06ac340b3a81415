"""The catalog commands (customers, settings, quarantine, features, entitlements, alerts, portal)
driven through the real ``meterline`` CLI against a real server process."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest
from click.testing import CliRunner, Result
from conftest import Server, start_server

from meterline.cli.main import cli

Run = Callable[..., Result]


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    s = start_server(tmp_path_factory.mktemp("catalog") / "data")
    h = {"Authorization": f"Bearer {s.key}"}
    meter = {"slug": "tokens", "eventType": "prompt", "aggregation": "SUM", "valueProperty": "$.tokens"}
    assert httpx.post(f"{s.url}/api/v1/meters", json=meter, headers=h).status_code == 201
    yield s
    s.stop()


@pytest.fixture
def run(live: Server) -> Run:
    base = {"METERLINE_URL": live.url, "METERLINE_API_KEY": live.key}

    def invoke(*args: str, stdin: str | None = None, code: int = 0, env: dict[str, str] | None = None) -> Result:
        result = CliRunner().invoke(cli, list(args), env=base | (env or {}), input=stdin)
        assert result.exit_code == code, f"{args}: exit {result.exit_code}\n{result.stdout}\n{result.stderr}"
        assert "Traceback" not in result.stderr
        return result

    return invoke


def events(subject: str, *tokens: int) -> str:
    return "".join(
        json.dumps(
            {"specversion": "1.0", "id": f"{subject}-{time.time_ns()}-{i}", "source": "t", "type": "prompt"}
            | {"subject": subject, "data": {"tokens": n}}
        )
        + "\n"
        for i, n in enumerate(tokens)
    )


def as_json(result: Result) -> Any:
    return json.loads(result.stdout)


def wait_for(predicate: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.1)


def test_customers_crud(run: Run) -> None:
    r = run("customers", "create", "acme", "--name", "Acme", "--subject", "acme", "--subject", "acme-eu")
    assert "created customer acme" in r.stdout and "acme, acme-eu" in r.stdout
    run("customers", "create", "globex", "--timezone", "Europe/Berlin", "--metadata", "plan=pro")
    listed = run("customers", "list").stdout
    assert "acme-eu" in listed and "Europe/Berlin" in listed and "plan=pro" in listed
    run("customers", "update", "globex", "--name", "Globex", "--metadata", "tier=gold", "--remove-metadata", "plan")
    shown = as_json(run("customers", "show", "globex", "--json"))
    assert shown["name"] == "Globex" and shown["metadata"] == {"tier": "gold"}
    assert shown["timezone"] == "Europe/Berlin" and shown["subjectKeys"] == ["globex"]
    assert "Globex" in run("customers", "show", "globex").stdout
    acme = as_json(run("customers", "show", "acme", "--json"))
    assert "metadata" not in acme  # none set: absent, as OpenMeter answers it
    assert "acme-eu" in run("customers", "show", "acme").stdout
    run("customers", "delete", "globex")
    r = run("customers", "show", "globex", code=2)
    assert "404" in r.stderr and "globex" in r.stderr

    # deleted customers are listed only when asked, with when they were deleted
    assert "globex" not in run("customers", "list").stdout
    listed_json = as_json(run("customers", "list", "--include-deleted", "--json"))
    gone = [c for c in listed_json if c["key"] == "globex"]
    assert len(gone) == 1 and gone[0]["deletedAt"] >= gone[0]["createdAt"]
    assert [c.get("deletedAt") for c in listed_json if c["key"] == "acme"] == [None]
    table = run("customers", "list", "--include-deleted", env={"COLUMNS": "400"}).stdout
    assert "deleted" in table and gone[0]["deletedAt"] in table and "acme-eu" in table
    shown_deleted = run("customers", "show", gone[0]["id"], env={"COLUMNS": "400"}).stdout
    assert gone[0]["deletedAt"] in shown_deleted
    r = run("customers", "create", "bad key!", code=2)  # validated before anything is sent
    assert "key 'bad key!' must be" in r.stderr
    r = run("customers", "create", "x1", "--timezone", "Mars/Olympus", code=2)
    assert "not an IANA time zone" in r.stderr
    r = run("customers", "create", "x2", "--metadata", "novalue", code=2)
    assert "KEY=VALUE" in r.stderr
    r = run("customers", "update", "acme", code=2)
    assert "nothing to change" in r.stderr


def test_entitlements_usage_check_and_alerts(run: Run) -> None:
    run("customers", "create", "initech", "--subject", "initech", "--subject", "initech-eu")
    assert (
        "created feature tokens" in run("features", "create", "tokens", "--name", "Tokens", "--meter", "tokens").stdout
    )
    run("features", "create", "sso", "--name", "SSO")
    assert "tokens" in run("features", "list", "--meter", "tokens").stdout
    r = run("features", "create", "Bad-Key", "--name", "x", code=2)
    assert "lower-case letters" in r.stderr
    r = run("entitlements", "grant", "initech", "tokens", "--type", "metered", "--limit", "100", "--soft-limit", "80")
    assert "metered, 100 per MONTH, overage denied" in r.stdout
    run("entitlements", "grant", "initech", "sso", "--type", "boolean")
    run("features", "create", "tokens_biweekly", "--name", "Tokens (2w)", "--meter", "tokens")
    anchor = ("--anchor", "2026-01-05T00:00:00+01:00", "--period", "P14D", "--allow-overage")
    r = run("entitlements", "grant", "initech", "tokens_biweekly", "--type", "metered", "--limit", "5", *anchor)
    assert "5 per P2W, overage allowed" in r.stdout
    listed = run("entitlements", "list", "initech").stdout
    assert "tokens" in listed and "100" in listed and "sso" in listed and "boolean" in listed

    channel = as_json(run("alerts", "channels", "create", "--name", "ops-log", "--log", "--json"))["id"]
    assert "server log" in run("alerts", "channels", "list").stdout
    r = run(
        "alerts",
        "rules",
        "create",
        "--name",
        "eighty",
        "--channel",
        channel,
        "--threshold",
        "80%",
        "--feature",
        "tokens",
        "--json",
    )
    rule = as_json(r)["id"]
    assert "usage reaches 80%" in run("alerts", "rules", "list").stdout
    assert "no alerts have fired" in run("alerts", "deliveries", "--rule", rule).stderr

    r = run("ingest", "-", stdin=events("initech-eu", 50, 40))
    assert "accepted 2" in r.stdout
    value = run("entitlements", "value", "initech", "tokens").stdout
    assert "usage" in value and " 90" in value and " 100" in value
    assert as_json(run("entitlements", "value", "initech", "tokens", "--json"))["balance"] == 10
    run("entitlements", "check", "initech", "tokens=10", "sso")
    r = run("entitlements", "check", "initech", "tokens=11", code=1)
    assert "denied: tokens" in r.stderr and "limit" in r.stdout
    run("ingest", "-", stdin=events("initech", 15))
    r = run("entitlements", "check", "initech", "tokens", "--json", code=1)
    assert as_json(r)["allowed"] is False and as_json(r)["features"][0]["usage"] == 105

    def delivered() -> bool:
        return "SUCCESS" in run("alerts", "deliveries", "--customer", "initech").stdout

    wait_for(delivered)
    table = run("alerts", "deliveries", "--rule", rule).stdout
    assert "eighty" in table and "initech used 90% of tokens" in table and channel in table
    fired = as_json(run("alerts", "deliveries", "--json"))
    assert [e["rule"]["id"] for e in fired] == [rule]  # fired once, though usage went on past 80%
    assert "queued" in run("alerts", "resend", fired[0]["id"], "--channel", channel).stdout
    assert "fired test alert" in run("alerts", "rules", "test", rule).stdout
    wait_for(lambda: "test alert" in run("alerts", "deliveries").stdout)

    run("entitlements", "revoke", "initech", "sso")
    r = run("entitlements", "check", "initech", "sso", code=1)
    assert "denied: sso" in r.stderr
    run("alerts", "rules", "delete", rule)
    run("alerts", "channels", "delete", channel)
    run("features", "delete", "sso")
    assert "sso" not in run("features", "list").stdout


def test_bad_input_is_a_clear_error(run: Run) -> None:
    r = run("alerts", "rules", "create", "--name", "x", "--channel", "c", "--threshold", "abc", code=2)
    assert "'abc' is not a threshold" in r.stderr
    r = run("alerts", "rules", "create", "--name", "x", "--channel", "c", "--threshold", "5", "--projected", code=2)
    assert "one kind of rule" in r.stderr
    r = run("alerts", "rules", "create", "--name", "x", "--channel", "nope", "--spike", "3", code=2)
    assert "unknown channels: nope" in r.stderr and "400" in r.stderr
    r = run("alerts", "rules", "create", "--name", "x", "--channel", "c", "--spike", "0.5", code=2)
    assert "spikeFactor must be greater than 1" in r.stderr
    r = run("alerts", "channels", "create", "--name", "x", code=2)
    assert "--webhook" in r.stderr and "--log" in r.stderr
    r = run("alerts", "channels", "create", "--name", "x", "--webhook", "ftp://example.com", code=2)
    assert "invalid channel" in r.stderr
    r = run("entitlements", "value", "nobody", "tokens", code=2)
    assert "no customer 'nobody'" in r.stderr and "404" in r.stderr
    r = run("entitlements", "check", "nobody", "tokens", code=2)
    assert "404 customer_not_found" in r.stderr
    r = run("entitlements", "check", "acme", "tokens=-1", code=2)
    assert "FEATURE=QTY" in r.stderr
    r = run("entitlements", "grant", "acme", "tokens", "--type", "metered", "--limit", "ten", code=2)
    assert "'ten' is not a non-negative number" in r.stderr
    r = run("entitlements", "grant", "acme", "tokens", "--type", "metered", "--limit", "1", "--period", "P0D", code=2)
    assert "not a valid interval" in r.stderr
    r = run("entitlements", "grant", "acme", "t", "--type", "metered", "--limit", "1", "--anchor", "2026-01-01", code=2)
    assert "UTC offset" in r.stderr
    r = run("entitlements", "grant", "acme", "tokens", "--type", "boolean", "--limit", "5", code=2)
    assert "for --type metered" in r.stderr
    r = run("entitlements", "grant", "acme", "tokens", "--type", "static", "--config", "{nope", code=2)
    assert "config must be a JSON document" in r.stderr
    r = run("alerts", "resend", "no-such-event", code=2)
    assert "no notification event" in r.stderr


def test_settings_quarantine_and_portal(run: Run, live: Server) -> None:
    assert "accept" in run("settings", "show").stdout
    r = run("settings", "set", "--unknown-subjects", "quarantine")
    assert "unknown subjects: quarantine" in r.stdout
    assert as_json(run("settings", "show", "--json")) == {"unknownSubjects": "quarantine"}
    run("settings", "set", "--unknown-subjects", "sometimes", code=2)
    run("ingest", "-", stdin=events("ghost", 7, 8))
    assert "ghost" in run("quarantine", "list", "--subject", "ghost").stdout
    assert as_json(run("quarantine", "list", "--subject", "nobody", "--json"))["items"] == []
    r = run("customers", "create", "ghost")
    assert "released 2 quarantined events" in r.stdout
    run("settings", "set", "--unknown-subjects", "accept")

    r = run("portal", "token", "ghost", "--meter", "tokens", "--ttl", "600")
    token = r.stdout.strip()
    assert "expires" in r.stderr and token
    query = f"{live.url}/api/v1/portal/meters/tokens/query"
    answer = httpx.get(query, headers={"Authorization": f"Bearer {token}"})
    assert answer.status_code == 200 and answer.json()["data"][0]["value"] == 15
    assert "ghost" in run("portal", "list").stdout
    run("portal", "invalidate", code=2)
    run("portal", "invalidate", "--id", "a", "--subject", "b", code=2)
    run("portal", "invalidate", "--subject", "ghost")
    assert httpx.get(query, headers={"Authorization": f"Bearer {token}"}).status_code == 401
    r = run("portal", "token", "ghost", "--ttl", "0", code=2)
    assert "--ttl" in r.stderr
