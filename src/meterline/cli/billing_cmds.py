"""``meterline billing``: run due billing periods, fetch invoices, export a period.

``billing run`` works on the data directory (``--data-dir``/``--config``) or, with ``--url``,
asks a running server (``POST /api/v1/billing/runs``). Runs are idempotent either way: a
second run finds nothing left to finalize. The other commands talk to a server.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from meterline.cli.client_cmds import checked, http_client, server_options
from meterline.cli.store_cmds import config_options
from meterline.clock import SystemClock
from meterline.config import load_config


def _print_run(body: dict[str, Any], as_json: bool) -> None:
    if as_json:
        click.echo(json.dumps(body, indent=2))
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
@click.option("--json", "as_json", is_flag=True, help="print the run report as JSON")
def run_cmd(
    config_path: Path | None,
    data_dir: Path | None,
    url: str | None,
    api_key: str | None,
    namespace: str | None,
    as_json: bool,
) -> None:
    """Finalize every billing period that has ended."""
    if url:
        if not api_key:
            raise click.UsageError("--api-key (or METERLINE_API_KEY) is required with --url")
        with http_client(url, api_key, timeout=300.0) as client:
            _print_run(checked(client.post("/api/v1/billing/runs")).json(), as_json)
        return
    from meterline.api.app import open_backend
    from meterline.api.billing_invoices import run_json
    from meterline.api.billing_scheduler import settings_from
    from meterline.storage.sqlite.billing_run import BillingRuns

    config = load_config(config_path, {"storage": {"data_dir": data_dir}})
    backend = open_backend(config, SystemClock())
    try:
        report = BillingRuns(backend.billing).run(settings_from(config.billing), namespace)
    finally:
        backend.close()
    _print_run(run_json(report), as_json)


def _get(path: str) -> Callable[[str, str], str]:
    def fetch(url: str, api_key: str) -> str:
        with http_client(url, api_key, timeout=300.0) as client:
            return checked(client.get(path)).text

    return fetch


@billing.command("invoice")
@server_options
@click.argument("number")
@click.option("--format", "fmt", type=click.Choice(["json", "csv", "html"]), default="json", show_default=True)
def invoice_cmd(url: str, api_key: str, number: str, fmt: str) -> None:
    """Print one invoice (the stored JSON, CSV line items or the printable HTML)."""
    suffix = {"json": "", "csv": "/lines.csv", "html": "/html"}[fmt]
    click.echo(_get(f"/api/v1/invoices/{number}{suffix}")(url, api_key), nl=fmt == "json")


@billing.command("invoices")
@server_options
@click.option("--customer", help="only this customer's invoices")
def invoices_cmd(url: str, api_key: str, customer: str | None) -> None:
    """List invoices with their status and totals."""
    with http_client(url, api_key, timeout=300.0) as client:
        items = checked(client.get("/api/v1/invoices", params={"customer": customer} if customer else {})).json()
    for item in items["items"]:
        click.echo(
            f"{item['number']}  {item['status']:<9}  {item['customer']:<20}  {item['periodStart'][:10]}"
            f"  {item['currency']} {item['amountDue']}"
        )


@billing.command("export")
@server_options
@click.option("--from", "from_", required=True, help="RFC 3339: periods starting at or after")
@click.option("--to", required=True, help="RFC 3339: periods starting before")
@click.option("--format", "fmt", type=click.Choice(["jsonl", "csv"]), default="jsonl", show_default=True)
def export_cmd(url: str, api_key: str, from_: str, to: str, fmt: str) -> None:
    """Export the finalized invoices of a period for an accounting or payment system."""
    with http_client(url, api_key, timeout=300.0) as client:
        params = {"from": from_, "to": to, "format": fmt}
        click.echo(checked(client.get("/api/v1/billing/export", params=params)).text, nl=False)


COMMANDS = [billing]
