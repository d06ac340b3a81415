"""Option values the server commands check before anything is sent (click callbacks): exact
non-negative decimals, instants with a UTC offset, ``K=V`` pairs. A bad value is a click
``BadParameter`` (exit 2, with the option named)."""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal, InvalidOperation

import click


def parse_decimal(raw: str) -> Decimal | None:
    """A finite, non-negative decimal (kept exact), or None when ``raw`` is not one."""
    try:
        number = Decimal(raw.strip())
    except InvalidOperation:
        return None
    return number if number.is_finite() and number >= 0 else None


def decimal_value(ctx: click.Context, param: click.Parameter, value: str | None) -> Decimal | None:
    """A click callback: the option as an exact non-negative number."""
    if value is None:
        return None
    number = parse_decimal(value)
    if number is None:
        raise click.BadParameter(f"{value!r} is not a non-negative number", ctx, param)
    return number


def instant_value(ctx: click.Context, param: click.Parameter, value: str | None) -> datetime | None:
    """A click callback: an ISO 8601 instant with a UTC offset (2026-03-01T00:00:00+01:00)."""
    if value is None:
        return None
    try:
        t = datetime.fromisoformat(value)
    except ValueError:
        raise click.BadParameter(f"{value!r} is not an ISO 8601 time (e.g. 2026-03-01T00:00:00Z)", ctx, param) from None
    if t.utcoffset() is None:
        raise click.BadParameter(f"{value!r} needs a UTC offset (Z or +01:00)", ctx, param)
    return t


def pairs(ctx: click.Context, param: click.Parameter, values: tuple[str, ...]) -> dict[str, str]:
    """A click callback turning repeated ``K=V`` options into a dict."""
    out: dict[str, str] = {}
    for item in values:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise click.BadParameter(f"{item!r} must be KEY=VALUE", ctx, param)
        out[key.strip()] = value
    return out
