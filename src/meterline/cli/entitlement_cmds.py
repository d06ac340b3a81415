"""``meterline features | entitlements``: what customers may use, how much of it they used,
and whether a request would be allowed now.

``entitlements check`` exits 0 when every feature is allowed and 1 when any is denied (errors
exit 2), so scripts can branch on it.
"""

from __future__ import annotations

import sys
from datetime import datetime
from decimal import Decimal
from typing import Any

import click

from meterline.cli.client import Api, with_api
from meterline.cli.output import json_option, period_text, print_fields, print_json, print_table, text
from meterline.cli.values import decimal_value, instant_value, pairs, parse_decimal
from meterline.domain.entitlements.model import (
    EntitlementInput,
    FeatureInput,
    UsagePeriodInput,
    validate_entitlement,
    validate_feature,
)
from meterline.domain.periods import parse_interval

# -- features -------------------------------------------------------------------------------


@click.group()
def features() -> None:
    """Features customers can be entitled to; a metered feature counts a meter."""


@features.command("list")
@with_api
@click.option("--meter", "meters", multiple=True, metavar="SLUG", help="only features of these meters")
@click.option("--include-archived", is_flag=True)
@json_option
def features_list(api: Api, meters: tuple[str, ...], include_archived: bool, as_json: bool) -> None:
    """Every feature of the key's namespace."""
    params = [("meterSlug", m) for m in meters] + ([("includeArchived", "true")] if include_archived else [])
    items = api.get("/api/v1/features", params)
    if as_json:
        print_json(items)
        return
    rows = [
        (f["key"], f["name"], f.get("meterSlug"), f.get("meterGroupByFilters"), f["id"], f.get("archivedAt"))
        for f in items
    ]
    print_table(("key", "name", "meter", "filters", "id", "archived"), rows, "no features")


@features.command("create")
@with_api
@click.argument("key")
@click.option("--name", required=True)
@click.option("--meter", metavar="SLUG", help="the meter whose usage it counts (a metered feature)")
@click.option("--filter", "filters", multiple=True, callback=pairs, metavar="DIM=VALUE", help="count only this group")
@click.option("--metadata", multiple=True, callback=pairs, metavar="K=V", help="repeatable")
@json_option
def features_create(
    api: Api,
    key: str,
    name: str,
    meter: str | None,
    filters: dict[str, str],
    metadata: dict[str, str],
    as_json: bool,
) -> None:
    """Create feature KEY (lower-case letters and digits separated by underscores)."""
    inp = FeatureInput(key, name, metadata or None, meter, filters or None)
    validate_feature(inp)
    f = api.post("/api/v1/features", inp)
    if as_json:
        print_json(f)
        return
    counts = f" counting {f['meterSlug']}" if f.get("meterSlug") else ""
    click.echo(f"created feature {f['key']} ({f['id']}){counts}")


@features.command("delete")
@with_api
@click.argument("key")
def features_delete(api: Api, key: str) -> None:
    """Archive feature KEY: no new entitlements to it."""
    api.delete(f"/api/v1/features/{key}")
    click.echo(f"archived feature {key}")


# -- entitlements ---------------------------------------------------------------------------


@click.group()
def entitlements() -> None:
    """Give customers features, read their usage and check access."""


@entitlements.command("list")
@with_api
@click.argument("customer")
@click.option("--include-deleted", is_flag=True)
@json_option
def entitlements_list(api: Api, customer: str, include_deleted: bool, as_json: bool) -> None:
    """CUSTOMER's entitlements."""
    params = [("includeDeleted", "true")] if include_deleted else []
    items = api.get(f"/api/v1/customers/{customer}/entitlements", params)
    if as_json:
        print_json(items)
        return
    columns = ("feature", "type", "limit", "soft limit", "overage", "period", "current period", "id")
    print_table(columns, [_entitlement_row(e) for e in items], f"{customer} has no entitlements")


def _entitlement_row(e: dict[str, Any]) -> tuple[object, ...]:
    if e["type"] != "metered":
        return (e["featureKey"], e["type"], e.get("config"), None, None, None, None, e["id"])
    limit = "unlimited" if e["isUnlimited"] else e["issueAfterReset"]
    overage = "allowed" if e["isSoftLimit"] else "denied"
    period = e["usagePeriod"]["interval"]
    return (
        e["featureKey"],
        "metered",
        limit,
        e["softLimit"],
        overage,
        period,
        period_text(e["currentUsagePeriod"]),
        e["id"],
    )


