"""``meterline reconcile``: every difference between received, accepted, metered and billed per
meter and period, with its cause; exit status 1 when unexplained differences are beyond the
tolerance. Talks to a running server (``--url``/``--api-key``)."""

from __future__ import annotations

import sys

import click

from meterline.cli.client import Api, with_api
from meterline.cli.output import json_option, print_json, print_table


@click.command()
@with_api
@click.option("--from", "from_", help="RFC 3339 start (default: 12 periods ago)")
@click.option("--to", help="RFC 3339 end (default: now)")
@click.option("--grain", type=click.Choice(["day", "week", "month"]), default="month", show_default=True)
@click.option("--tz", help="IANA time zone the periods are cut in (default UTC)")
@click.option("--tolerance", type=click.IntRange(0), help="unexplained events allowed per meter and period")
@json_option
def reconcile(
    api: Api, from_: str | None, to: str | None, grain: str, tz: str | None, tolerance: int | None, as_json: bool
) -> None:
    """Reconcile the key's namespace: what was received, accepted, metered and billed."""
    params = [("grain", grain)]
    for name, value in (("from", from_), ("to", to), ("tz", tz), ("tolerance", tolerance)):
        if value is not None:
            params.append((name, str(value)))
    report = api.get("/api/v1/reconciliation", params)
    if as_json:
        print_json(report)
    else:
        rows = [(d["meter"], d["period"][:10], d["stage"], d["cause"], d["events"]) for d in report["differences"]]
        print_table(("meter", "period", "stage", "cause", "events"), rows, "no differences")
        click.echo(
            f"unexplained {report['unexplained']} (tolerance {report['tolerance']} per meter and period):"
            f" {'within tolerance' if report['withinTolerance'] else 'BEYOND TOLERANCE'}"
        )
    if not report["withinTolerance"]:
        sys.exit(1)


COMMANDS = [reconcile]
