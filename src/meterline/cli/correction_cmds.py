"""``meterline events void | amend | history``: corrections of accepted events.

Every command talks to a running server (``--url``/``--api-key``, or ``METERLINE_URL`` /
``METERLINE_API_KEY``); a correction needs an admin key, whose id the server records.
"""

from __future__ import annotations

import json
from typing import IO, Any
from urllib.parse import quote

import click

from meterline.cli.client import Api, with_api
from meterline.cli.output import json_option, print_json, print_table


@click.group()
def events() -> None:
    """Void or amend accepted events, and show an event's history."""


@events.command("void")
@with_api
@click.argument("event_id")
@click.option("--source", required=True, help="the event's source (with its id, its key)")
@click.option("--reason", required=True, help="why; kept with the correction")
@json_option
def events_void(api: Api, event_id: str, source: str, reason: str, as_json: bool) -> None:
    """Void an event: from now on it counts nowhere."""
    answer = api.post(f"/api/v1/events/{quote(event_id, safe='')}/void", {"source": source, "reason": reason})
    _print(answer, as_json)


@events.command("amend")
@with_api
@click.argument("event_id")
@click.option("--source", required=True, help="the event's source (with its id, its key)")
@click.option("--reason", required=True, help="why; kept with the correction")
@click.argument("file", type=click.File("r"))
@json_option
def events_amend(api: Api, event_id: str, source: str, reason: str, file: IO[str], as_json: bool) -> None:
    """Amend an event: FILE (``-`` for stdin) holds the new CloudEvent as JSON."""
    text = file.read()
    try:
        event = json.loads(text)
    except ValueError as exc:
        raise click.BadParameter(f"not JSON: {exc}", param_hint="FILE") from None
    if not isinstance(event, dict):
        raise click.BadParameter("must hold one JSON object (a CloudEvent)", param_hint="FILE")
    head = json.dumps({"source": source, "reason": reason})[:-1]
    body = f'{head}, "event": {text.strip()}}}'.encode()  # the event as written: its numbers stay exact
    path = f"/api/v1/events/{quote(event_id, safe='')}/amend"
    _print(api.post(path, content=body, headers={"Content-Type": "application/json"}), as_json)


@events.command("history")
@with_api
@click.argument("event_id")
@click.option("--source", required=True, help="the event's source (with its id, its key)")
@json_option
def events_history(api: Api, event_id: str, source: str, as_json: bool) -> None:
    """The event's versions: the original and every correction."""
    _print(api.get(f"/api/v1/events/{quote(event_id, safe='')}", [("source", source)]), as_json)


def _print(answer: dict[str, Any], as_json: bool) -> None:
    if as_json:
        print_json(answer)
        return
    rows = [
        (v["seq"], v["action"], v["receivedAt"], v["subject"], v["time"], _data(v), v.get("reason", ""),
         v.get("actor", ""))
        for v in answer["history"]
    ]  # fmt: skip
    print_table(("seq", "action", "received", "subject", "time", "data", "reason", "actor"), rows)
    click.echo("voided" if answer["voided"] else "counts: the last version above")


def _data(version: dict[str, Any]) -> str:
    """A version's data as compact JSON (what an amend changed); nothing for a void."""
    event = version.get("event") or {}
    data = event.get("data")
    return "" if data is None else json.dumps(data, separators=(",", ":"), ensure_ascii=False)


COMMANDS = [events]
