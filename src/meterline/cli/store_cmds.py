"""Commands that work on the data directory: serve, keys, rebuild, check-config.

The configuration and storage modules are imported by the commands that use them, so that
``meterline --help`` and the commands that talk to a server never load them.
"""

from __future__ import annotations

import socket
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from meterline.domain.auth.keys import DEFAULT_NAMESPACE, check_namespace, parse_scopes
from meterline.domain.clock import rfc3339
from meterline.domain.errors import ConfigError

if TYPE_CHECKING:
    from starlette.types import ASGIApp

    from meterline.config import Config


def config_options(f: Callable[..., Any]) -> Callable[..., Any]:
    f = click.option("--config", "config_path", type=click.Path(path_type=Path), help="TOML config file")(f)
    return click.option("--data-dir", type=click.Path(path_type=Path), help="data directory")(f)


def _config(config_path: Path | None, data_dir: Path | None, **server: Any) -> Config:
    from meterline.config import load_config

    return load_config(config_path, {"storage": {"data_dir": data_dir}, "server": server})


@click.command()
@config_options
@click.option("--host", help="address to listen on (default 127.0.0.1)")
@click.option("--port", type=int, help="port (default 8888)")
@click.option(
    "--tls-cert", type=click.Path(path_type=Path), help="PEM certificate: serve HTTPS only (or METERLINE_TLS_CERT)"
)
@click.option("--tls-key", type=click.Path(path_type=Path), help="PEM key of --tls-cert (or METERLINE_TLS_KEY)")
@click.option(
    "--tls-client-ca",
    type=click.Path(path_type=Path),
    help="PEM CA bundle: require client certificates it signed, mTLS (or METERLINE_TLS_CLIENT_CA)",
)
def serve(
    config_path: Path | None,
    data_dir: Path | None,
    host: str | None,
    port: int | None,
    tls_cert: Path | None,
    tls_key: Path | None,
    tls_client_ca: Path | None,
) -> None:
    """Run the server: embedded mode (SQLite in the data directory), or an API node of scale mode
    (``storage.engine = "scale"``: Kafka, ClickHouse and PostgreSQL of the config)."""
    from meterline.api.app import create_app
    from meterline.cli.logs import setup_logging

    tls = {"tls_cert": tls_cert, "tls_key": tls_key, "tls_client_ca": tls_client_ca}
    config = _config(config_path, data_dir, host=host, port=port, **tls)
    setup_logging(config.log.level, config.log.format)
    # the address first: a port in use is one error line, before any store is made or a key shown
    sock = listen(config.server.host, config.server.port)
    bootstrap = _bootstrap_key(config)
    app = create_app(config)
    where = f"{'https' if config.server.tls_cert else 'http'}://{config.server.host}:{config.server.port}"
    if config.storage.engine == "scale":
        stored = f"scale mode: topic {config.kafka.topic!r}, ClickHouse database {config.clickhouse.database!r}"
    else:
        stored = f"data in {config.storage.data_dir.resolve()}"
    click.echo(f"meterline listening on {where} ({stored})")
    if bootstrap:
        click.echo("A new admin API key was created. It is shown only this once; keep it:")
        click.echo(f"  {bootstrap}")
    click.echo("Authenticate with: Authorization: Bearer <key>   (more keys: meterline keys create --scope ingest)")
    sys.stdout.flush()
    run_http(app, config.server.host, config.server.port, config, sock=sock)


@click.command()
@config_options
def worker(config_path: Path | None, data_dir: Path | None) -> None:
    """Run a sink worker (scale mode): consume the ledger topic's partitions into ClickHouse."""
    import signal

    from meterline.bootstrap import open_worker
    from meterline.cli.logs import setup_logging

    config = _config(config_path, data_dir)
    setup_logging(config.log.level, config.log.format)
    running = open_worker(config)
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: running.sink.stop())
    click.echo(
        f"meterline worker: topic {config.kafka.topic!r} into ClickHouse database {config.clickhouse.database!r}"
    )
    sys.stdout.flush()
    try:
        running.sink.run()
    finally:
        running.close()