@entitlements.command("grant")
@with_api
@click.argument("customer")
@click.argument("feature")
@click.option("--type", "type_", required=True, type=click.Choice(["metered", "boolean", "static"]))
@click.option("--limit", callback=decimal_value, metavar="N", help="metered: usage allowed per period")
@click.option("--unlimited", is_flag=True, help="metered: count usage, never deny")
@click.option("--soft-limit", callback=decimal_value, metavar="N", help="metered: a warning level below the limit")
@click.option("--allow-overage", is_flag=True, help="metered: usage past the limit is allowed (a soft limit)")
@click.option("--period", default="MONTH", show_default=True, help="metered: DAY, WEEK, MONTH, YEAR or ISO 8601 (P2W)")
@click.option("--anchor", callback=instant_value, metavar="ISO", help="metered: when periods start (default: now)")
@click.option("--config", "config", metavar="JSON", help="static: the configuration value (JSON)")
@json_option
def entitlements_grant(
    api: Api,
    customer: str,
    feature: str,
    type_: str,
    limit: Decimal | None,
    unlimited: bool,
    soft_limit: Decimal | None,
    allow_overage: bool,
    period: str,
    anchor: datetime | None,
    config: str | None,
    as_json: bool,
) -> None:
    """Give CUSTOMER the feature FEATURE (replaces nothing: revoke first to change it)."""
    inp = _entitlement_input(type_, feature, limit, unlimited, soft_limit, allow_overage, period, anchor, config)
    e = api.post(f"/api/v1/customers/{customer}/entitlements", inp)
    if as_json:
        print_json(e)
        return
    what = e["type"]
    if e["type"] == "metered":
        limit_text = (
            "unlimited" if e["isUnlimited"] else f"{text(e['issueAfterReset'])} per {e['usagePeriod']['interval']}"
        )
        what = f"metered, {limit_text}, overage {'allowed' if e['isSoftLimit'] else 'denied'}"
    click.echo(f"granted {e['featureKey']} to {e['customerKey']}: {what} ({e['id']})")


def _entitlement_input(
    type_: str,
    feature: str,
    limit: Decimal | None,
    unlimited: bool,
    soft_limit: Decimal | None,
    allow_overage: bool,
    period: str,
    anchor: datetime | None,
    config: str | None,
) -> EntitlementInput:
    """The request body, after the checks that need no server."""
    if type_ != "metered" and (limit is not None or unlimited or soft_limit is not None or allow_overage or anchor):
        raise click.UsageError(
            "--limit, --unlimited, --soft-limit, --allow-overage and --anchor are for --type metered"
        )
    if type_ != "static" and config is not None:
        raise click.UsageError("--config is for --type static")
    if type_ == "metered" and limit is None and not unlimited:
        raise click.UsageError("a metered entitlement needs --limit N (or --unlimited)")
    inp = EntitlementInput(
        type=type_,  # type: ignore[arg-type]  # a click.Choice of the three
        feature_key=feature,
        usage_period=UsagePeriodInput(parse_interval(period), anchor) if type_ == "metered" else None,
        is_soft_limit=allow_overage,
        is_unlimited=unlimited,
        issue_after_reset=limit,
        soft_limit=soft_limit,
        config=config,
    )
    validate_entitlement(inp)
    return inp


@entitlements.command("revoke")
@with_api
@click.argument("customer")
@click.argument("feature")
def entitlements_revoke(api: Api, customer: str, feature: str) -> None:
    """Take FEATURE (a feature key or entitlement id) away from CUSTOMER."""
    api.delete(f"/api/v1/customers/{customer}/entitlements/{feature}")
    click.echo(f"revoked {feature} from {customer}")


@entitlements.command("value")
@with_api
@click.argument("customer")
@click.argument("feature")
@click.option("--at", callback=instant_value, metavar="ISO", help="as of this time (default: now)")
@json_option
def entitlements_value(api: Api, customer: str, feature: str, at: datetime | None, as_json: bool) -> None:
    """CUSTOMER's access to FEATURE and its usage in the current period."""
    v = api.get(f"/api/v1/customers/{customer}/entitlements/{feature}/value", [("time", at.isoformat())] if at else [])
    if as_json:
        print_json(v)
        return
    fields: list[tuple[str, object]] = [("access", v["hasAccess"])]
    if "config" in v:
        fields.append(("config", v["config"]))
    if "usage" in v:
        fields += [
            ("usage", v["usage"]),
            ("limit", v["totalAvailableGrantAmount"]),
            ("balance", v["balance"]),
            ("overage", v["overage"]),
            ("soft limit exceeded", v["softLimitExceeded"]),
            ("projected usage", v["projectedUsage"]),
            ("period", period_text(v["period"])),
        ]
    print_fields(fields)


def _asks(ctx: click.Context, param: click.Parameter, items: tuple[str, ...]) -> list[dict[str, object]]:
    """``FEATURE`` or ``FEATURE=QTY`` arguments as the check request's features."""
    asks: list[dict[str, object]] = []
    for item in items:
        feature, sep, raw = item.partition("=")
        quantity = parse_decimal(raw) if sep else Decimal(0)
        if not feature or quantity is None:
            raise click.BadParameter(f"{item!r} must be FEATURE or FEATURE=QTY (QTY a non-negative number)", ctx, param)
        asks.append({"feature": feature, "quantity": quantity})
    return asks


@entitlements.command("check")
@with_api
@click.argument("customer")
@click.argument("asks", nargs=-1, required=True, callback=_asks, metavar="FEATURE[=QTY]...")
@json_option
def entitlements_check(api: Api, customer: str, asks: list[dict[str, object]], as_json: bool) -> None:
    """Would CUSTOMER be allowed to use QTY (default 0) more of each FEATURE now?

    Exits 0 when every feature is allowed, 1 when any is denied."""
    body = api.post("/api/v1/entitlements/check", {"customer": customer, "features": asks})
    if as_json:
        print_json(body)
    else:
        rows = [
            (f["feature"], f["allowed"], f.get("usage"), f.get("limit"), f.get("balance"), f["denial"])
            for f in body["features"]
        ]
        print_table(("feature", "allowed", "usage", "limit", "balance", "denial"), rows)
    if not body["allowed"]:
        for f in body["features"]:
            if not f["allowed"]:
                click.echo(f"denied: {f['feature']}: {f['denial'] or 'no access'}", err=True)
        sys.exit(1)


COMMANDS = [features, entitlements]
