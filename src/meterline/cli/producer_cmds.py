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


def _sidecar_options(f: Callable[..., Any]) -> Callable[..., Any]:
    f = click.option("--once", is_flag=True, help="one reading, send it, exit (for cron or a test)")(f)
    f = click.option("--state", "state_path", help="state file (default: CONFIG with .state.json)")(f)
    f = click.option(
        "--spool-dir", help="on-disk spool for the events (survives restarts and outages); default: memory"
    )(f)
    f = click.option("--config", "config_path", required=True, metavar="FILE", help="the collector's TOML file")(f)
    return producer_options(f)


def _run_collector(
    url: str,
    api_key: str | None,
    timeout_s: float | None,
    tls_args: tuple[str | None, str | None, str | None],
    spool_dir: str | None,
    once: bool,
    interval: float,
    read: Callable[[Any], int],
) -> None:
    """Preflight, then ``read(client)`` at every multiple of ``interval`` until SIGTERM/SIGINT."""
    import signal
    import threading
    import time

    from meterline.client import Client, ClientOptions

    tls = tls_of(*tls_args)
    options = ClientOptions(source="meterline-collect", spool_dir=spool_dir, request_timeout=timeout_s or 60.0, tls=tls)
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    with Client(url, api_key, options) as client:
        while True:
            n = read(client)
            click.echo(f"recorded {n} events", err=True)
            if once:
                client.flush(options.close_timeout + (timeout_s or 60.0))
                break
            if stop.wait(interval - time.time() % interval):
                break
    stats = client.stats
    click.echo(f"sent {stats.sent}, pending {stats.pending}, dropped {stats.dropped}", err=True)


@click.group()
def collect() -> None:
    """Collectors: turn infrastructure signals into usage events (run as a sidecar)."""


@collect.command("prometheus")
@_sidecar_options
def collect_prometheus(
    url: str,
    api_key: str | None,
    timeout_s: float | None,
    ca_file: str | None,
    client_cert: str | None,
    client_key: str | None,
    config_path: str,
    spool_dir: str | None,
    state_path: str | None,
    once: bool,
) -> None:
    """Scrape Prometheus/OpenMetrics endpoints: counter increases and gauge values become events."""
    import httpx

    from meterline.collectors.prometheus import collect_once, load_targets
    from meterline.collectors.state import State

    with Api(url, api_key, timeout_s or 60.0, tls_of(ca_file, client_cert, client_key)) as api:
        preflight(api)
    targets = _load(load_targets, config_path)
    state = State(Path(state_path) if state_path else Path(config_path).with_suffix(".state.json"))
    interval = min(t.interval for t in targets)
    with httpx.Client(timeout=timeout_s or 10.0) as http:

        def read(client: Any) -> int:
            n = 0
            for target in targets:
                try:
                    n += collect_once(target, http, client, state)
                except httpx.HTTPError as exc:
                    click.echo(f"warning: scraping {target.url} failed ({type(exc).__name__}); next time", err=True)
            return n

        _run_collector(url, api_key, timeout_s, (ca_file, client_cert, client_key), spool_dir, once, interval, read)


@collect.command("host")
@_sidecar_options
def collect_host(
    url: str,
    api_key: str | None,
    timeout_s: float | None,
    ca_file: str | None,
    client_cert: str | None,
    client_key: str | None,
    config_path: str,
    spool_dir: str | None,
    state_path: str | None,
    once: bool,
) -> None:
    """Measure processes and cgroups: CPU-seconds, memory GB-seconds, disk and network bytes per customer."""
    from meterline.collectors.host import collect_once, load_host_config
    from meterline.collectors.state import State

    with Api(url, api_key, timeout_s or 60.0, tls_of(ca_file, client_cert, client_key)) as api:
        preflight(api)
    config = _load(load_host_config, config_path)
    state = State(Path(state_path) if state_path else Path(config_path).with_suffix(".state.json"))
    tls_args = (ca_file, client_cert, client_key)
    _run_collector(
        url, api_key, timeout_s, tls_args, spool_dir, once, config.interval, lambda c: collect_once(config, c, state)
    )


def _load(loader: Callable[[Path], Any], path: str) -> Any:
    from meterline.domain.errors import InvalidInput

    try:
        return loader(Path(path))
    except FileNotFoundError:
        raise InvalidInput(f"config file {path!r} does not exist") from None
    except (ValueError, TypeError) as exc:  # TOML syntax, unknown or missing keys
        raise InvalidInput(f"config file {path!r}: {exc}") from None


COMMANDS = [replay_cmd, collect]
