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
    for line in scale_notes(record):
        click.echo(line)


def scale_notes(record: dict[str, Any]) -> list[str]:
    """What a scale-mode erasure leaves outside the stores: the log's records, Redis's files."""
    if "throughLogPositions" not in record:
        return []
    purged = record.get("logPurgedBy")
    if purged == "never":
        when = "never: the topic's retention is unlimited (retention.ms -1); set one"
    elif purged is None:
        when = "unknown: the broker did not report the topic's retention.ms"
    else:
        when = f"by {purged} (the topic's retention.ms + segment.ms after the erasure)"
    lines = [f"the subject's original records leave the Kafka topic {when}"]
    files = record.get("redisFiles")
    if files is not None:
        done = ", ".join(f"{k} {v}" for k, v in files.items() if k != "detail")
        detail = f" ({files['detail']})" if "detail" in files else ""
        lines.append(f"Redis persistence files: {done}{detail}")
    tables = record.get("postgresFiles")
    if tables is not None:
        left = {t: v for t, v in tables.items() if v != "rewritten"}
        if left:
            named = ", ".join(f"{t} {v}" for t, v in left.items())
            lines.append(f"PostgreSQL tables not rewritten yet (retried by the API nodes): {named}")
        else:
            lines.append(f"PostgreSQL tables rewritten (VACUUM FULL): {', '.join(tables)}")
    return lines


@click.command("erasures")
@with_api
@json_option
def erasures(api: Api, as_json: bool) -> None:
    """Audit records of the erasures in the key's namespace, newest first."""
    items: list[dict[str, Any]] = api.get("/api/v1/erasures", [])["items"]
    if as_json:
        print_json(items)
        return
    rows: list[tuple[object, ...]] = [
        (r["id"], r["erasedAt"], r["actor"], r["pseudonym"], r["counts"].get("ledgerEntries", 0), r["reason"])
        for r in items
    ]
    headers: tuple[str, ...] = ("id", "erased at", "by key", "pseudonym", "ledger entries", "reason")
    if any("throughLogPositions" in r for r in items):  # scale mode: when the log's records are gone
        rows = [(*row, _purged(r), _tables(r)) for row, r in zip(rows, items, strict=True)]
        headers = (*headers, "log purged by", "postgresql files")
    print_table(headers, rows, "no erasures")


def _purged(record: dict[str, Any]) -> str:
    purged = record.get("logPurgedBy")
    return "unknown" if purged is None else str(purged)


def _tables(record: dict[str, Any]) -> str:
    """``rewritten``, or the tables not rewritten yet with why (``pending``: not tried yet)."""
    tables: dict[str, str] | None = record.get("postgresFiles")
    if tables is None:
        return "pending"
    left = [f"{t} {v}" for t, v in tables.items() if v != "rewritten"]
    return ", ".join(left) if left else "rewritten"


COMMANDS = [erase, erasures]
