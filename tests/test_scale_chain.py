"""The hash chain in scale mode, as real processes on the local stack: events written through
the Kafka ledger and applied by a real sink worker leave one chain per partition in
ClickHouse, and ``meterline verify --config`` passes on it untouched and names the first entry
(partition, offset, key) whose row was edited, deleted or moved by hand in ClickHouse; a
removed last link is seen; exported heads (signed or not) still hold after later appends and
fail once a prefix was edited, even after every link was recomputed; and a batch redone after
its worker was killed around the chain insert leaves one chain, no fork.

Hand edits are made on a copy of the site's ClickHouse database (every table, one per test),
so the tests share one site and its applied events."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from scale_site import TOKEN_METERS, Site, site
from stack.launch import Stack
from test_scale_zombie import T0, Producer, wait_until

from meterline.adapters.clickhouse.chain import ENTRY_COLUMNS, stored_digest, stored_digest_v2
from meterline.adapters.clickhouse.client import Connection
from meterline.adapters.clickhouse.schema import CHAIN, ERASED, EVENTS, create
from meterline.domain.integrity.batches import FORMAT, batch_link, entry_digest
from meterline.domain.integrity.chain import GENESIS

pytestmark = pytest.mark.heavy  # tens of seconds: scheduled first (conftest.py)

EXTRA = (
    """
[aggregation]
chunk = 40
[ingest]
late_arrival_window = "P3650D"
"""
    + TOKEN_METERS
)
KILLED_WORKER = Path(__file__).parent / "killed_worker.py"
EDIT = (
    "ALTER TABLE events UPDATE raw = replace(raw, '\"tokens\"', '\"tokenz\"')"
    " WHERE stream = {s:String} AND seq = {q:UInt64}"
)


@dataclass
class Chained:
    site: Site
    producer: Producer
    conn: Connection

    def applied(self) -> int:
        rows = self.conn.rows("SELECT sum(done) FROM usage_progress FINAL WHERE stream NOT LIKE 'backfill:%'")
        return int(rows[0][0] or 0)

    def append(self, n: int) -> None:
        self.producer.append(n)
        wait_until(lambda: self.applied() == self.producer.sent, "the worker to apply the events", self.site)


@pytest.fixture(scope="module")
def chained(scale_stack: Stack, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Chained]:
    """A site of 2 partitions with one worker that applied 150 events in batches of at most 40."""
    with site(scale_stack, tmp_path_factory.mktemp("chain-site"), partitions=2, extra=EXTRA) as s:
        config = s.config
        producer = Producer(s)
        conn = Connection(config.clickhouse.url, config.clickhouse.database)
        create(conn, config.clickhouse.dedupe_window, None)  # the worker creates them too
        s.worker()
        try:
            c = Chained(s, producer, conn)
            for _ in range(3):
                c.append(50)
            yield c
        finally:
            producer.close()
            conn.close()


def verify(s: Site, *args: str, database: str | None = None, **env: str) -> subprocess.CompletedProcess[str]:
    """``meterline verify --config`` of the site, on its ClickHouse database or a copy of it."""
    if database is not None:
        env["METERLINE_CLICKHOUSE__DATABASE"] = database
    return subprocess.run(
        [sys.executable, "-m", "meterline.cli.main", "verify", "--config", str(s.config_path), *args],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "METERLINE_LOG__FORMAT": "text", **env},
    )


@pytest.fixture
def copy(chained: Chained) -> Iterator[Connection]:
    """A copy of every table of the site's ClickHouse database, to edit by hand."""
    source = chained.conn.database
    name = f"{source}_{uuid.uuid4().hex[:6]}"
    chained.conn.command(f"CREATE DATABASE `{name}`")
    for (table,) in chained.conn.rows("SELECT name FROM system.tables WHERE database = currentDatabase()"):
        chained.conn.command(f"CREATE TABLE `{name}`.`{table}` AS `{source}`.`{table}`")
        chained.conn.command(f"INSERT INTO `{name}`.`{table}` SELECT * FROM `{source}`.`{table}`")
    config = chained.site.config
    conn = Connection(config.clickhouse.url, name)
    try:
        yield conn
    finally:
        conn.command(f"DROP DATABASE IF EXISTS `{name}`")
        conn.close()


