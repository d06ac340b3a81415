"""Commands that talk to a running server: ingest, usage, meters."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from typing import IO, Any

import click
import msgspec

from meterline.cli.client import JSON, Api, RequestFailed, with_api
from meterline.cli.output import text
from meterline.domain.errors import InvalidInput

_decode = msgspec.json.Decoder()


def _events(stream: IO[str]) -> Iterator[Any]:
    """JSON lines, or a file holding one JSON array (or object)."""
    try:
        text = stream.read()
    except UnicodeDecodeError as exc:
        raise InvalidInput(f"the input is not UTF-8 text: {exc.reason} at byte {exc.start}") from None
    stripped = text.lstrip()
    if stripped.startswith("["):
        try:
            yield from _decode.decode(stripped)
        except msgspec.DecodeError as exc:
            raise InvalidInput(f"the input is not a valid JSON array: {exc}") from None
        except RecursionError:
            raise InvalidInput("the input is not a valid JSON array: it nests too deep") from None
        return
    for number, line in enumerate(text.splitlines(), 1):
        if line.strip():
            try:
                yield _decode.decode(line)
            except msgspec.DecodeError as exc:
                raise InvalidInput(f"line {number} is not valid JSON: {exc}") from None
            except RecursionError:
                raise InvalidInput(f"line {number} is not valid JSON: it nests too deep") from None


@click.command()
@with_api
@click.argument("file", type=click.File("r"))
@click.option("--batch-size", default=500, show_default=True, type=click.IntRange(1, 10_000))
@click.option(
    "--backfill",
    is_flag=True,
    help="historical events (admin key): no late-arrival window; invoiced periods get adjustments",
)
def ingest(api: Api, file: IO[str], batch_size: int, backfill: bool) -> None:
    """Send events from FILE (or - for stdin): JSON lines or a JSON array, in batches."""
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    events = list(_events(file))
    totals = {"accepted": 0, "duplicates": 0, "rejected": 0}
    problems: list[str] = []
    console = Console(stderr=True)
    columns = (TextColumn("ingest"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn())
    with Progress(*columns, console=console, disable=not console.is_terminal) as bar:
        task = bar.add_task("ingest", total=len(events))
        for start in range(0, len(events), batch_size):
            batch = events[start : start + batch_size]
            report = _send_batch(api, batch, start, len(events), "/api/v1/backfills" if backfill else "/api/v1/events")
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


def _send_batch(api: Api, batch: list[Any], start: int, total: int, path: str) -> Any:
    """One batch's per-event report. A failure after earlier batches went through says so:
    sending the whole file again is safe, as events already recorded come back as duplicates."""
    headers = {"Content-Type": "application/cloudevents-batch+json", "Prefer": "return=representation"}
    try:
        return api.post(path, content=msgspec.json.encode(batch), headers=headers)
    except RequestFailed as exc:
        if not start:
            raise
        raise RequestFailed(
            f"{exc.detail} (after the first {start} of {total} events were sent;"
            " sending the file again is safe: events already recorded come back as duplicates)"
        ) from None


@click.command()
@with_api
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
    api: Api,
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
    params = [
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
    path = f"/api/v1/meters/{meter}/query"
    if as_csv:
        click.echo(api.text(path, params, expect="text/csv"), nl=False)
        return
    _print_usage(api.get(path, params)["data"])


def _print_usage(rows: list[dict[str, Any]]) -> None:
    from rich.console import Console
    from rich.table import Table

    dims = sorted({k for r in rows for k in r["groupBy"]})
    table = Table("window start", "window end", "subject", *dims, "value")
    for r in rows:
        table.add_row(
            r["windowStart"],
            r["windowEnd"],
            r["subject"] or "",
            *[r["groupBy"].get(d) or "" for d in dims],
            text(r["value"]),
        )
    Console().print(table)


@click.group()
def meters() -> None:
    """Create, list, show and delete meters on a running server."""


@meters.command("list")
@with_api
def meters_list(api: Api) -> None:
    for m in api.get("/api/v1/meters"):
        click.echo(f"{m['slug']}\t{m['aggregation']}\t{m['eventType']}\t{m.get('valueProperty') or ''}\t{m['id']}")


@meters.command("create")
@with_api
@click.option("--slug", required=True)
@click.option("--event-type", required=True)
@click.option(
    "--aggregation",
    required=True,
    type=click.Choice(
        ["SUM", "COUNT", "UNIQUE_COUNT", "APPROX_UNIQUE_COUNT", "AVG", "MIN", "MAX", "LATEST", "TIME_WEIGHTED_SUM"]
    ),
)
@click.option("--value-property")
@click.option("--group-by", multiple=True, help="NAME=$.json.path (repeatable)")
@click.option("--description")
def meters_create(
    api: Api,
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
    m = api.post("/api/v1/meters", {k: v for k, v in body.items() if v is not None})
    click.echo(f"created meter {m['slug']} ({m['id']})")


@meters.command("show")
@with_api
@click.argument("meter")
def meters_show(api: Api, meter: str) -> None:
    click.echo(api.text(f"/api/v1/meters/{meter}", expect=JSON))


@meters.command("delete")
@with_api
@click.argument("meter")
def meters_delete(api: Api, meter: str) -> None:
    api.delete(f"/api/v1/meters/{meter}")
    click.echo(f"deleted meter {meter}")


COMMANDS = [ingest, usage, meters]
