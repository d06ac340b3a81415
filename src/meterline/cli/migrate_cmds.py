"""``meterline migrate``: copy an embedded ledger into another deployment, exactly once."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from meterline.cli.store_cmds import _config, config_options
from meterline.domain.auth.keys import check_namespace


@click.command()
@config_options
@click.option(
    "--to",
    "to_config",
    type=click.Path(path_type=Path, dir_okay=False),
    help="TOML config of the target deployment",
)
@click.option("--to-data-dir", type=click.Path(path_type=Path, file_okay=False), help="target data directory")
@click.option("--namespace", help="migrate this namespace only (default: every namespace)")
def migrate(
    config_path: Path | None,
    data_dir: Path | None,
    to_config: Path | None,
    to_data_dir: Path | None,
    namespace: str | None,
) -> None:
    """Append every event of this embedded store's ledger to the target's ledger, in order,
    as ingest would: safe to run again (events already there come back as duplicates), and
    safe while a server runs on the source. Meters, customers and invoices are not copied:
    define the target's meters first (its rollups then match the source's totals)."""
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    from meterline.bootstrap import open_migration
    from meterline.config import load_config
    from meterline.services.migrate import migrate as run

    if to_config is None and to_data_dir is None:
        raise click.UsageError("name the target: --to CONFIG or --to-data-dir DIR")
    if namespace is not None:
        check_namespace(namespace)
    target = load_config(to_config, {"storage": {"data_dir": to_data_dir}})
    console = Console(stderr=True)
    columns = (TextColumn("migrate"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn())
    with open_migration(_config(config_path, data_dir), target) as (source, ledger):
        with Progress(*columns, console=console, disable=not console.is_terminal) as bar:
            task = bar.add_task("migrate", total=source.position())
            report = run(source, ledger, namespace=namespace, progress=lambda n: bar.advance(task, n))
    for refused in report.refused[:50]:
        where = f"ledger entry {refused.seq} ({refused.namespace}, id={refused.event_id})"
        click.echo(f"{where}: {refused.reason}: {refused.message}", err=True)
    click.echo(
        f"read {report.read} events up to source position {report.source_position}: accepted {report.accepted},"
        f" already there {report.duplicates - report.conflicts}, conflicting {report.conflicts},"
        f" quarantined {report.quarantined}, rejected {len(report.refused)}"
    )
    if not report.complete:
        click.echo(
            "the target does not hold every event as the source does (see above); fix the target (its meters,"
            " customers or unknown-subject policy) and run the migration again",
            err=True,
        )
        sys.exit(1)
