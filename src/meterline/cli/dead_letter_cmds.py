"""``meterline dead-letters list | resubmit``: rejected events, and sending them through ingest
again once their cause is fixed (a customer created, a meter corrected). Talks to a running
server (``--url``/``--api-key``); re-submitting needs an admin key."""

from __future__ import annotations

import sys
from typing import Any

import click

from meterline.cli.client import Api, with_api
from meterline.cli.output import json_option, print_json, print_table


@click.group("dead-letters")
def dead_letters() -> None:
    """List dead letters and re-submit them."""


@dead_letters.command("list")
@with_api
@click.option("--state", type=click.Choice(["pending", "resubmitted", "all"]), default="pending", show_default=True)
@click.option("--reason", help="only this rejection reason")
@json_option
def dead_letters_list(api: Api, state: str, reason: str | None, as_json: bool) -> None:
    """Dead letters of the key's namespace, oldest first."""
    params = [("state", state), ("limit", "1000")] + ([("reason", reason)] if reason else [])
    items: list[dict[str, Any]] = []
    while True:
        page = api.get("/api/v1/dead-letters", params)
        items += page["items"]
        if page["next"] is None:
            break
        params = [p for p in params if p[0] != "after"] + [("after", str(page["next"]))]
    if as_json:
        print_json(items)
        return
    rows = [
        (d["id"], d["receivedAt"], d["reason"], d["source"], d["eventId"], d.get("resubmittedAs", "")) for d in items
    ]
    print_table(("id", "received", "reason", "source", "event id", "re-submitted as"), rows, "no dead letters")


@dead_letters.command("resubmit")
@with_api
@click.argument("ids", nargs=-1, required=True, type=click.IntRange(1))
@json_option
def dead_letters_resubmit(api: Api, ids: tuple[int, ...], as_json: bool) -> None:
    """Send dead letters IDS through ingest again, each exactly once; exit 1 if any is rejected again."""
    report = api.post("/api/v1/dead-letters/resubmit", {"ids": list(ids)})
    if as_json:
        print_json(report)
    else:
        for item in report["items"]:
            why = f" ({item['reason']}: {item['message']})" if "reason" in item else ""
            click.echo(f"dead letter {item['id']}: {item['status']}{why}")
        for id_ in report["alreadyResubmitted"]:
            click.echo(f"dead letter {id_}: already re-submitted, left alone")
        for id_ in report["notFound"]:
            click.echo(f"dead letter {id_}: not found", err=True)
        click.echo(
            f"re-submitted {report['resubmitted']}: accepted {report['accepted']}, duplicates"
            f" {report['duplicates']}, quarantined {report['quarantined']}, rejected {report['rejected']}"
        )
    if report["rejected"] or report["notFound"]:
        sys.exit(1)


COMMANDS = [dead_letters]
