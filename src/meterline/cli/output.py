"""How the server commands print: exact numbers, tables that never wrap ids, ``--json``.

rich is imported by the functions that draw tables, so commands that print none never load it.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from decimal import Decimal
from typing import TYPE_CHECKING, Any

import click
import msgspec

if TYPE_CHECKING:
    from rich.console import Console

_encode = msgspec.json.Encoder(decimal_format="number").encode

json_option = click.option("--json", "as_json", is_flag=True, help="print the server's JSON instead of a table")


def console() -> Console:
    """stdout; when it is not a terminal, wide enough that ids and times never wrap."""
    from rich.console import Console

    out = Console()
    return out if out.is_terminal else Console(width=max(out.width, 250))


def print_json(data: object) -> None:
    click.echo(msgspec.json.format(_encode(data), indent=2))


def print_table(columns: Sequence[str], rows: Iterable[Sequence[object]], empty: str = "nothing to show") -> None:
    from rich.table import Table
    from rich.text import Text

    rows = list(rows)
    if not rows:
        click.echo(empty, err=True)
        return
    table = Table(*columns)
    for row in rows:
        table.add_row(*(Text(text(v)) for v in row))  # values are never markup
    console().print(table)


def print_fields(fields: Iterable[tuple[str, object]]) -> None:
    """A two-column ``name  value`` listing of one object."""
    from rich.table import Table
    from rich.text import Text

    table = Table(show_header=False, box=None, pad_edge=False)
    table.add_column(style="bold")
    table.add_column()
    for name, value in fields:
        table.add_row(name, Text(text(value)))
    console().print(table)


def text(value: object) -> str:
    """How a JSON value reads in a table: exact numbers, ``-`` for nothing, yes/no."""
    if value is None or value == "" or value == []:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, Decimal):
        return f"{value:f}"
    if isinstance(value, list):
        return ", ".join(text(v) for v in value)
    if isinstance(value, dict):
        return ", ".join(f"{k}={text(v)}" for k, v in value.items())
    return str(value)


def period_text(period: dict[str, Any] | None) -> str:
    return "-" if not period else f"{period['from']} → {period['to']}"
