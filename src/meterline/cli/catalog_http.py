"""What the catalog commands (customers, features, entitlements, alerts, portal) share: a JSON
client for a running server, option types validated before anything is sent, and output.

Errors: every failure becomes a :class:`~meterline.errors.MeterlineError` whose message is
meant for a person (the problem+json ``detail`` and ``code``, or why the server could not be
reached); ``meterline``'s top-level group prints it and exits 2. Bad option values are click
``BadParameter`` errors (also exit 2, with the option named).
"""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable, Iterable, Sequence
from datetime import datetime
from decimal import Decimal, InvalidOperation
from typing import Any

import click
import httpx
import msgspec
from rich.console import Console
from rich.table import Table
from rich.text import Text

from meterline.cli.client_cmds import server_options
from meterline.errors import MeterlineError

_encode = msgspec.json.Encoder(decimal_format="number").encode
_decode = msgspec.json.Decoder(float_hook=Decimal).decode  # numbers stay exact


class Api:
    """A JSON client for ``/api/v1``: bodies may be msgspec Structs; answers are decoded JSON."""

    def __init__(self, url: str, api_key: str) -> None:
        self.url = url
        self._http = httpx.Client(base_url=url, headers={"Authorization": f"Bearer {api_key}"}, timeout=60.0)

    def __enter__(self) -> Api:
        return self

    def __exit__(self, *exc: object) -> None:
        self._http.close()

    def get(self, path: str, params: Sequence[tuple[str, str]] = ()) -> Any:
        return self._send("GET", path, params=tuple(params))

    def post(self, path: str, body: object = None) -> Any:
        return self._send("POST", path, body=body)

    def put(self, path: str, body: object) -> Any:
        return self._send("PUT", path, body=body)

    def delete(self, path: str) -> None:
        self._send("DELETE", path)

    def _send(self, method: str, path: str, body: object = None, params: tuple[tuple[str, str], ...] = ()) -> Any:
        content = None if body is None else _encode(body)
        headers = {} if content is None else {"Content-Type": "application/json"}
        try:
            response = self._http.request(method, path, content=content, headers=headers, params=params)
        except httpx.TimeoutException:
            raise MeterlineError(f"the server at {self.url} did not answer in time") from None
        except httpx.HTTPError as exc:
            raise MeterlineError(
                f"cannot reach the server at {self.url} ({type(exc).__name__}); is it running?"
            ) from None
        if response.status_code >= 400:
            raise MeterlineError(problem_text(response))
        return _decode(response.content) if response.content else None


def problem_text(response: httpx.Response) -> str:
    """``detail (status code)`` from a problem+json answer, or the status and body text."""
    try:
        body = _decode(response.content)
    except msgspec.DecodeError:
        body = None
    if not isinstance(body, dict) or "detail" not in body:
        return f"the server answered {response.status_code}: {response.text.strip()[:500]}"
    code = body.get("code") or response.reason_phrase
    return f"{body['detail']} ({response.status_code} {code})"


def with_api(f: Callable[..., Any]) -> Callable[..., Any]:
    """Add ``--url``/``--api-key`` and call ``f(api, **options)`` with an open :class:`Api`."""

    @functools.wraps(f)
    def run(url: str, api_key: str, **kwargs: Any) -> Any:
        with Api(url, api_key) as api:
            return f(api, **kwargs)

    return server_options(run)


json_option = click.option("--json", "as_json", is_flag=True, help="print the server's JSON instead of a table")


# -- option values --------------------------------------------------------------------------


def parse_decimal(raw: str) -> Decimal | None:
    """A finite, non-negative decimal (kept exact), or None when ``raw`` is not one."""
    try:
        number = Decimal(raw.strip())
    except InvalidOperation:
        return None
    return number if number.is_finite() and number >= 0 else None


def decimal_value(ctx: click.Context, param: click.Parameter, value: str | None) -> Decimal | None:
    """A click callback: the option as an exact non-negative number."""
    if value is None:
        return None
    number = parse_decimal(value)
    if number is None:
        raise click.BadParameter(f"{value!r} is not a non-negative number", ctx, param)
    return number


def instant_value(ctx: click.Context, param: click.Parameter, value: str | None) -> datetime | None:
    """A click callback: an ISO 8601 instant with a UTC offset (2026-03-01T00:00:00+01:00)."""
    if value is None:
        return None
    try:
        t = datetime.fromisoformat(value)
    except ValueError:
        raise click.BadParameter(f"{value!r} is not an ISO 8601 time (e.g. 2026-03-01T00:00:00Z)", ctx, param) from None
    if t.utcoffset() is None:
        raise click.BadParameter(f"{value!r} needs a UTC offset (Z or +01:00)", ctx, param)
    return t


def pairs(ctx: click.Context, param: click.Parameter, values: tuple[str, ...]) -> dict[str, str]:
    """A click callback turning repeated ``K=V`` options into a dict."""
    out: dict[str, str] = {}
    for item in values:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise click.BadParameter(f"{item!r} must be KEY=VALUE", ctx, param)
        out[key.strip()] = value
    return out


# -- output ---------------------------------------------------------------------------------


def console() -> Console:
    """stdout; when it is not a terminal, wide enough that ids and times never wrap."""
    out = Console()
    return out if out.is_terminal else Console(width=max(out.width, 250))


def print_json(data: object) -> None:
    click.echo(msgspec.json.format(_encode(data), indent=2))


def print_table(columns: Sequence[str], rows: Iterable[Sequence[object]], empty: str = "nothing to show") -> None:
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


def fail(message: str, code: int = 1) -> None:
    """Print ``message`` on stderr and exit with ``code`` (a result, not an error)."""
    click.echo(message, err=True)
    sys.exit(code)