def listen(host: str, port: int) -> socket.socket:
    """A TCP socket bound to ``host:port`` (as uvicorn binds one: IPv6 when the host has a
    colon, ``SO_REUSEADDR``); a port in use or an address not of this machine is a
    :class:`ConfigError` naming it."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        reason = exc.strerror or str(exc)
        raise ConfigError(
            f"cannot listen on {host}:{port} ({reason.lower()}); is another server running there?"
            " choose another --port / --host (or server.port / server.host)"
        ) from None
    sock.set_inheritable(True)
    return sock


def run_http(
    app: ASGIApp, host: str, port: int, config: Config | None = None, *, sock: socket.socket | None = None
) -> None:
    """Serve ``app`` until SIGINT or SIGTERM (then finish the requests in flight, 5 s at most),
    on ``sock`` when given (bound by :func:`listen`). With ``server.tls_cert`` in ``config``:
    HTTPS only, with the client-certificate facts in each request's scope (``meterline.api.tls``)."""
    import uvicorn

    from meterline.runtime.collector import tune_for_throughput

    tls: dict[str, Any] = {}
    server = config.server if config is not None else None
    if server is not None and server.tls_cert is not None:
        from meterline.api.tls import TLSHttpToolsProtocol
        from meterline.runtime.tls import server_ssl_context

        cert, key, ca, auth = server.tls_cert, server.tls_key, server.tls_client_ca, server.tls_client_auth
        tls = {
            "ssl_certfile": str(cert),  # uvicorn serves TLS when a certificate is set; the context below is used
            "ssl_context_factory": lambda _config, _default: server_ssl_context(cert, key, ca, auth),
            "http": TLSHttpToolsProtocol,
        }
    tune_for_throughput()
    settings = uvicorn.Config(
        app,
        host=host,
        port=port,
        log_config=None,
        access_log=False,
        loop="uvloop",
        **{"http": "httptools", **tls},
        timeout_graceful_shutdown=5,
    )
    serving = uvicorn.Server(settings)
    try:
        serving.run(sockets=None if sock is None else [sock])
    except KeyboardInterrupt:
        pass
    if not serving.started:
        sys.exit(3)  # as uvicorn.run: the application failed to start (the log says why)


def _bootstrap_key(config: Config) -> str | None:
    from meterline.bootstrap import open_keys

    if not config.auth.bootstrap_admin_key:
        return None
    with open_keys(config) as keys:
        return keys.bootstrap_admin()


@click.group()
def keys() -> None:
    """Create, list and revoke API keys (works on the data directory, also while the server runs)."""


@keys.command("create")
@config_options
@click.option("--scope", "scopes", multiple=True, required=True, help="ingest, read or admin (repeatable)")
@click.option("--name", default="api key", help="a label for the key")
@click.option("--namespace", default=DEFAULT_NAMESPACE, help="the namespace the key works in")
def keys_create(
    config_path: Path | None, data_dir: Path | None, scopes: tuple[str, ...], name: str, namespace: str
) -> None:
    """Create a key and print it (shown only once)."""
    from meterline.bootstrap import open_keys

    config = _config(config_path, data_dir)
    scope_set = parse_scopes(list(scopes))
    check_namespace(namespace)
    with open_keys(config) as service:
        key, secret = service.create(namespace, name, scope_set)
    click.echo(secret)
    click.echo(f"id={key.id} namespace={key.namespace} scopes={','.join(sorted(scopes))}", err=True)


@keys.command("list")
@config_options
def keys_list(config_path: Path | None, data_dir: Path | None) -> None:
    """List keys (ids and prefixes, never secrets)."""
    from meterline.bootstrap import open_keys

    with open_keys(_config(config_path, data_dir), create=False) as service:
        for k in service.list(None):
            state = "revoked " + rfc3339(k.revoked_us) if k.revoked_us else "active"
            click.echo(f"{k.id}\t{k.prefix}…\t{k.namespace}\t{','.join(sorted(k.scopes))}\t{k.name}\t{state}")


@keys.command("revoke")
@config_options
@click.argument("key_id")
def keys_revoke(config_path: Path | None, data_dir: Path | None, key_id: str) -> None:
    """Revoke a key by id."""
    from meterline.bootstrap import open_keys

    with open_keys(_config(config_path, data_dir), create=False) as service:
        service.revoke(key_id, None)
    click.echo(f"revoked {key_id}")


@click.command("rebuild")
@config_options
@click.option("--check", is_flag=True, help="only compare; change nothing")
def rebuild_cmd(config_path: Path | None, data_dir: Path | None, check: bool) -> None:
    """Recompute rollups from the ledger (scale mode: from the raw events table, the sink workers held
    off meanwhile); report and replace any difference."""
    from meterline.bootstrap import rebuild_store

    report = rebuild_store(_config(config_path, data_dir), check=check)
    diffs = ", ".join(f"{t}: {n}" for t, n in report.differences.items())
    click.echo(f"replayed {report.events} ledger events; differing rows — {diffs}")
    for line in report.details:
        click.echo(f"  {line}")
    if report.identical:
        click.echo("rollups are identical to a rebuild from the ledger")
    elif check:
        click.echo("rollups DIFFER from the ledger (run without --check to repair)")
        sys.exit(1)
    else:
        click.echo("rollups were replaced by the rebuild")


@click.command("check-config")
@config_options
def check_config(config_path: Path | None, data_dir: Path | None) -> None:
    """Validate the configuration and print it."""
    config = _config(config_path, data_dir)
    click.echo(config.model_dump_json(indent=2))


@click.command("upgrade-dedupe")
@config_options
def upgrade_dedupe_cmd(config_path: Path | None, data_dir: Path | None) -> None:
    """Convert the shared dedupe store of an older version to keyed names (scale mode; with the
    Redis store, stop every node of the older version first)."""
    from meterline.bootstrap import upgrade_dedupe
    from meterline.domain.clock import SystemClock

    click.echo(upgrade_dedupe(_config(config_path, data_dir), SystemClock()))


COMMANDS = [serve, worker, keys, rebuild_cmd, check_config, upgrade_dedupe_cmd]
