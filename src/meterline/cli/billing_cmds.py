"""``meterline billing``: run due billing periods, fetch invoices, export a period.

``billing run`` works on the data directory (``--data-dir``/``--config``) or, with ``--url``,
asks a running server (``POST /api/v1/billing/runs``). Runs are idempotent either way: a
second run finds nothing left to finalize. The other commands talk to a server.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from meterline.cli.client import JSON, Api, with_api
from meterline.cli.output import print_json
from meterline.cli.store_cmds import config_options

_TIMEOUT = 300.0  # a billing run or an export of a busy period may take minutes


def _print_run(body: dict[str, Any], as_json: bool) -> None:
    if as_json:
        print_json(body)
        return
    click.echo(f"billing run at {body['at']}: {len(body['created'])} invoices finalized")
    for number in body["created"]:
        click.echo(f"  {number}")
    for failure in body["failed"]:
        click.echo(f"  not finalized: {failure['customer']} ({failure['code']}): {failure['detail']}", err=True)


@click.group()
def billing() -> None:
    """Billing runs, invoices and exports."""


@billing.command("run")
@config_options
@click.option("--url", envvar="METERLINE_URL", help="run on this server instead of the data directory")
@click.option("--api-key", envvar="METERLINE_API_KEY", help="admin key for --url")
@click.option("--namespace", help="only this namespace (local runs; default: all)")
@click.option(
    "--timeout", "timeout_s", type=click.FloatRange(min=0, min_open=True), metavar="SECONDS", help="with --url (300)"
)
@click.option("--json", "as_json", is_flag=True, help="print the run report as JSON")
def run_cmd(
    config_path: Path | None,
    data_dir: Path | None,
    url: str | None,
    api_key: str | None,
    timeout_s: float | None,
    namespace: str | None,
    as_json: bool,
) -> None:
    """Finalize every billing period that has ended."""
    if url:
        if not api_key:
            raise click.UsageError("--api-key (or METERLINE_API_KEY) is required with --url")
        with Api(url, api_key, timeout_s or _TIMEOUT) as api:
            _print_run(api.post("/api/v1/billing/runs"), as_json)
        return
    from meterline.api.billing_invoices import run_json
    from meterline.bootstrap import open_billing
    from meterline.config import load_config

    config = load_config(config_path, {"storage": {"data_dir": data_dir}})
    with open_billing(config) as billing:
        report = billing.runs.run(namespace)
    _print_run(run_json(report), as_json)


@billing.command("invoice")
@with_api(timeout=_TIMEOUT)
@click.argument("number")
@click.option("--format", "fmt", type=click.Choice(["json", "csv", "html"]), default="json", show_default=True)
def invoice_cmd(api: Api, number: str, fmt: str) -> None:
    """Print one invoice (the stored JSON, CSV line items or the printable HTML)."""
    suffix, media = {"json": ("", JSON), "csv": ("/lines.csv", "text/csv"), "html": ("/html", "text/html")}[fmt]
    click.echo(api.text(f"/api/v1/invoices/{number}{suffix}", expect=media), nl=fmt == "json")


@billing.command("invoices")
@with_api(timeout=_TIMEOUT)
@click.option("--customer", help="only this customer's invoices")
def invoices_cmd(api: Api, customer: str | None) -> None:
    """List invoices with their status and totals."""
    items = api.get("/api/v1/invoices", [("customer", customer)] if customer else [])
    for item in items["items"]:
        click.echo(
            f"{item['number']}  {item['status']:<9}  {item['customer']:<20}  {item['periodStart'][:10]}"
            f"  {item['currency']} {item['amountDue']}"
        )


@billing.command("export")
@with_api(timeout=_TIMEOUT)
@click.option("--from", "from_", required=True, help="RFC 3339: periods starting at or after")
@click.option("--to", required=True, help="RFC 3339: periods starting before")
@click.option("--format", "fmt", type=click.Choice(["jsonl", "csv"]), default="jsonl", show_default=True)
def export_cmd(api: Api, from_: str, to: str, fmt: str) -> None:
    """Export the finalized invoices of a period for an accounting or payment system."""
    params = [("from", from_), ("to", to), ("format", fmt)]
    media = "text/csv" if fmt == "csv" else "application/x-ndjson"
    click.echo(api.text("/api/v1/billing/export", params, expect=media), nl=False)


COMMANDS = [billing]
