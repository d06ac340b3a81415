"""Producer-side commands: ``replay`` (send a dead producer's spool) and ``collect`` (collectors).

They talk to a running server through the client SDK (``meterline.client``), after one
check with the CLI's client (an empty event batch) so that a wrong URL, key or TLS setting is
the usual one-line error before any event is touched.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from meterline.cli.client import Api, RequestFailed, server_options, tls_of

_PREFER = {"Content-Type": "application/cloudevents-batch+json", "Prefer": "return=representation"}


def producer_options(f: Callable[..., Any]) -> Callable[..., Any]:
    """The server options with the API key optional: a client certificate mapped to a namespace
    may stand in for it."""
    f = server_options(f)
    for param in getattr(f, "__click_params__", []):
        if param.name == "api_key":
            param.required = False
            param.help = "or METERLINE_API_KEY (not needed with a client certificate the server maps to a namespace)"
    return f


def preflight(api: Api) -> None:
    """Send an empty batch: reachable, TLS right, allowed to ingest, and a meterline answer."""
    report = api.post("/api/v1/events", content=b"[]", headers=_PREFER)
    if not isinstance(report, dict) or not {"accepted", "duplicates", "rejected"} <= report.keys():
        raise RequestFailed(
            f"POST {api.url}/api/v1/events did not answer with an ingest report; is {api.url} a meterline"
            " server? check --url or METERLINE_URL"
        )


@click.command("replay")
@producer_options
@click.argument("spool_dir", type=click.Path(path_type=Path, file_okay=False))
def replay_cmd(
    url: str,
    api_key: str | None,
    timeout_s: float | None,
    ca_file: str | None,
    client_cert: str | None,
    client_key: str | None,
    spool_dir: Path,
) -> None:
    """Send the events a stopped producer left in SPOOL_DIR, exactly once (safe to run again).

    Slots a running producer owns are skipped: it sends them itself. Torn records (a producer
    killed mid-write) are reported and never sent. Exit 1 if events are left unsent.
    """
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    from meterline.client import ClientOptions, pending_in, replay

    tls = tls_of(ca_file, client_cert, client_key)
    with Api(url, api_key, timeout_s or 60.0, tls) as api:
        preflight(api)
    total = pending_in(spool_dir) if spool_dir.is_dir() else 0
    options = ClientOptions(spool_dir=spool_dir, max_attempts=10, request_timeout=timeout_s or 60.0, tls=tls)
    console = Console(stderr=True)
    columns = (TextColumn("replay"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn())
    with Progress(*columns, console=console, disable=not console.is_terminal) as bar:
        task = bar.add_task("replay", total=total)
        report = replay(spool_dir, url, api_key, options, progress=lambda n: bar.advance(task, n))
    for torn in report.torn:
        click.echo(f"torn record in {torn.segment} at byte {torn.offset} ({torn.size} bytes, {torn.reason}): not sent")
    for path in report.busy:
        click.echo(f"skipped {path}: a running producer owns it", err=True)
    stats = report.stats
    assert stats is not None
    rejected = stats.dropped_by_reason["rejected"]
    lost = stats.dropped - rejected
    click.echo(
        f"sent {stats.sent} events ({stats.accepted} new, {stats.duplicates} already recorded), rejected"
        f" {rejected}, given up {lost}, left {stats.pending}, torn records {len(report.torn)}"
    )
    if stats.pending or lost:
        raise SystemExit(1)


COMMANDS = [replay_cmd]
