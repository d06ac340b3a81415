"""``meterline alerts``: notification channels, rules, fired alerts and their deliveries.

    alerts channels list | create | rotate-secret | delete
    alerts rules list | create | delete | test
    alerts deliveries     every fired alert with each channel's delivery state
    alerts resend         deliver a fired alert again

Rules and channels are validated locally (the same checks the server runs) before anything is sent.
"""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import click

from meterline.cli.client import Api, with_api
from meterline.cli.output import json_option, print_json, print_table, text
from meterline.cli.values import decimal_value, pairs, parse_decimal
from meterline.domain.alerts.rules import RuleInput, RuleType, Threshold, validate_rule
from meterline.domain.errors import InvalidInput
from meterline.domain.notify.channels import ChannelInput, channel_problems
from meterline.domain.notify.payloads import summary


@click.group()
def alerts() -> None:
    """Usage alerts: where they go (channels), when they fire (rules), what was delivered."""


# -- channels -------------------------------------------------------------------------------


@alerts.group()
def channels() -> None:
    """Where alerts go: a webhook (standard JSON or Slack) or the server's log."""


@channels.command("list")
@with_api
@json_option
def channels_list(api: Api, as_json: bool) -> None:
    """Every channel."""
    items = api.get("/api/v1/notification/channels")["items"]
    if as_json:
        print_json(items)
        return
    rows = [(c["id"], c["name"], c["type"], c["url"] or "server log", c["format"], c["disabled"]) for c in items]
    print_table(("id", "name", "type", "target", "format", "disabled"), rows, "no channels")


@channels.command("create")
@with_api
@click.option("--name", required=True)
@click.option("--webhook", metavar="URL", help="a webhook: POST each alert here (--url is the server)")
@click.option("--log", "to_log", is_flag=True, help="write alerts to the server's log instead")
@click.option("--secret", help="webhook signing secret (whsec_...; default: generated and printed)")
@click.option("--format", "format_", type=click.Choice(["standard", "slack"]), default="standard", show_default=True)
@click.option("--header", "headers", multiple=True, callback=pairs, metavar="NAME=VALUE", help="extra webhook header")
@json_option
def channels_create(
    api: Api,
    name: str,
    webhook: str | None,
    to_log: bool,
    secret: str | None,
    format_: str,
    headers: dict[str, str],
    as_json: bool,
) -> None:
    """Create a webhook channel (--webhook URL) or a log channel (--log)."""
    if (webhook is None) == (not to_log):
        raise click.UsageError("give exactly one of --webhook URL or --log")
    inp = ChannelInput(
        type="LOG" if to_log else "WEBHOOK",
        name=name,
        url=webhook,
        signing_secret=secret,
        format=format_,  # type: ignore[arg-type]  # a click.Choice
        custom_headers=headers or None,
    )
    problems = channel_problems(inp)
    if problems:
        raise InvalidInput("invalid channel: " + "; ".join(problems))
    c = api.post("/api/v1/notification/channels", inp)
    if as_json:
        print_json(c)
        return
    click.echo(f"created {c['type']} channel {c['name']} ({c['id']})")
    if c.get("signingSecret") and secret is None:
        click.echo(f"signing secret (shown only now): {c['signingSecret']}")


@channels.command("rotate-secret")
@with_api
@click.argument("channel_id", metavar="ID")
@click.option("--secret", help="the new signing secret (whsec_...; default: generated and printed)")
def channels_rotate_secret(api: Api, channel_id: str, secret: str | None) -> None:
    """Give webhook channel ID a new signing secret; deliveries are signed with it from now on."""
    c = api.post(f"/api/v1/notification/channels/{channel_id}/rotate-secret", {"signingSecret": secret})
    click.echo(f"rotated the signing secret of channel {c['name']} ({c['id']})")
    if secret is None:
        click.echo(f"signing secret (shown only now): {c['signingSecret']}")