def row_of(conn: Connection, partition: int, index: int) -> tuple[str, int, str]:
    """(stream, seq, event id) of the ``index``-th raw row of a partition."""
    rows = conn.rows(
        "SELECT stream, seq, id FROM events WHERE stream LIKE {p:String} ORDER BY seq", {"p": f"%:{partition}"}
    )
    stream, seq, id_ = rows[index]
    return str(stream), int(seq), str(id_)


def mutate(conn: Connection, sql: str, params: dict[str, object]) -> None:
    """An ``ALTER TABLE ... UPDATE/DELETE`` by hand, waited for."""
    conn.command(f"{sql} SETTINGS mutations_sync = 2", params)


def test_an_untouched_chain_and_its_rollups_verify_beside_a_running_worker(chained: Chained) -> None:
    done = verify(chained.site)
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"2 partitions, {chained.producer.sent} entries walked (0 pruned, 0 erased)" in done.stdout
    assert "rollups: identical" in done.stdout
    assert done.stdout.strip().endswith("verified")
    links = chained.conn.rows("SELECT count(), uniqExact(stream, start) FROM ledger_chain")[0]
    assert links[0] == links[1] and links[0] >= 4  # one link per batch of at most 40, no fork


def test_an_edited_row_is_named(chained: Chained, copy: Connection) -> None:
    stream, seq, id_ = row_of(copy, 0, 7)
    where = {"s": stream, "q": seq}
    mutate(copy, EDIT, where)
    done = verify(chained.site, "--skip-rollups", database=copy.database)
    assert done.returncode == 1, done.stdout + done.stderr
    assert f"partition 0 offset {seq - 1} (event '{id_}' from source 'load' in namespace 'default')" in done.stderr
    assert "does not match the chain" in done.stderr


def test_a_deleted_row_is_named(chained: Chained, copy: Connection) -> None:
    stream, seq, _ = row_of(copy, 1, 3)
    mutate(copy, "ALTER TABLE events DELETE WHERE stream = {s:String} AND seq = {q:UInt64}", {"s": stream, "q": seq})
    done = verify(chained.site, "--skip-rollups", database=copy.database)
    assert done.returncode == 1, done.stdout + done.stderr
    assert f"partition 1 offset {seq - 1} is missing from the raw events" in done.stderr


def test_reordered_rows_are_named(chained: Chained, copy: Connection) -> None:
    stream, first, _ = row_of(copy, 0, 2)
    _, second, moved = row_of(copy, 0, 3)
    columns = ", ".join(name for name, _ in EVENTS)
    sql = f"SELECT {columns} FROM events WHERE stream = {{s:String}} AND seq IN ({first}, {second}) ORDER BY seq"
    a, b = copy.rows(sql, {"s": stream})
    mutate(copy, f"ALTER TABLE events DELETE WHERE stream = {{s:String}} AND seq IN ({first}, {second})", {"s": stream})
    copy.insert("events", EVENTS, [(*a[:8], second, *a[9:]), (*b[:8], first, *b[9:])], "by-hand:swap")
    done = verify(chained.site, "--skip-rollups", database=copy.database)
    assert done.returncode == 1, done.stdout + done.stderr
    assert f"partition 0 offset {first - 1} (event '{moved}' from source 'load'" in done.stderr


def test_a_second_row_at_one_offset_is_named(chained: Chained, copy: Connection) -> None:
    """A row inserted by hand at an applied offset beside the real one (its content changed)."""
    stream, seq, id_ = row_of(copy, 1, 5)
    columns = ", ".join(name for name, _ in EVENTS)
    row = copy.rows(f"SELECT {columns} FROM events WHERE stream = {{s:String}} AND seq = {seq}", {"s": stream})[0]
    copy.insert("events", EVENTS, [(*row[:6], row[6].replace('"tokens"', '"tokenz"'), *row[7:])], "by-hand:twice")
    done = verify(chained.site, "--skip-rollups", database=copy.database)
    assert done.returncode == 1, done.stdout + done.stderr
    assert f"partition 1 offset {seq - 1} (event '{id_}' from source 'load'" in done.stderr
    assert "is stored twice" in done.stderr


def test_a_removed_last_link_is_seen(chained: Chained, copy: Connection) -> None:
    stream = row_of(copy, 1, 0)[0]
    start, end = copy.rows(
        "SELECT start, end FROM ledger_chain WHERE stream = {s:String} ORDER BY start DESC LIMIT 1", {"s": stream}
    )[0]
    mutate(
        copy,
        "ALTER TABLE ledger_chain DELETE WHERE stream = {s:String} AND start = {a:UInt64}",
        {"s": stream, "a": start},
    )
    done = verify(chained.site, "--skip-rollups", database=copy.database)
    assert done.returncode == 1, done.stdout + done.stderr
    assert f"partition 1 offset {start}: offsets {start} to {end - 1} are applied but in no chain link" in done.stderr


