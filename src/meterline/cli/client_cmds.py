"""Commands that talk to a running server: ingest, usage, meters."""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from typing import IO, Any

import click
import httpx
import msgspec
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table

from meterline.errors import InvalidInput, MeterlineError

_decode = msgspec.json.Decoder()


def server_options(f: Callable[..., Any]) -> Callable[..., Any]:
    f = click.option("--api-key", envvar="METERLINE_API_KEY", required=True, help="or METERLINE_API_KEY")(f)
    return click.option(
        "--url",
        envvar="METERLINE_URL",
        default="http://127.0.0.1:8888",
        show_default=True,
        help="server address, or METERLINE_URL",
    )(f)


def http_client(url: str, api_key: str, timeout: float = 60.0) -> httpx.Client:
    """An HTTP client for the server at ``url`` with the caller's API key."""
    return httpx.Client(base_url=url, headers={"Authorization": f"Bearer {api_key}"}, timeout=timeout)


def checked(response: httpx.Response) -> httpx.Response:
    """``response``, or a MeterlineError carrying the problem's detail for a 4xx/5xx."""
    if response.status_code >= 400:
        try:
            detail = response.json().get("detail", response.text)
        except ValueError:
            detail = response.text
        raise MeterlineError(f"{response.status_code}: {detail}")
    return response


def _events(stream: IO[str]) -> Iterator[Any]:
    """JSON lines, or a file holding one JSON array (or object)."""
    text = stream.read()
    stripped = text.lstrip()
    if stripped.startswith("["):
        try:
            yield from _decode.decode(stripped)
        except msgspec.DecodeError as exc:
            raise InvalidInput(f"the input is not a valid JSON array: {exc}") from None
        return
    for number, line in enumerate(text.splitlines(), 1):
        if line.strip():
            try:
                yield _decode.decode(line)
            except msgspec.DecodeError as exc:
                raise InvalidInput(f"line {number} is not valid JSON: {exc}") from None


