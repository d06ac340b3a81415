"""``meterline erase SUBJECT --reason ...`` and ``meterline erasures``: erasure of a subject
(GDPR right to erasure) and its audit records.

Both talk to a running server (``--url``/``--api-key``, or ``METERLINE_URL`` /
``METERLINE_API_KEY``) with an admin key, whose id the server records as who erased.
"""

from __future__ import annotations

from typing import Any

import click

from meterline.cli.client import Api, with_api
from meterline.cli.output import json_option, print_json, print_table


@click.command("erase")
@with_api
@click.argument("subject")
@click.option("--reason", required=True, help="why (kept in the audit record; must not name the subject)")
@click.option("--yes", is_flag=True, help="do not ask for confirmation")
@json_option
def erase(api: Api, subject: str, reason: str, yes: bool, as_json: bool) -> None:
    """Erase SUBJECT: its events' identifiers and payloads, quarantined events, dead letters and
    portal tokens; its usage stays under a pseudonym (totals and invoices unchanged). Cannot be undone."""
    if not yes:
        click.confirm(f"Erase subject {subject!r}? This cannot be undone", abort=True, err=True)
    record = api.post("/api/v1/erasures", {"subject": subject, "reason": reason})
    if as_json:
        print_json(record)
        return
    counts = ", ".join(f"{k} {v}" for k, v in record["counts"].items())
    click.echo(f"erasure {record['id']} done at {record['erasedAt']}: now {record['pseudonym']} ({counts})")


@click.command("erasures")
@with_api
@json_option
def erasures(api: Api, as_json: bool) -> None:
    """Audit records of the erasures in the key's namespace, newest first."""
    items: list[dict[str, Any]] = api.get("/api/v1/erasures", [])["items"]
    if as_json:
        print_json(items)
        return
    rows = [
        (r["id"], r["erasedAt"], r["actor"], r["pseudonym"], r["counts"].get("ledgerEntries", 0), r["reason"])
        for r in items
    ]
    print_table(("id", "erased at", "by key", "pseudonym", "ledger entries", "reason"), rows, "no erasures")


COMMANDS = [erase, erasures]