def test_a_second_link_from_one_offset_is_a_fork(chained: Chained, copy: Connection) -> None:
    """A well-formed link (its hash covers what it lists) over part of the first batch, added
    beside the real one: two chains from offset 0."""
    stream = row_of(copy, 0, 0)[0]
    sql = "SELECT seqs, digests, received FROM ledger_chain WHERE stream = {s:String} AND start = 0"
    seqs, digests, received = copy.rows(sql, {"s": stream})[0]
    half = len(seqs) // 2
    end = seqs[half - 1]
    listed = [bytes.fromhex(digests[i * 64 : i * 64 + 64]) for i in range(half)]
    hash_ = batch_link(GENESIS, stream, 0, end, seqs[:half], received[:half], listed, FORMAT)
    row = [stream, 0, end, GENESIS.hex(), hash_.hex(), seqs[:half], digests[: half * 64], received[:half], FORMAT]
    copy.insert("ledger_chain", CHAIN, [row], "by-hand:fork")
    done = verify(chained.site, "--skip-rollups", database=copy.database)
    assert done.returncode == 1, done.stdout + done.stderr
    assert "partition 0 offset 0: two chain links cover offsets from 0 (a fork)" in done.stderr


def test_a_row_erased_by_the_marker_protocol_verifies_and_an_edit_after_it_does_not(
    chained: Chained, copy: Connection
) -> None:
    """What an erasure must leave (docs/integrity.md, "Erased rows"), done by hand: the marker
    with the erased form's digest first, then the erased form inserted and the original
    deleted (the subject is in the raw table's sorting key). The chain still verifies, also
    between the insert and the delete; an edit of the erased row afterwards is named."""
    stream, seq, _ = row_of(copy, 1, 2)
    columns = ", ".join(name for name, _ in EVENTS)
    original = copy.rows(f"SELECT {columns} FROM events WHERE stream = {{s:String}} AND seq = {seq}", {"s": stream})
    erased_raw = '{"specversion":"1.0","id":"erased-1","source":"erased","type":"prompt","data":{"tokens":"1"}}'
    erased = (original[0][0], "erased", original[0][2], "pseudonym-1", *original[0][4:6], erased_raw, *original[0][7:])
    content = entry_digest(erased[0], "erased", erased[2], "pseudonym-1", erased[4], erased[5], erased_raw.encode(), 0)
    marker = [stream, seq, content.hex(), "erasure-1", 0]
    copy.insert("ledger_erased", ERASED, [marker], "by-hand:erasure-1")
    copy.insert("events", EVENTS, [erased], "by-hand:erased-copy")
    between = verify(chained.site, "--skip-rollups", database=copy.database)
    assert between.returncode == 0, between.stdout + between.stderr
    drop = "ALTER TABLE events DELETE WHERE stream = {s:String} AND seq = {q:UInt64} AND source != 'erased'"
    mutate(copy, drop, {"s": stream, "q": seq})
    done = verify(chained.site, "--skip-rollups", database=copy.database)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "(0 pruned, 1 erased)" in done.stdout
    edit = (
        "ALTER TABLE events UPDATE raw = replace(raw, '\"1\"', '\"2\"') WHERE stream = {s:String} AND seq = {q:UInt64}"
    )
    mutate(copy, edit, {"s": stream, "q": seq})
    edited = verify(chained.site, "--skip-rollups", database=copy.database)
    assert edited.returncode == 1, edited.stdout + edited.stderr
    assert f"partition 1 offset {seq - 1} (erased event in namespace 'default') changed after its personal data" in (
        edited.stderr
    )