@channels.command("delete")
@with_api
@click.argument("channel_id", metavar="ID")
def channels_delete(api: Api, channel_id: str) -> None:
    """Delete channel ID."""
    api.delete(f"/api/v1/notification/channels/{channel_id}")
    click.echo(f"deleted channel {channel_id}")


# -- rules ----------------------------------------------------------------------------------


def _thresholds(ctx: click.Context, param: click.Parameter, values: tuple[str, ...]) -> list[Threshold]:
    """``80%`` (of the entitlement's limit) or ``1000`` (usage in the period), repeatable."""
    out = []
    for raw in values:
        number = parse_decimal(raw.strip().removesuffix("%"))
        if number is None:
            raise click.BadParameter(
                f"{raw!r} is not a threshold: use a percentage of the limit (80%) or a usage amount (1000)", ctx, param
            )
        out.append(Threshold(number, "PERCENT" if raw.strip().endswith("%") else "NUMBER"))
    return out


@alerts.group()
def rules() -> None:
    """When alerts fire: usage thresholds, projected overuse, spikes and drops."""


@rules.command("list")
@with_api
@json_option
def rules_list(api: Api, as_json: bool) -> None:
    """Every rule."""
    items = api.get("/api/v1/notification/rules")["items"]
    if as_json:
        print_json(items)
        return
    rows = [
        (
            r["id"],
            r["name"],
            _when(r),
            [c["id"] for c in r["channels"]],
            [f["key"] for f in r.get("features", [])] or "all",
            r["disabled"],
        )
        for r in items
    ]
    print_table(("id", "name", "fires when", "channels", "features", "disabled"), rows, "no rules")


def _when(rule: dict[str, Any]) -> str:
    if rule["type"] == "entitlements.balance.threshold":
        return "usage reaches " + ", ".join(_threshold_text(t) for t in rule["thresholds"])
    if rule["type"] == "entitlements.usage.projected":
        return f"projected over the limit (after {text(rule['minElapsedPercent'])}% of the period)"
    parts = [f"hour > {text(rule['spikeFactor'])}x mean" if rule.get("spikeFactor") is not None else ""]
    parts.append(f"hour < {text(rule['dropFactor'])}x mean" if rule.get("dropFactor") is not None else "")
    return " or ".join(p for p in parts if p)


def _threshold_text(t: dict[str, Any] | None) -> str:
    if not t:
        return "-"
    value = text(t["value"])
    if t["type"] in ("PERCENT", "usage_percentage"):
        return f"{value}%"
    return f"{value} left" if t["type"] == "balance_value" else value


@rules.command("create")
@with_api
@click.option("--name", required=True)
@click.option("--channel", "channel_ids", multiple=True, required=True, metavar="ID", help="deliver here (repeatable)")
@click.option(
    "--threshold", "thresholds", multiple=True, callback=_thresholds, metavar="80%|N", help="80% or 1000 (repeatable)"
)
@click.option("--projected", is_flag=True, help="fire when usage is projected past the limit by the period's end")
@click.option(
    "--min-elapsed",
    callback=decimal_value,
    default="10",
    metavar="PERCENT",
    show_default=True,
    help="--projected: percent of the period",
)
@click.option(
    "--spike", callback=decimal_value, metavar="FACTOR", help="fire when the last hour exceeds FACTOR x the hourly mean"
)
@click.option(
    "--drop", callback=decimal_value, metavar="FACTOR", help="fire when the last hour is below FACTOR x the hourly mean"
)
@click.option("--feature", "feature_keys", multiple=True, metavar="KEY", help="only these features (default all)")
@json_option
def rules_create(
    api: Api,
    name: str,
    channel_ids: tuple[str, ...],
    thresholds: list[Threshold],
    projected: bool,
    min_elapsed: Decimal,
    spike: Decimal | None,
    drop: Decimal | None,
    feature_keys: tuple[str, ...],
    as_json: bool,
) -> None:
    """Create a rule of one kind: --threshold ..., --projected, or --spike/--drop."""
    kinds: list[RuleType] = []
    if thresholds:
        kinds.append("entitlements.balance.threshold")
    if projected:
        kinds.append("entitlements.usage.projected")
    if spike is not None or drop is not None:
        kinds.append("entitlements.usage.anomaly")
    if len(kinds) != 1:
        raise click.UsageError("give one kind of rule: --threshold (repeatable), --projected, or --spike/--drop")
    inp = RuleInput(
        type=kinds[0],
        name=name,
        channels=list(channel_ids),
        features=list(feature_keys) or None,
        thresholds=thresholds,
        min_elapsed_percent=min_elapsed,
        spike_factor=spike,
        drop_factor=drop,
    )
    validate_rule(inp)
    r = api.post("/api/v1/notification/rules", inp)
    if as_json:
        print_json(r)
        return
    click.echo(f"created rule {r['name']} ({r['id']}): fires when {_when(r)}")


