"""``meterline top``: the K subjects (or group values) with the largest usage of a meter over a
period. Talks to a running server (``--url``/``--api-key``)."""

from __future__ import annotations

import click

from meterline.cli.client import Api, with_api
from meterline.cli.output import json_option, print_json, print_table, text
from meterline.domain.errors import InvalidInput


@click.command()
@with_api
@click.argument("meter")
@click.option("--from", "from_", help="RFC 3339 start (inclusive)")
@click.option("--to", help="RFC 3339 end (exclusive)")
@click.option("--by", default="subject", show_default=True, help="subject, or one of the meter's groupBy keys")
@click.option("-k", "k", type=click.IntRange(1, 1000), default=10, show_default=True, help="how many to rank")
@click.option("--subject", multiple=True, help="only these subjects (repeatable)")
@click.option("--filter", "filters", multiple=True, help="DIM=VALUE (repeatable)")
@json_option
def top(
    api: Api,
    meter: str,
    from_: str | None,
    to: str | None,
    by: str,
    k: int,
    subject: tuple[str, ...],
    filters: tuple[str, ...],
    as_json: bool,
) -> None:
    """The top K subjects or group values of METER (GET /api/v1/meters/{meter}/top)."""
    params = [(n, v) for n, v in (("from", from_), ("to", to), ("by", by), ("k", str(k))) if v]
    params += [("subject", s) for s in subject]
    for f in filters:
        dim, sep, value = f.partition("=")
        if not sep:
            raise InvalidInput(f"--filter {f!r} must be DIM=VALUE")
        params.append((f"filterGroupBy[{dim}]", value))
    answer = api.get(f"/api/v1/meters/{meter}/top", params)
    if as_json:
        print_json(answer)
        return
    rows = [(r["rank"], text(r["key"]), text(r["value"])) for r in answer["data"]]
    print_table(("rank", answer["by"], "value"), rows, "no usage in the range")
    if answer["total"] is not None:
        others = answer["candidates"] - len(rows)
        click.echo(f"total {text(answer['total'])}, the other {others}: {text(answer['rest'])}")


COMMANDS = [top]