def test_a_partition_without_links_is_applied_before_the_chain_or_its_links_were_removed(
    chained: Chained, copy: Connection
) -> None:
    """Every link of partition 1 removed. Its rows received before the chain began (when the
    first worker with it started, in ``ledger_meta``) are what an upgrade leaves: reported as
    applied before the chain, not failed; rows received after it were linked once: named. (The
    test producer receives every event at a fixed instant of 2026-03-01, so the chain's start
    is set on both sides of it.)"""
    stream, first, _ = row_of(copy, 1, 0)
    done = int(copy.rows("SELECT done FROM usage_progress FINAL WHERE stream = {s:String}", {"s": stream})[0][0])
    mutate(copy, "ALTER TABLE ledger_chain DELETE WHERE stream = {s:String}", {"s": stream})
    meta = [("key", "String"), ("value", "String"), ("at_us", "Int64")]
    for since, token in ((T0 + 3_600_000_000, "after"), (T0 - 3_600_000_000, "before")):
        mutate(copy, "ALTER TABLE ledger_meta DELETE WHERE key = 'chain_since_us'", {})
        copy.insert("ledger_meta", meta, [["chain_since_us", str(since), 0]], f"by-hand:since-{token}")
        done_ = verify(chained.site, "--skip-rollups", database=copy.database)
        if token == "after":  # the rows came before the chain: an upgrade
            assert done_.returncode == 0, done_.stdout + done_.stderr
            assert f"{stream}: offsets before {done} were applied before the partition had the chain" in done_.stdout
        else:
            assert done_.returncode == 1, done_.stdout + done_.stderr
            assert f"partition 1 offset {first - 1} was received after the chain began" in done_.stderr


def test_an_exported_head_holds_after_appends(chained: Chained, tmp_path: Path) -> None:
    head = tmp_path / "heads.json"
    exported = verify(chained.site, "--skip-rollups", "--export-head", str(head))
    assert exported.returncode == 0, exported.stdout + exported.stderr
    assert '"format": "meterline-ledger-heads/1"' in head.read_text()
    chained.append(30)
    done = verify(chained.site, "--skip-rollups", "--against", str(head))
    assert done.returncode == 0, done.stdout + done.stderr
    assert "matches the exported heads of 2 partitions (unsigned)" in done.stdout


def _rechain(conn: Connection, stream: str, format_: int = FORMAT) -> None:
    """What someone who edits ClickHouse and knows the rule would do: recompute every link of
    the partition from its rows as they are now, so the database alone verifies again (in link
    format ``format_``: 1 is what the previous version wrote)."""
    rows = conn.rows(f"SELECT {ENTRY_COLUMNS} FROM events WHERE stream = {{s:String}}", {"s": stream})
    digest = stored_digest_v2 if format_ == 2 else stored_digest
    digests = {int(r[0]): digest(r) for r in rows}
    links = conn.rows(
        "SELECT start, end, seqs, received FROM ledger_chain WHERE stream = {s:String} ORDER BY start", {"s": stream}
    )
    prev, out = GENESIS, []
    for start, end, seqs, received in links:
        listed = [digests[s] for s in seqs]
        hash_ = batch_link(prev, stream, start, end, seqs, received, listed, format_)
        out.append([stream, start, end, prev.hex(), hash_.hex(), seqs, b"".join(listed).hex(), received, format_])
        prev = hash_
    mutate(conn, "ALTER TABLE ledger_chain DELETE WHERE stream = {s:String}", {"s": stream})
    conn.insert("ledger_chain", CHAIN, out, "by-hand:rechain")


def test_an_edited_prefix_fails_against_a_signed_head_after_the_links_were_recomputed(
    chained: Chained, tmp_path: Path
) -> None:
    private, public = _keypair(tmp_path, "auditor")
    head = tmp_path / "heads.json"
    exported = verify(chained.site, "--skip-rollups", "--export-head", str(head), "--sign-key", str(private))
    assert exported.returncode == 0, exported.stdout + exported.stderr
    signed = verify(chained.site, "--skip-rollups", "--against", str(head), "--public-key", str(public))
    assert signed.returncode == 0 and "signed by key" in signed.stdout, signed.stdout + signed.stderr
    forged = tmp_path / "forged.json"
    forged.write_text(head.read_text().replace('"seq": ', '"seq": 1', 1))
    refused = verify(chained.site, "--skip-rollups", "--against", str(forged))
    assert refused.returncode == 2 and "signature does not verify" in refused.stderr

    copy = Connection(chained.site.config.clickhouse.url, f"{chained.conn.database}_{uuid.uuid4().hex[:6]}")
    try:
        for (table,) in chained.conn.rows("SELECT name FROM system.tables WHERE database = currentDatabase()"):
            copy.command(f"CREATE TABLE `{table}` AS `{chained.conn.database}`.`{table}`")
            copy.command(f"INSERT INTO `{table}` SELECT * FROM `{chained.conn.database}`.`{table}`")
        stream, seq, _ = row_of(copy, 0, 1)
        mutate(copy, EDIT, {"s": stream, "q": seq})
        _rechain(copy, stream)
        alone = verify(chained.site, "--skip-rollups", database=copy.database)
        assert alone.returncode == 0, alone.stdout + alone.stderr  # the database alone cannot tell
        done = verify(chained.site, "--skip-rollups", "--against", str(head), database=copy.database)
        assert done.returncode == 1, done.stdout + done.stderr
        assert "partition 0 offset" in done.stderr and "differs from the exported head" in done.stderr
    finally:
        copy.command(f"DROP DATABASE IF EXISTS `{copy.database}`")
        copy.close()