@click.command()
@server_options
@click.argument("file", type=click.File("r"))
@click.option("--batch-size", default=500, show_default=True, type=click.IntRange(1, 10_000))
def ingest(url: str, api_key: str, file: IO[str], batch_size: int) -> None:
    """Send events from FILE (or - for stdin): JSON lines or a JSON array, in batches."""
    events = list(_events(file))
    totals = {"accepted": 0, "duplicates": 0, "rejected": 0}
    problems: list[str] = []
    console = Console(stderr=True)
    columns = (TextColumn("ingest"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn())
    with (
        http_client(url, api_key) as client,
        Progress(*columns, console=console, disable=not console.is_terminal) as bar,
    ):
        task = bar.add_task("ingest", total=len(events))
        for start in range(0, len(events), batch_size):
            batch = events[start : start + batch_size]
            report = checked(
                client.post(
                    "/api/v1/events",
                    content=msgspec.json.encode(batch),
                    headers={"Content-Type": "application/cloudevents-batch+json", "Prefer": "return=representation"},
                )
            ).json()
            for k in totals:
                totals[k] += report[k]
            problems += [
                f"event {start + e['index']} (id={e['id']}): {e['reason']}: {e['message']}"
                for e in report["events"]
                if e["status"] == "rejected"
            ]
            bar.advance(task, len(batch))
    for line in problems[:50]:
        click.echo(line, err=True)
    click.echo(f"accepted {totals['accepted']}, duplicates {totals['duplicates']}, rejected {totals['rejected']}")
    if totals["rejected"]:
        sys.exit(1)


@click.command()
@server_options
@click.argument("meter")
@click.option("--from", "from_", help="RFC 3339 start (inclusive)")
@click.option("--to", help="RFC 3339 end (exclusive)")
@click.option("--window-size", type=click.Choice(["MINUTE", "HOUR", "DAY", "MONTH"]))
@click.option("--tz", "window_tz", help="IANA time zone windows are cut in (default UTC)")
@click.option("--subject", multiple=True)
@click.option("--group-by", multiple=True)
@click.option("--filter", "filters", multiple=True, help="DIM=VALUE (repeatable)")
@click.option("--csv", "as_csv", is_flag=True, help="print CSV instead of a table")
def usage(
    url: str,
    api_key: str,
    meter: str,
    from_: str | None,
    to: str | None,
    window_size: str | None,
    window_tz: str | None,
    subject: tuple[str, ...],
    group_by: tuple[str, ...],
    filters: tuple[str, ...],
    as_csv: bool,
) -> None:
    """Query a meter (same parameters as GET /api/v1/meters/{meter}/query)."""
    params: list[tuple[str, str | int | float | bool | None]] = [
        (k, v)
        for k, v in (("from", from_), ("to", to), ("windowSize", window_size), ("windowTimeZone", window_tz))
        if v
    ]
    params += [("subject", s) for s in subject] + [("groupBy", g) for g in group_by]
    for f in filters:
        dim, sep, value = f.partition("=")
        if not sep:
            raise InvalidInput(f"--filter {f!r} must be DIM=VALUE")
        params.append((f"filterGroupBy[{dim}]", value))
    with http_client(url, api_key) as client:
        response = checked(
            client.get(
                f"/api/v1/meters/{meter}/query",
                params=params,
                headers={"Accept": "text/csv" if as_csv else "application/json"},
            )
        )
    if as_csv:
        click.echo(response.text, nl=False)
        return
    rows = msgspec.json.Decoder(float_hook=str).decode(response.content)["data"]
    dims = sorted({k for r in rows for k in r["groupBy"]})
    table = Table("window start", "window end", "subject", *dims, "value")
    for r in rows:
        table.add_row(
            r["windowStart"],
            r["windowEnd"],
            r["subject"] or "",
            *[r["groupBy"].get(d) or "" for d in dims],
            str(r["value"]),
        )
    Console().print(table)


@click.group()
def meters() -> None:
    """Create, list, show and delete meters on a running server."""


@meters.command("list")
@server_options
def meters_list(url: str, api_key: str) -> None:
    with http_client(url, api_key) as client:
        for m in checked(client.get("/api/v1/meters")).json():
            click.echo(f"{m['slug']}\t{m['aggregation']}\t{m['eventType']}\t{m.get('valueProperty') or ''}\t{m['id']}")


@meters.command("create")
@server_options
@click.option("--slug", required=True)
@click.option("--event-type", required=True)
@click.option(
    "--aggregation", required=True, type=click.Choice(["SUM", "COUNT", "UNIQUE_COUNT", "AVG", "MIN", "MAX", "LATEST"])
)
@click.option("--value-property")
@click.option("--group-by", multiple=True, help="NAME=$.json.path (repeatable)")
@click.option("--description")
def meters_create(
    url: str,
    api_key: str,
    slug: str,
    event_type: str,
    aggregation: str,
    value_property: str | None,
    group_by: tuple[str, ...],
    description: str | None,
) -> None:
    groups = dict(g.split("=", 1) for g in group_by if "=" in g)
    if len(groups) != len(group_by):
        raise InvalidInput("--group-by takes NAME=$.path")
    body = {
        "slug": slug,
        "eventType": event_type,
        "aggregation": aggregation,
        "valueProperty": value_property,
        "groupBy": groups,
        "description": description,
    }
    with http_client(url, api_key) as client:
        m = checked(client.post("/api/v1/meters", json={k: v for k, v in body.items() if v is not None})).json()
    click.echo(f"created meter {m['slug']} ({m['id']})")


@meters.command("show")
@server_options
@click.argument("meter")
def meters_show(url: str, api_key: str, meter: str) -> None:
    with http_client(url, api_key) as client:
        click.echo(checked(client.get(f"/api/v1/meters/{meter}")).text)


@meters.command("delete")
@server_options
@click.argument("meter")
def meters_delete(url: str, api_key: str, meter: str) -> None:
    with http_client(url, api_key) as client:
        checked(client.delete(f"/api/v1/meters/{meter}"))
    click.echo(f"deleted meter {meter}")


COMMANDS = [ingest, usage, meters]