@rules.command("delete")
@with_api
@click.argument("rule_id", metavar="ID")
def rules_delete(api: Api, rule_id: str) -> None:
    """Delete rule ID."""
    api.delete(f"/api/v1/notification/rules/{rule_id}")
    click.echo(f"deleted rule {rule_id}")


@rules.command("test")
@with_api
@click.argument("rule_id", metavar="ID")
def rules_test(api: Api, rule_id: str) -> None:
    """Fire a test alert for rule ID through its channels."""
    e = api.post(f"/api/v1/notification/rules/{rule_id}/test")
    click.echo(
        f"fired test alert {e['id']} to {len(e['deliveryStatus'])} channel(s); see `meterline alerts deliveries`"
    )


# -- fired alerts ---------------------------------------------------------------------------


@alerts.command("deliveries")
@with_api
@click.option("--rule", "rule_id", metavar="ID", help="only alerts of this rule")
@click.option("--customer", help="only alerts of this customer (key)")
@click.option("--feature", help="only alerts of this feature (key)")
@click.option("--limit", default=100, show_default=True, type=click.IntRange(1, 1000))
@json_option
def deliveries(
    api: Api, rule_id: str | None, customer: str | None, feature: str | None, limit: int, as_json: bool
) -> None:
    """Fired alerts, newest first, one row per channel: state, attempts, next attempt, last error."""
    filters = (("rule", rule_id), ("customer", customer), ("feature", feature))
    params = [("pageSize", str(limit))] + [(k, v) for k, v in filters if v]
    items = api.get("/api/v1/notification/events", params)["items"]
    if as_json:
        print_json(items)
        return
    columns = (
        "event",
        "fired",
        "rule",
        "trigger",
        "alert",
        "channel",
        "state",
        "attempts",
        "next attempt",
        "last error",
    )
    print_table(columns, [row for e in items for row in _delivery_rows(e)], "no alerts have fired")


def _delivery_rows(e: dict[str, Any]) -> list[tuple[object, ...]]:
    data = e["payload"].get("data") or {}
    kind = data.get("kind")
    trigger = _threshold_text(data.get("threshold")) if kind == "threshold" else kind
    alert = "test alert" if kind == "test" else summary(data)
    head = (e["id"], e["createdAt"], e["rule"]["name"], trigger, alert)
    if not e["deliveryStatus"]:
        return [(*head, None, "no channel", None, None, None)]
    return [
        (*head, d["channel"]["id"], d["state"], len(d["attempts"]), d.get("nextAttempt"), d["reason"])
        for d in e["deliveryStatus"]
    ]


@alerts.command("resend")
@with_api
@click.argument("event_id", metavar="EVENT_ID")
@click.option("--channel", "channel_ids", multiple=True, metavar="ID", help="only to these channels (default all)")
def resend(api: Api, event_id: str, channel_ids: tuple[str, ...]) -> None:
    """Deliver fired alert EVENT_ID again (the same body and webhook id)."""
    api.post(f"/api/v1/notification/events/{event_id}/resend", {"channels": list(channel_ids) or None})
    click.echo(f"queued {event_id} for delivery to {', '.join(channel_ids) or 'all its channels'}")


COMMANDS = [alerts]
