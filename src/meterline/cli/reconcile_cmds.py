"""``meterline reconcile``: every difference between received, accepted, metered and billed per
meter and period, with its cause; exit status 1 when unexplained differences are beyond the
tolerance. Talks to a running server (``--url``/``--api-key``; in scale mode any API node),
waiting up to ``--timeout`` (default 600 s: the server replays the range's raw events)."""

from __future__ import annotations

import sys
from datetime import date

import click

from meterline.cli.client import Api, with_api
from meterline.cli.output import json_option, print_json, print_table, text

_TIMEOUT = 600.0  # it replays the range's raw events: minutes for millions of them


def _day(ctx: click.Context, param: click.Parameter, value: str | None) -> str | None:
    """A day as the server takes it (``from`` and ``to`` are whole days in the zone)."""
    if value is None:
        return None
    try:
        return date.fromisoformat(value).isoformat()
    except ValueError:
        raise click.BadParameter(f"{value!r} is not a day (YYYY-MM-DD, e.g. 2026-03-01)") from None


@click.command()
@with_api(timeout=_TIMEOUT)
@click.option("--from", "from_", callback=_day, help="first day, YYYY-MM-DD in --tz (default: 12 periods before --to)")
@click.option("--to", callback=_day, help="last day, included, YYYY-MM-DD in --tz (default: today)")
@click.option("--grain", type=click.Choice(["day", "week", "month"]), default="month", show_default=True)
@click.option("--tz", help="IANA time zone the periods are cut in (default UTC)")
@click.option("--tolerance", type=click.IntRange(0), help="unexplained events allowed per meter and period")
@click.option(
    "--quantity-tolerance", help="unexplained quantity allowed per meter of a finalized billing window (a number)"
)
@json_option
def reconcile(
    api: Api,
    from_: str | None,
    to: str | None,
    grain: str,
    tz: str | None,
    tolerance: int | None,
    quantity_tolerance: str | None,
    as_json: bool,
) -> None:
    """Reconcile the key's namespace: what was received, accepted, metered and billed."""
    params = [("grain", grain)]
    given = (("from", from_), ("to", to), ("tz", tz), ("tolerance", tolerance))
    for name, value in (*given, ("quantityTolerance", quantity_tolerance)):
        if value is not None:
            params.append((name, str(value)))
    report = api.get("/api/v1/reconciliation", params)
    if as_json:
        print_json(report)
    else:
        rows = [(d["meter"], d["period"][:10], d["stage"], d["cause"], d["events"]) for d in report["differences"]]
        print_table(("meter", "period", "stage", "cause", "events"), rows, "no differences")
        billed = [
            (b["meter"], b["customer"], b["invoice"], b["windowStart"][:10], text(b["billed"]), text(b["metered"]),
             c["cause"], text(c["quantity"]), f"{text(b['amount'])} {b['currency']}")
            for b in report["billed"]
            for c in b["causes"]
        ]  # fmt: skip
        columns = ("meter", "customer", "invoice", "window", "billed", "metered", "cause", "quantity", "adjustment")
        print_table(columns, billed, "billed quantities: no differences")
        click.echo(
            f"unexplained events: {report['unexplained']} (tolerance {report['tolerance']} per meter and period)"
        )
        click.echo(
            f"billed windows' meters with unexplained quantities beyond {text(report['quantityTolerance'])}:"
            f" {report['unexplainedBilled']}"
        )
        click.echo("within tolerance" if report["withinTolerance"] else "BEYOND TOLERANCE")
    if not report["withinTolerance"]:
        sys.exit(1)


COMMANDS = [reconcile]