def _keypair(tmp_path: Path, name: str) -> tuple[Path, Path]:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    key = Ed25519PrivateKey.generate()
    private, public = tmp_path / f"{name}.pem", tmp_path / f"{name}.pub.pem"
    private.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    public.write_bytes(
        key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    )
    return private, public


def test_rows_removed_by_retention_verify_as_pruned(chained: Chained, copy: Connection) -> None:
    """Rows past ``retention.raw_events`` may be gone (ClickHouse's TTL removes them): their
    links keep their digests, so the chain still verifies; without retention it does not. (The
    producer receives its events at a fixed instant of 2026-03-01, long past 60 days.)"""
    stream, seq, _ = row_of(copy, 0, 0)
    mutate(
        copy, "ALTER TABLE events DELETE WHERE stream = {s:String} AND seq <= {q:UInt64}", {"s": stream, "q": seq + 4}
    )
    pruned = verify(chained.site, "--skip-rollups", database=copy.database, METERLINE_RETENTION__RAW_EVENTS="P60D")
    assert pruned.returncode == 0, pruned.stdout + pruned.stderr
    assert "(5 pruned, 0 erased)" in pruned.stdout
    missing = verify(chained.site, "--skip-rollups", database=copy.database)
    assert missing.returncode == 1 and f"partition 0 offset {seq - 1} is missing" in missing.stderr


@pytest.mark.parametrize("point", ["before-chain", "after-chain"])
def test_a_batch_redone_after_its_worker_was_killed_leaves_one_chain(
    scale_stack: Stack, tmp_path: Path, point: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A worker killed (SIGKILL) just before or just after inserting its first batch's link: the
    next worker redoes exactly that range under the same tokens, so the partition ends with
    one link per range and a chain that verifies."""
    monkeypatch.setenv("METERLINE_KAFKA__SESSION_TIMEOUT_MS", "2000")  # the dead worker's partition moves sooner
    with site(scale_stack, tmp_path / "site", partitions=1, extra=EXTRA) as s:
        producer = Producer(s)
        conn = Connection(s.config.clickhouse.url, s.config.clickhouse.database)
        create(conn, s.config.clickhouse.dedupe_window, None)
        c = Chained(s, producer, conn)
        try:
            with (s.dir / "workers.log").open("ab") as out:
                killed = subprocess.Popen(
                    [sys.executable, str(KILLED_WORKER), str(s.config_path), point],
                    stdout=out,
                    stderr=subprocess.STDOUT,
                    env={**os.environ, "METERLINE_LOG__FORMAT": "text"},
                )
            s.processes.append(killed)
            producer.append(30)
            wait_until(lambda: killed.poll() is not None, "the worker to kill itself", s)
            assert killed.returncode == -9
            recorded = conn.rows("SELECT count() FROM ledger_chain")[0][0]
            assert recorded == (1 if point == "after-chain" else 0)
            progress = "SELECT done, pending_end FROM usage_progress FINAL WHERE stream NOT LIKE 'backfill:%'"
            left = conn.rows(progress)[0]
            assert left[0] == 0 and left[1] > 0  # the killed worker's range, recorded and unfinished
            s.worker()
            wait_until(lambda: c.applied() == 30, "the next worker to redo the batch", s)
            c.append(30)
            links = conn.rows("SELECT start, end FROM ledger_chain ORDER BY start")
            assert links[0] == left  # the range the killed worker recorded, linked once
            assert len(links) == len(set(links)) and [b[0] for b in links[1:]] == [a[1] for a in links[:-1]]
            done = verify(s)
            assert done.returncode == 0, done.stdout + done.stderr
            assert "1 partitions, 60 entries walked" in done.stdout
        finally:
            producer.close()
            conn.close()
