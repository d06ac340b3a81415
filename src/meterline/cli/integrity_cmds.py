"""``meterline verify``: the ledger's hash chain and its rollups, on the data directory.

Exit status: 0 when everything verifies, 1 when something does not (the first entry that
changed, moved or went missing is named), 2 for bad input (an unreadable head file or key).
"""

from __future__ import annotations

import sys
from pathlib import Path

import click

from meterline.cli.store_cmds import _config, config_options
from meterline.domain.clock import rfc3339


@click.command("verify")
@config_options
@click.option(
    "--against",
    type=click.Path(path_type=Path, dir_okay=False),
    help="a head file exported earlier: prove the ledger up to it unchanged",
)
@click.option(
    "--public-key",
    type=click.Path(path_type=Path, dir_okay=False),
    help="PEM Ed25519 public key the --against head must be signed with",
)
@click.option(
    "--export-head",
    type=click.Path(path_type=Path, dir_okay=False, allow_dash=True),
    help="write the current chain head to this file ('-': stdout) after verifying",
)
@click.option(
    "--sign-key",
    type=click.Path(path_type=Path, dir_okay=False),
    help="PEM Ed25519 private key to sign the exported head with (openssl genpkey -algorithm ed25519)",
)
@click.option("--skip-rollups", is_flag=True, help="check the chain only, not the rollups against the ledger")
def verify(
    config_path: Path | None,
    data_dir: Path | None,
    against: Path | None,
    public_key: Path | None,
    export_head: Path | None,
    sign_key: Path | None,
    skip_rollups: bool,
) -> None:
    """Verify the ledger's hash chain (and the rollups); exit 1 naming the first entry that
    changed, moved or went missing."""
    from meterline.bootstrap import open_chain, rebuild_store
    from meterline.domain.clock import SystemClock
    from meterline.domain.integrity import heads
    from meterline.services.integrity import check_signature, verify_chain
    from meterline.services.integrity import export_head as export

    config = _config(config_path, data_dir)
    doc = None if against is None else heads.decode(_read(against))
    signer = None if doc is None else check_signature(doc, None if public_key is None else _read(public_key))
    key = None if sign_key is None else _read(sign_key)
    with open_chain(config) as source:
        report = verify_chain(source, doc)
        ledger = source.ledger_id()
        if doc is not None and doc.ledger != ledger:
            _fail(f"the head file is of another ledger ({doc.ledger}, this one is {ledger})")
        _print_chain(report, ledger, signer)
        if report.problem is not None:
            _fail(report.problem.message)
        if export_head is not None:
            written = export(source, rfc3339(SystemClock().now_us()), key)
            _write(export_head, heads.encode(written))
    if not skip_rollups:
        rollups = rebuild_store(config, check=True)
        if not rollups.identical:
            diffs = ", ".join(f"{t}: {n}" for t, n in rollups.differences.items() if n)
            _fail(f"rollups differ from a rebuild from the ledger ({diffs}); run meterline rebuild to repair")
        click.echo("rollups: identical to a rebuild from the ledger")
    click.echo("verified")


def _print_chain(report: object, ledger: str, signer: str | None) -> None:
    from meterline.services.integrity import ChainReport

    assert isinstance(report, ChainReport)
    click.echo(f"ledger {ledger}: {report.entries} entries walked ({report.pruned} pruned, {report.erased} erased)")
    click.echo(f"head: entry {report.head.seq}, hash {report.head.hash.hex()}")
    if report.anchor is not None and report.anchor[0]:
        seq, at = report.anchor
        click.echo(
            f"entries 1 to {seq} were in the store before it had the chain; they were linked on {rfc3339(at)}"
            " and are proven unchanged since then only"
        )
    if report.against is not None and report.problem is None:
        by = f", signed by key {signer}" if signer else " (unsigned)"
        click.echo(f"matches the exported head at entry {report.against.seq}{by}")


def _fail(message: str) -> None:
    click.echo(f"FAILED: {message}", err=True)
    sys.exit(1)


def _read(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise click.BadParameter(f"cannot read {path}: {exc.strerror}") from exc


def _write(path: Path, data: bytes) -> None:
    if str(path) == "-":
        sys.stdout.buffer.write(data)
        sys.stdout.flush()
        return
    try:
        path.write_bytes(data)
    except OSError as exc:
        raise click.BadParameter(f"cannot write {path}: {exc.strerror}") from exc
    click.echo(f"head written to {path}")


COMMANDS = [verify]
