"""``meterline verify``: the ledger's hash chain and its rollups, on the data directory (or, in
scale mode, every log partition's chain in ClickHouse).

Exit status: 0 when everything verifies, 1 when something does not (the first entry that
changed, moved or went missing is named), 2 for bad input (an unreadable head file or key).
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TYPE_CHECKING

import click

from meterline.cli.store_cmds import _config, config_options
from meterline.domain.clock import rfc3339

if TYPE_CHECKING:  # the config (and its jsonpath) loads only when a command runs, not for --help
    from meterline.config import Config


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
    changed, moved or went missing (scale mode: per partition, by offset)."""
    from meterline.bootstrap import open_chain
    from meterline.domain.clock import SystemClock
    from meterline.domain.integrity import heads
    from meterline.services.integrity import check_signature, verify_chain
    from meterline.services.integrity import export_head as export

    config = _config(config_path, data_dir)
    if config.storage.engine == "scale":
        _verify_scale(config, against, public_key, export_head, sign_key)
        _rollups(config, skip_rollups)
        click.echo("verified")
        return
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
        audit = source.audit_trail()
        if audit is not None:
            _fail(audit.message)
        click.echo("corrections: every record matches its ledger entry")
        since, uncovered = source.uncovered_amends()
        if uncovered:
            click.echo(
                f"corrections: the reason and actor of {uncovered} amend(s) before entry {since} are in their"
                " records only (written before the chain covered them)"
            )
        if export_head is not None:
            written = export(source, rfc3339(SystemClock().now_us()), key)
            _write(export_head, heads.encode(written))
    _rollups(config, skip_rollups)
    click.echo("verified")


def _rollups(config: Config, skip: bool) -> None:
    """The rollups against a rebuild from the ledger (scale mode: from the raw events, as
    ``rebuild --check``, the sink workers held off meanwhile)."""
    from meterline.bootstrap import rebuild_store

    if skip:
        return
    rollups = rebuild_store(config, check=True)
    if not rollups.identical:
        for line in rollups.details:
            click.echo(f"  {line}")
        diffs = ", ".join(f"{t}: {n}" for t, n in rollups.differences.items() if n)
        _fail(f"rollups differ from a rebuild from the ledger ({diffs}); run meterline rebuild to repair")
    click.echo("rollups: identical to a rebuild from the ledger")


def _verify_scale(
    config: Config, against: Path | None, public_key: Path | None, export_head: Path | None, sign_key: Path | None
) -> None:
    """Scale mode: every partition's chain from ClickHouse; each partition's first break is named."""
    from meterline.bootstrap import open_correction_journal, open_partition_chain
    from meterline.domain.clock import SystemClock
    from meterline.domain.integrity import heads
    from meterline.services.integrity import check_signature
    from meterline.services.journal_audit import audit_journal
    from meterline.services.partition_chain import export_partition_heads, verify_partitions

    doc = None if against is None else heads.decode_partitions(_read(against))
    signer = None if doc is None else check_signature(doc, None if public_key is None else _read(public_key))
    key = None if sign_key is None else _read(sign_key)
    with open_partition_chain(config) as source:
        ledger = source.ledger_id()
        if doc is not None and doc.ledger != ledger:
            _fail(f"the head file is of another ledger ({doc.ledger}, this one is {ledger})")
        report = verify_partitions(source, doc)
        entries = sum(p.entries + p.pruned + p.erased for p in report.partitions)
        pruned, erased = sum(p.pruned for p in report.partitions), sum(p.erased for p in report.partitions)
        click.echo(
            f"ledger {ledger}: {len(report.partitions)} partitions, {entries} entries walked"
            f" ({pruned} pruned, {erased} erased)"
        )
        for p in report.partitions:
            click.echo(f"  {p.stream}: {p.links} links, head offset {p.head.seq - 1}, hash {p.head.hash.hex()}")
            if p.anchor:
                click.echo(f"  {p.stream}: offsets before {p.anchor} were applied before the partition had the chain")
        for problem in report.problems:
            click.echo(f"FAILED: {problem.message}", err=True)
        if not report.ok:
            sys.exit(1)
        with open_correction_journal(config) as journal:
            audit = audit_journal(source, journal, {p.stream: p.head.seq for p in report.partitions})
        if audit.problem is not None:
            _fail(audit.problem.message)
        click.echo(f"corrections: every record matches its ledger entry ({audit.records} records)")
        if audit.uncovered:
            click.echo(
                f"corrections: the reason and actor of {audit.uncovered} amend(s) are in the journal only"
                " (written before the chain covered them)"
            )
        if doc is not None:
            by = f", signed by key {signer}" if signer else " (unsigned)"
            click.echo(f"matches the exported heads of {len(doc.heads)} partitions{by}")
        if export_head is not None:
            written = export_partition_heads(source, rfc3339(SystemClock().now_us()), key)
            _write(export_head, heads.encode(written))


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
    if report.erasure_anchor is not None:
        pos, at = report.erasure_anchor
        click.echo(
            f"erasure-chain links 1 to {pos} are of erasures made before the store had the erasure chain; they were"
            f" linked on {rfc3339(at)} and their erased entries are proven unchanged since then only"
        )
    if report.erasures.seq:
        click.echo(f"erasure chain: link {report.erasures.seq}, hash {report.erasures.hash.hex()}")
    if report.against is not None and report.problem is None:
        by = f", signed by key {signer}" if signer else " (unsigned)"
        click.echo(f"matches the exported head at entry {report.against.seq}{by}")
        done = report.against_erasures
        if done is not None and report.erasures.seq > done.seq:
            ids = ", ".join(str(i) for i in report.later_erasures)
            click.echo(
                f"erasure-chain links {done.seq + 1} to {report.erasures.seq} (erasures {ids}) were made after the"
                " exported head: they changed entries before it; `meterline erasures` says who made them, when and why"
            )


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
